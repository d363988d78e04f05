"""The :class:`Task` object: a named recipe that turns (tokenizer, n, seed) into :class:`TaskData`."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from circuittrack.errors import InvalidInput
from circuittrack.tasks.csv_task import CsvRow, make_from_rows, parse_rows, sha256_of
from circuittrack.tasks.prompts import check_n

if TYPE_CHECKING:
    from circuittrack.tasks.data import MetricKind, TaskData

METRIC_KINDS: tuple[str, ...] = ("logit_diff", "prob_diff")
#: Memory per example of a task that does not say (see :attr:`Task.bytes_per_example`): above every built-in one.
DEFAULT_BYTES_PER_EXAMPLE = 16_000
#: The parts of :func:`csv_bytes_per_example` (bytes): per example, per token position of a prompt, per answer
#: column. With the one-token-per-byte bound they give 10.8 kB for the Gendered Pronoun prompts, whose measured
#: peak is 4.0 kB an example.
CSV_BASE_BYTES = 4_000
CSV_BYTES_PER_TOKEN = 75
CSV_BYTES_PER_ANSWER = 16
#: The share of the host's available memory that building one dataset may take.
MEMORY_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory the host can still give without swapping (``MemAvailable`` of /proc/meminfo; else the
    free physical pages), None when neither can be read. Reads a file only: no torch."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


def csv_bytes_per_example(rows: list[CsvRow]) -> int:
    """A bound on the memory one example of these rows takes while built (see :func:`Task.check_n`): the
    largest row's prompts, padded to the longest prompt (at most one token per UTF-8 byte), and a sign entry
    for every distinct answer of the file."""
    width = max(len(p.encode("utf-8")) for r in rows for p in (r.clean, r.corrupted))
    texts = max(sum(4 * len(p) + 80 for p in (r.clean, r.corrupted)) for r in rows)
    answers = {a for r in rows for a in r.correct + r.incorrect}
    return int(CSV_BASE_BYTES + CSV_BYTES_PER_TOKEN * 2 * width + texts + CSV_BYTES_PER_ANSWER * len(answers))


@dataclass(frozen=True)
class Task:
    """A task definition.

    ``builder(tokenizer, n, seed) -> TaskData`` makes the data; ``capacity_fn(tokenizer) -> int`` counts the
    distinct clean prompts the task can make for that tokenizer. The attribution loss is the negated mean metric.
    ``bytes_per_example`` bounds the host memory one example takes while the data is built (measured for the
    built-in tasks, derived from the rows for a CSV task); ``repeats`` says that the builder draws with
    replacement, so ``n`` may exceed the capacity. A CSV task has ``source`` (its file, absolute) and ``sha256``
    (the digest of the bytes its rows were parsed from).
    """

    name: str
    metric_kind: MetricKind
    default_n: int
    default_seed: int
    description: str
    builder: Callable[[object, int, int], TaskData]
    capacity_fn: Callable[[object], int]
    bytes_per_example: int = DEFAULT_BYTES_PER_EXAMPLE
    repeats: bool = False
    source: Path | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.metric_kind not in METRIC_KINDS:
            raise InvalidInput(f"task {self.name!r}: metric_kind must be one of {METRIC_KINDS}, "
                               f"got {self.metric_kind!r}")

    def make(self, tokenizer, n: int | None = None, seed: int | None = None) -> TaskData:
        """Build ``n`` examples (default :attr:`default_n`) with ``seed`` (default :attr:`default_seed`)."""
        n = self.check_n(self.default_n if n is None else n)
        seed = self.default_seed if seed is None else int(seed)
        return self.builder(tokenizer, n, seed)

    def check_n(self, n, tokenizer=None, where: str = "") -> int:
        """``n`` if this task can build that many examples, else InvalidInput naming the largest n that can be:
        ``n`` must be a positive int; ``n * bytes_per_example`` must fit in :data:`MEMORY_SHARE` of the host's
        available memory; and, unless the builder repeats prompts, ``n`` must not exceed the capacity (for a CSV
        task, its rows; for another, checked when ``tokenizer`` is given). ``where`` prefixes the message. Cheap:
        nothing is built."""
        prefix = f"{where}: " if where else ""
        n = check_n(f"{prefix}{self.name}", n)
        if self.source is not None and n > self.default_n:
            raise InvalidInput(f"{prefix}n={n:,} of {self.name}: the task CSV {str(self.source)!r} has only "
                               f"{self.default_n:,} row{'s' if self.default_n != 1 else ''}; the largest n is "
                               f"{self.default_n:,}")
        avail = available_memory()
        if avail is not None:
            need = n * self.bytes_per_example
            largest = int(avail * MEMORY_SHARE) // self.bytes_per_example
            if n > largest:
                raise InvalidInput(f"{prefix}n={n:,} of {self.name} needs about {_gb(need)} to build; {_gb(avail)} is "
                                   f"available, of which {MEMORY_SHARE:.0%} may be used; the largest n that fits is "
                                   f"{largest:,}")
        if tokenizer is not None and not self.repeats and self.source is None:
            cap = self.capacity(tokenizer)
            if n > cap:
                raise InvalidInput(f"{prefix}n={n:,} of {self.name}: only {cap:,} distinct prompts can be made for "
                                   f"this tokenizer; the largest n is {cap:,}")
        return n

    def input_record(self) -> dict | None:
        """What a worker process needs to rebuild this task (see :func:`registry.task_for_job`): None for a task
        defined in code; for a CSV task its path, content digest, metric kind and default seed."""
        if self.source is None:
            return None
        return {"path": str(self.source), "sha256": self.sha256, "metric_kind": self.metric_kind,
                "default_seed": self.default_seed}

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

        See :mod:`circuittrack.tasks.csv_task` for the format. ``default_n`` is the number of rows. The file is
        read once: the rows and :attr:`sha256` come from the same bytes.
        """
        path = Path(path)
        if not path.is_file():
            raise InvalidInput(f"task CSV {str(path)!r} does not exist")
        return cls.from_csv_bytes(path.read_bytes(), path, name, metric_kind, default_seed, description)

    @classmethod
    def from_csv_bytes(
        cls,
        data: bytes,
        path: str | Path,
        name: str,
        metric_kind: MetricKind = "logit_diff",
        default_seed: int = 0,
        description: str | None = None,
    ) -> Task:
        """:meth:`from_csv` on ``data``, the content of the file at ``path`` as already read."""
        source = Path(path).resolve()
        rows = parse_rows(data, path)
        return cls(name=name, metric_kind=metric_kind, default_n=len(rows), default_seed=int(default_seed),
                   description=description or f"task read from {source.name} ({len(rows)} rows)",
                   builder=lambda tokenizer, n, seed: make_from_rows(name, metric_kind, rows, tokenizer, n, seed,
                                                                     source),
                   capacity_fn=lambda tokenizer: len(rows), bytes_per_example=csv_bytes_per_example(rows),
                   source=source, sha256=sha256_of(data))
