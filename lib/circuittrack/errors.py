"""Exceptions users meet, in one module light enough for the command line to import up front.

Every expected failure is a :class:`CircuittrackError` whose message says what to do. The CLI prints the
message on one line (no traceback) and exits with :attr:`~CircuittrackError.exit_code`: 2 for bad input
(:class:`InvalidInput`, raised before any expensive work), 1 for a runtime failure (a checkpoint that cannot
be fetched, memory that runs out even at batch size 1). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_RUNTIME = 1


class CircuittrackError(Exception):
    """An expected failure with a message meant for the user."""

    exit_code = EXIT_RUNTIME


class InvalidInput(CircuittrackError, ValueError):
    """A bad argument, option, file or dataset; the message names the valid choices."""

    exit_code = EXIT_USAGE


class CheckpointUnavailable(CircuittrackError, RuntimeError):
    """A checkpoint is neither on disk nor reachable; the message says how to get it."""


class CheckpointMissing(CheckpointUnavailable):
    """The hub has no such checkpoint (e.g. the three PolyPythias steps never uploaded): a sweep records it as
    missing, not as a failure."""


class OutOfMemory(CircuittrackError, RuntimeError):
    """The device ran out of memory even after halving the batch down to one example or circuit."""


def choices(values) -> str:
    """``a, b, c``: the valid choices as a message fragment."""
    return ", ".join(str(v) for v in values)
