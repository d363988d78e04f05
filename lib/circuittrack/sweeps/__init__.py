"""Sweeps: grids of models x checkpoints x tasks x analyses (``grid``), the analyses they run (``analyses``), the
content-keyed Parquet results store with ``load_results`` (``store``), and the executor (``run``)."""
