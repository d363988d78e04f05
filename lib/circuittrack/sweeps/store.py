"""The results store: Parquet tables under ``data/results/`` keyed by the content of what produced them.

A *job* is one analysis of one task (or of no task) on one checkpoint with fixed parameters. Its key is a hash of
(suite, model, step, task, analysis, parameters with defaults filled in, store format version), never of time,
so the same request always finds the same results. A finished job is one directory::

    <results>/<analysis>/<key>/job.json          what produced it (the key's content), when, and each table's
                                                 row count, size in bytes and sha256
    <results>/<analysis>/<key>/<table>.parquet   one file per table; every row carries the job's columns

It is written under ``<results>/.partial/`` and renamed into place in one step, so a crash (kill -9 included) never
leaves a partial job that is later read as complete. A job is done when its ``job.json`` reads back, lists every
table the job requires, and every table file it lists has the recorded size and sha256: a truncated or corrupted
file makes the job *damaged* (:meth:`Store.damage` says why), which the next sweep recomputes under the same key
and :func:`load_results` skips with a warning. (A ``job.json`` written before tables were recorded is checked by
reading each table's Parquet footer.) A failed job leaves ``<results>/.failed/<key>.json`` (its error), removed
when it later succeeds; a job whose checkpoint the hub does not have leaves ``<results>/.missing/<key>.json``
instead (not a failure; retried on the next run, in case the checkpoint has been uploaded since).

Tables can be read with :func:`load_results` (pandas) or directly, e.g. with DuckDB:
``SELECT * FROM read_parquet('data/results/circuit/*/summary.parquet')``. Columns: docs/results.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from circuittrack import paths
from circuittrack.errors import InvalidInput
from circuittrack.sweeps.claims import owner_tag, tag_is_gone

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


def check_store_path(value: str | Path | None, writable: bool = True) -> Path:
    """The results directory ``--store`` names (default: $CIRCUITTRACK_DATA/results), refused before any work when
    it is a file, or (``writable``) when it or the folder it would be created in cannot be written. Creates
    nothing."""
    root = Path(value) if value is not None else paths.results_dir()
    shown = str(value) if value is not None else f"{root} (the default store)"
    if root.exists() and not root.is_dir():
        raise InvalidInput(f"--store {shown} is a file, not a directory; give a results directory")
    if writable:
        probe = root
        while not probe.exists():
            if probe.parent == probe:
                break
            probe = probe.parent
        if not probe.is_dir():
            raise InvalidInput(f"--store {shown} cannot be created: {probe} is a file")
        if not os.access(probe, os.W_OK | os.X_OK):
            what = "is not writable" if probe == root else f"cannot be created: {probe} is not writable"
            raise InvalidInput(f"--store {shown} {what}; give a directory you can write to")
    return root


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's content (what a job that reads the file is keyed by)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class DamagedResult(UserWarning):
    """A stored table that does not match its job's record (truncated, corrupted, or its job.json unreadable)."""


