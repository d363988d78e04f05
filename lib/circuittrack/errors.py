"""Exceptions users meet, in a module light enough for the command line to import up front."""


class CheckpointUnavailable(RuntimeError):
    """A checkpoint is neither on disk nor reachable; the message says how to get it."""
