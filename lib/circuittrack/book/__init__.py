"""The book stage: executing the notebooks with a profile's parameters (the Jupyter Book renders the results)."""
