"""The :class:`Task` object: a named recipe that turns (tokenizer, n, seed) into :class:`TaskData`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from circuittrack.errors import InvalidInput
from circuittrack.tasks.csv_task import make_from_rows, read_rows
from circuittrack.tasks.data import MetricKind, TaskData
from circuittrack.tasks.prompts import check_n

METRIC_KINDS: tuple[str, ...] = ("logit_diff", "prob_diff")


@dataclass(frozen=True)
class Task:
    """A task definition.

    ``builder(tokenizer, n, seed) -> TaskData`` makes the data; ``capacity_fn(tokenizer) -> int`` counts the
    distinct clean prompts the task can make for that tokenizer. The attribution loss is the negated mean metric.
    """

    name: str
    metric_kind: MetricKind
    default_n: int
    default_seed: int
    description: str
    builder: Callable[[object, int, int], TaskData]
    capacity_fn: Callable[[object], int]

    def __post_init__(self) -> None:
        if self.metric_kind not in METRIC_KINDS:
            raise InvalidInput(f"task {self.name!r}: metric_kind must be one of {METRIC_KINDS}, "
                               f"got {self.metric_kind!r}")

    def make(self, tokenizer, n: int | None = None, seed: int | None = None) -> TaskData:
        """Build ``n`` examples (default :attr:`default_n`) with ``seed`` (default :attr:`default_seed`)."""
        n = check_n(self.name, self.default_n if n is None else n)
        seed = self.default_seed if seed is None else int(seed)
        return self.builder(tokenizer, n, seed)

    def capacity(self, tokenizer) -> int:
        """How many distinct clean prompts this task can make for ``tokenizer``."""
        return int(self.capacity_fn(tokenizer))

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        name: str,
        metric_kind: MetricKind = "logit_diff",
        default_seed: int = 0,
        description: str | None = None,
    ) -> Task:
        """A task read from a CSV of clean prompt, corrupted prompt, correct answer(s), incorrect answer(s).

        See :mod:`circuittrack.tasks.csv_task` for the format. ``default_n`` is the number of rows.
        """
        rows = read_rows(path)
        return cls(name=name, metric_kind=metric_kind, default_n=len(rows), default_seed=default_seed,
                   description=description or f"task read from {Path(path).name} ({len(rows)} rows)",
                   builder=lambda tokenizer, n, seed: make_from_rows(name, metric_kind, rows, tokenizer, n, seed),
                   capacity_fn=lambda tokenizer: len(rows))
