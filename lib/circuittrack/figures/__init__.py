"""The book's chart theme and figure builders: filled by the next issues."""
