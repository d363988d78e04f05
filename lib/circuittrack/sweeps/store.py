"""The results store: Parquet tables under ``data/results/`` keyed by the content of what produced them.

A *job* is one analysis of one task (or of no task) on one checkpoint with fixed parameters. Its key is a hash of
(suite, model, step, task, analysis, parameters with defaults filled in, store format version), never of time,
so the same request always finds the same results. A finished job is one directory::

    <results>/<analysis>/<key>/job.json          what produced it (the key's content) and when
    <results>/<analysis>/<key>/<table>.parquet   one file per table; every row carries the job's columns

It is written under ``<results>/.partial/`` and renamed into place in one step, so a crash (kill -9 included)
never leaves a partial job that is later read as complete; a job is done exactly when its directory exists.
A failed job leaves ``<results>/.failed/<key>.json`` (its error), removed when it later succeeds; a job whose
checkpoint the hub does not have leaves ``<results>/.missing/<key>.json`` instead (not a failure; retried on the
next run, in case the checkpoint has been uploaded since).

Tables can be read with :func:`load_results` (pandas) or directly, e.g. with DuckDB:
``SELECT * FROM read_parquet('data/results/circuit/*/summary.parquet')``. Columns: docs/results.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from circuittrack import paths
from circuittrack.errors import InvalidInput

#: Bump when the meaning of stored tables changes: old results then no longer match any key.
STORE_VERSION = 1
JOB_COLUMNS = ("suite", "model", "step", "tokens", "task", "analysis", "key")


@dataclass(frozen=True)
class Job:
    """One analysis of one task (``task`` None for task-free analyses) on one checkpoint."""

    suite: str
    model: str
    step: int
    task: str | None
    analysis: str
    params: dict = field(default_factory=dict, hash=False, compare=False)
    tokens: int = 0
    edition: str = ""  # the model's edition (toy suite): results of another edition's weights get other keys
    #: tables a stored result must hold to count as done (not part of the key): a result stored before its
    #: analysis wrote a table it now always writes is computed again, under the same key
    requires: tuple[str, ...] = field(default=(), hash=False, compare=False)
    #: files the job reads, by role: ``"task"`` (a CSV task) or the name of a file-valued parameter
    #: (``cspa_text``), each ``{"path": absolute path, "sha256": content digest, ...}`` (a CSV task also holds
    #: ``metric_kind`` and ``default_seed``). The digests and extras enter the key, the paths do not (a file-valued
    #: parameter's value in the key is ``"<file>"``): the same content anywhere gives the same key, other
    #: content another key.
    inputs: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def identity(self) -> dict:
        """What the key is a hash of."""
        params = {k: ("<file>" if k in self.inputs else v) for k, v in self.params.items()}
        out = {"suite": self.suite, "model": self.model, "step": int(self.step), "task": self.task,
               "analysis": self.analysis, "params": params, "store_version": STORE_VERSION}
        if self.edition:
            out["edition"] = self.edition
        if self.inputs:
            out["inputs"] = {role: {k: v for k, v in d.items() if k != "path"} for role, d in self.inputs.items()}
        return out

    @property
    def key(self) -> str:
        text = json.dumps(self.identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def label(self) -> str:
        return f"{self.model} step {self.step} {self.analysis}" + (f" {self.task}" if self.task else "")


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's content (what a job that reads the file is keyed by)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """A results directory (default ``$CIRCUITTRACK_DATA/results``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else paths.results_dir()

    def job_dir(self, job: Job) -> Path:
        return self.root / job.analysis / job.key

    def is_done(self, job: Job) -> bool:
        """Stored, with every table the job requires."""
        f = self.job_dir(job) / "job.json"
        if not f.exists():
            return False
        if not job.requires:
            return True
        try:
            return set(job.requires) <= set(json.loads(f.read_text()).get("tables", ()))
        except json.JSONDecodeError:
            return False

    def failure(self, job: Job) -> dict | None:
        return self._note(".failed", job)

    def missing(self, job: Job) -> dict | None:
        """The record of a job whose checkpoint the hub lacks (None: not recorded as missing)."""
        return self._note(".missing", job)

    def _note(self, folder: str, job: Job) -> dict | None:
        try:
            return json.loads((self.root / folder / f"{job.key}.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write(self, job: Job, tables: dict[str, pd.DataFrame], extra: dict | None = None) -> Path:
        """Store a finished job's tables atomically (all or nothing); returns its directory."""
        for name in tables:
            if not name.isidentifier():
                raise InvalidInput(f"table name {name!r} must be an identifier")
        partial = self.root / ".partial" / f"{job.key}-{uuid.uuid4().hex[:8]}"
        partial.mkdir(parents=True)
        try:
            cols = {"suite": job.suite, "model": job.model, "step": int(job.step), "tokens": int(job.tokens),
                    "task": job.task, "analysis": job.analysis, "key": job.key}
            for name, df in tables.items():
                out = df.copy()
                for i, (c, v) in enumerate(cols.items()):
                    out.insert(i, c, v)
                out.to_parquet(partial / f"{name}.parquet", index=False)
            meta = {**job.identity, "key": job.key, "tokens": job.tokens, "tables": sorted(tables),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **(extra or {})}
            (partial / "job.json").write_text(json.dumps(meta, indent=1, default=str))
            final = self.job_dir(job)
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and self.is_done(job):  # a concurrent run finished it first: keep theirs
                shutil.rmtree(partial)
            else:
                self.forget(job)  # a result stored without a table its analysis now writes
                os.replace(partial, final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for folder in (".failed", ".missing"):
            (self.root / folder / f"{job.key}.json").unlink(missing_ok=True)
        return final

    def forget(self, job: Job) -> None:
        """Remove a job's results so that the next run recomputes it: first moved out in one rename (so an
        interruption never leaves a half-deleted job that reads as done), then deleted."""
        final = self.job_dir(job)
        if not final.exists():
            return
        trash = self.root / ".partial" / f"{job.key}-forgotten-{uuid.uuid4().hex[:8]}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def record_failure(self, job: Job, error: str) -> None:
        self._record(".failed", job, error)

    def record_missing(self, job: Job, reason: str) -> None:
        """Note that the job's checkpoint does not exist on the hub (a failure record of it is dropped)."""
        self._record(".missing", job, reason)
        (self.root / ".failed" / f"{job.key}.json").unlink(missing_ok=True)

    def _record(self, folder: str, job: Job, error: str) -> None:
        d = self.root / folder
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f".{job.key}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps({**job.identity, "key": job.key, "error": error,
                                   "when": time.strftime("%Y-%m-%dT%H:%M:%S")}, default=str))
        os.replace(tmp, d / f"{job.key}.json")

    def clean_partials(self) -> None:
        """Remove what interrupted runs left half-written (never read as results)."""
        shutil.rmtree(self.root / ".partial", ignore_errors=True)


def load_results(analysis: str, table: str, *, root: str | Path | None = None, keys=None,
                 **filters) -> pd.DataFrame:
    """All stored rows of ``table`` of ``analysis`` as one DataFrame (empty with no rows), optionally only the
    jobs in ``keys`` and rows whose columns equal ``filters`` (a value or a list of values), e.g.
    ``load_results("circuit", "summary", model=["toy-s", "toy-m"], task="ioi")``."""
    base = Path(root) if root is not None else paths.results_dir()
    files = sorted((base / analysis).glob(f"*/{table}.parquet"))
    if keys is not None:
        wanted = set(keys)
        files = [f for f in files if f.parent.name in wanted]
    frames = [pd.read_parquet(f) for f in files if (f.parent / "job.json").exists()]
    if not frames:
        return pd.DataFrame(columns=list(JOB_COLUMNS))
    df = pd.concat(frames, ignore_index=True)
    for col, value in filters.items():
        if col not in df.columns:
            raise InvalidInput(f"{analysis}/{table} has no column {col!r}; columns: {', '.join(df.columns)}")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        df = df[df[col].isin(values)]
    sort = [c for c in ("model", "task", "step") if c in df.columns]
    return df.sort_values(sort, kind="stable").reset_index(drop=True) if sort else df