class Store:
    """A results directory (default ``$CIRCUITTRACK_DATA/results``)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else paths.results_dir()
        #: table files whose content was checked: path -> (size, mtime, inode, what they matched), so a status
        #: over thousands of jobs hashes each file once per process
        self._checked: dict[str, tuple] = {}

    def job_dir(self, job: Job) -> Path:
        return self.root / job.analysis / job.key

    def is_done(self, job: Job) -> bool:
        """Stored intact, with every table the job requires."""
        return self.inspect(job)[0]

    def read(self, job: Job) -> dict[str, pd.DataFrame] | None:
        """The job's tables as its analysis returned them (the job columns the store adds removed), or None when
        the job is not stored intact."""
        if not self.is_done(job):
            return None
        out = {}
        for name in json.loads((self.job_dir(job) / "job.json").read_bytes())["tables"]:
            df = read_table(self.job_dir(job), name)
            if not isinstance(df, pd.DataFrame):
                return None
            out[name] = df.drop(columns=list(JOB_COLUMNS))
        return out

    def damage(self, job: Job) -> str | None:
        """Why the job's stored directory is not a valid result (a truncated or corrupt table, an unreadable
        job.json, a directory without one); None if the job is done, not stored at all, or stored intact before
        its analysis wrote a table it now requires (recomputed too, but nothing is damaged)."""
        return self.inspect(job)[1]

    def inspect(self, job: Job) -> tuple[bool, str | None]:
        """(done, why damaged): :meth:`is_done` and :meth:`damage` in one look."""
        folder = self.job_dir(job)
        f = folder / "job.json"
        try:
            text = f.read_bytes()
        except FileNotFoundError:
            if folder.is_dir():
                return False, f"{folder} has no job.json (not a finished job)"
            return False, (f"{folder} is not a directory" if os.path.lexists(folder) else None)
        except OSError as err:
            return False, f"{f} cannot be read ({err.strerror or err})"
        try:
            meta = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict):
            return False, f"{f} is not a JSON object"
        if meta.get("key", job.key) != job.key:
            return False, f"{f} is the record of job {meta.get('key')!r}, not of {job.key}"
        tables = meta.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            return False, f"{f} lists no tables"
        for name in tables:
            reason = self._check_table(folder, name, meta)
            if reason is not None:
                return False, reason
        return set(job.requires) <= set(tables), None

    def _check_table(self, folder: Path, name: str, meta: dict) -> str | None:
        """Why table ``name`` of a job directory does not match its record in job.json (None: it does)."""
        path = folder / f"{name}.parquet"
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"{path} is missing"
        except OSError as err:
            return f"{path} cannot be read ({err.strerror or err})"
        files = meta.get("files")
        record = files.get(name) if isinstance(files, dict) else None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        if files is None:  # recorded before tables were: the Parquet footer must read back
            if self._checked.get(str(path)) == (*sig, "footer"):
                return None
            import pyarrow.parquet as pq

            try:
                pq.read_metadata(path).num_rows
            except Exception as err:  # noqa: BLE001 - whatever the reader says, the file is not a table
                return f"{path} is not a readable Parquet file ({type(err).__name__}: {err})"
            self._checked[str(path)] = (*sig, "footer")
            return None
        if not isinstance(record, dict) or not isinstance(record.get("bytes"), int) or \
                not isinstance(record.get("sha256"), str):
            return f"{folder / 'job.json'} has no size and sha256 of table {name!r}"
        if st.st_size != record["bytes"]:
            return f"{path} has {st.st_size} bytes, its job.json records {record['bytes']} (truncated or overwritten)"
        if self._checked.get(str(path)) == (*sig, record["sha256"]):
            return None
        if file_digest(path) != record["sha256"]:
            return f"{path} does not match the sha256 its job.json records (corrupted)"
        self._checked[str(path)] = (*sig, record["sha256"])
        return None

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
        partial = self._partial_name(job)
        partial.mkdir(parents=True)
        try:
            cols = {"suite": job.suite, "model": job.model, "step": int(job.step), "tokens": int(job.tokens),
                    "task": job.task, "analysis": job.analysis, "key": job.key}
            files = {}
            for name, df in tables.items():
                out = df.copy()
                for i, (c, v) in enumerate(cols.items()):
                    out.insert(i, c, v)
                path = partial / f"{name}.parquet"
                out.to_parquet(path, index=False)
                files[name] = {"rows": len(out), "bytes": path.stat().st_size, "sha256": file_digest(path)}
            meta = {**job.identity, "key": job.key, "tokens": job.tokens, "tables": sorted(tables),
                    "files": {name: files[name] for name in sorted(files)},
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

    def _partial_name(self, job: Job) -> Path:
        """``.partial/<key>-<host>~<pid>~<start>-<random>``: names its writer, so that only a run whose writer is
        gone removes it (:meth:`clean_partials`)."""
        return self.root / ".partial" / f"{job.key}-{owner_tag()}-{uuid.uuid4().hex[:8]}"

    def forget(self, job: Job) -> None:
        """Remove a job's results so that the next run recomputes it: first moved out in one rename (so an
        interruption never leaves a half-deleted job that reads as done), then deleted."""
        final = self.job_dir(job)
        if not os.path.lexists(final):
            return
        trash = self._partial_name(job)
        trash.parent.mkdir(parents=True, exist_ok=True)
        os.replace(final, trash)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:  # a stray file where the job's directory belongs
            trash.unlink(missing_ok=True)

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
        """Remove what interrupted runs left half-written (never read as results): only what a writer that is gone
        left (a dead process of this host; another host's, or an unnamed one, once older than the claim timeout),
        never what a live run is writing."""
        folder = self.root / ".partial"
        try:
            entries = list(folder.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            return
        now = time.time()
        for entry in entries:
            parts = entry.name.split("-")
            tag = parts[1] if len(parts) == 3 else ""
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if not tag_is_gone(tag, age):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def load_results(analysis: str, table: str, *, store: str | Path | Store | None = None, keys=None,
                 root: str | Path | None = None, **filters) -> pd.DataFrame:
    """All stored rows of ``table`` of ``analysis`` in ``store`` (a path or a :class:`Store`; default
    ``$CIRCUITTRACK_DATA/results``) as one DataFrame (empty with no rows), optionally only the jobs in ``keys`` and
    rows whose columns equal ``filters`` (a value or a list of values), e.g.
    ``load_results("circuit", "summary", model=["toy-s", "toy-m"], task="ioi")``.

    A damaged job's table (one that does not match its job.json's size and sha256, or cannot be read) is left out
    with a :class:`DamagedResult` warning naming it; rerunning the sweep recomputes it. ``root`` is the old name
    of ``store`` (deprecated)."""
    if root is not None:
        if store is not None:
            raise InvalidInput("load_results: give store= only (root= is its deprecated old name)")
        warnings.warn("load_results(root=...) is deprecated; use store= (a path or a Store)", DeprecationWarning,
                      stacklevel=2)
        store = root
    base = store.root if isinstance(store, Store) else Path(store) if store is not None else paths.results_dir()
    folder = base / analysis
    dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if keys is not None:
        wanted = set(keys)
        dirs = [d for d in dirs if d.name in wanted]
    frames = []
    for d in dirs:
        df = read_table(d, table)
        if isinstance(df, str):
            warnings.warn(f"results store {base}: skipped job {d.name} ({analysis}/{table}): {df}; rerun the sweep "
                          "to recompute it", DamagedResult, stacklevel=2)
        elif df is not None:
            frames.append(df)
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


def read_table(folder: Path, table: str) -> pd.DataFrame | str | None:
    """Table ``table`` of the job stored in ``folder``; None if the job has no such table (or ``folder`` is no
    job), or why it is damaged."""
    path = folder / f"{table}.parquet"
    if not os.path.lexists(path):
        return None
    try:
        meta = json.loads((folder / "job.json").read_bytes())
    except FileNotFoundError:
        return f"{path} has no job.json beside it (not a finished job)"
    except (OSError, ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):
        return f"{folder / 'job.json'} is not a JSON object"
    tables = meta.get("tables")
    if isinstance(tables, list) and table not in tables:
        return None  # a stray file: not one of the job's tables
    files = meta.get("files")
    record = files.get(table) if isinstance(files, dict) else None
    try:
        if files is None:  # recorded before tables were: what reads back is all there is to check
            return pd.read_parquet(path)
        if not isinstance(record, dict):
            return f"{folder / 'job.json'} has no size and sha256 of table {table!r}"
        data = path.read_bytes()
        if len(data) != record.get("bytes") or hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return (f"{path} does not match its job.json ({len(data)} bytes, {record.get('bytes')} recorded; "
                    "truncated or corrupted)")
        return pd.read_parquet(io.BytesIO(data))
    except Exception as err:  # noqa: BLE001 - whatever the reader says, this job's table is unusable
        return f"{path} cannot be read ({type(err).__name__}: {err})"
