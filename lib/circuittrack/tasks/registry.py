"""The task registry: name -> :class:`Task`.

Add a task by writing a module that defines a :class:`Task` and calling :func:`register` (or
``register(Task.from_csv(path, name=...))`` for a CSV-defined task). Wherever a task name is taken, a path
ending in ``.csv`` names a CSV task too (:func:`resolve_task`); worker processes rebuild such a task from its
:meth:`Task.input_record` (:func:`task_for_job`). Importing this module does not import torch.
"""

from __future__ import annotations

from pathlib import Path

from circuittrack.errors import InvalidInput
from circuittrack.tasks.csv_task import sha256_of
from circuittrack.tasks.gendered_pronoun import TASK as GENDERED_PRONOUN
from circuittrack.tasks.greater_than import TASK as GREATER_THAN
from circuittrack.tasks.ioi import TASK as IOI
from circuittrack.tasks.sva import TASK as SVA
from circuittrack.tasks.task import Task

TASKS: dict[str, Task] = {}
BUILTIN_TASKS: tuple[str, ...] = (IOI.name, GREATER_THAN.name, GENDERED_PRONOUN.name, SVA.name)
#: CSV tasks loaded by :func:`resolve_task`, by (resolved path, sha256 of the content).
_CSV_TASKS: dict[tuple[Path, str], Task] = {}


def register(task: Task, overwrite: bool = False) -> Task:
    """Add ``task`` under ``task.name``; error if the name is taken unless ``overwrite``."""
    if not isinstance(task, Task):
        raise TypeError(f"register() takes a Task, got {type(task).__name__}")
    if task.name in TASKS and not overwrite:
        raise InvalidInput(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
    TASKS[task.name] = task
    return task


def list_tasks() -> list[str]:
    """Registered task names, sorted."""
    return sorted(TASKS)


def is_csv_path(name) -> bool:
    """Whether a task name is the path of a CSV file (it ends in ``.csv``, any case)."""
    return isinstance(name, (str, Path)) and str(name).lower().endswith(".csv")


def get_task(name: str) -> Task:
    """The task called ``name`` (or read from the CSV file ``name``, see :func:`resolve_task`); InvalidInput
    listing the valid names otherwise."""
    if is_csv_path(name):
        return resolve_task(name)
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}") from None


def _find_csv(name: str | Path, base_dir: str | Path | None) -> Path:
    """The file a CSV task path names: an absolute path as is; a relative one under ``base_dir`` first, then
    under the working directory."""
    path = Path(name).expanduser()
    tried = [path] if path.is_absolute() else (
        ([(Path(base_dir) / path).absolute()] if base_dir is not None else []) + [Path.cwd() / path])
    for p in tried:
        if p.is_file():
            return p.resolve()
    raise InvalidInput(f"task CSV {str(name)!r} does not exist (tried {', '.join(repr(str(p)) for p in tried)})")


def _check_csv_name(stem: str, source: Path) -> None:
    """A CSV task is named by its file's stem: refuse one that a built-in task or a CSV from another path has."""
    other = TASKS.get(stem)
    if other is None or other.source == source:
        return
    if other.source is None:
        kind = "built-in task" if stem in BUILTIN_TASKS else "registered task"
        raise InvalidInput(f"task CSV {str(source)!r}: a CSV task is named by its file's stem, and {stem!r} is the "
                           f"name of a {kind}; rename the file")
    raise InvalidInput(f"task CSV {str(source)!r}: a CSV task is named by its file's stem, and {stem!r} is already "
                       f"the task read from {str(other.source)!r}; rename one of the files")


def resolve_task(name: str | Path, base_dir: str | Path | None = None) -> Task:
    """The task ``name`` names: a registered task, or, for a path ending in ``.csv`` (relative ones tried under
    ``base_dir``, e.g. a grid file's folder, then the working directory), the CSV task read from it, named by
    the file's stem, with metric ``logit_diff``, and registered so that ``get_task(stem)`` finds it. The same
    unchanged file gives the same Task; an edited one a fresh Task (registered in its place)."""
    if not is_csv_path(name):
        return get_task(name)
    path = _find_csv(name, base_dir)
    stem = path.stem
    _check_csv_name(stem, path)
    data = path.read_bytes()
    key = (path, sha256_of(data))
    task = _CSV_TASKS.get(key)
    if task is None:
        for old in [k for k in _CSV_TASKS if k[0] == path]:  # an earlier version of the file
            del _CSV_TASKS[old]
        task = _CSV_TASKS[key] = Task.from_csv_bytes(data, path, name=stem, metric_kind="logit_diff")
    if TASKS.get(stem) is not task:
        register(task, overwrite=True)
    return task


def task_for_job(name: str, record: dict | None) -> Task:
    """The task of a job in a worker process (which has imported the registry afresh, so that CSV tasks the
    parent registered are unknown to it): ``get_task(name)`` when ``record`` is None, else the CSV task that
    ``record`` (:meth:`Task.input_record`) describes, read again from its file unless ``name`` is already that
    task; InvalidInput if the file changed since the record was made."""
    if record is None:
        return get_task(name)
    missing = [k for k in ("path", "sha256", "metric_kind", "default_seed") if k not in record]
    if missing:
        raise InvalidInput(f"task {name!r}: its input record lacks {missing}")
    if name in BUILTIN_TASKS:
        raise InvalidInput(f"task {name!r} is a built-in task; a CSV task cannot take its name")
    source = Path(record["path"]).resolve()
    have = TASKS.get(name)
    if have is not None and have.source == source and have.sha256 == record["sha256"]:
        return have
    task = Task.from_csv(source, name=name, metric_kind=record["metric_kind"], default_seed=record["default_seed"])
    if task.sha256 != record["sha256"]:
        raise InvalidInput(f"task CSV {str(source)!r} changed since the grid was read (sha256 {task.sha256[:12]} "
                           f"now, {str(record['sha256'])[:12]} then); rerun the command to read it again")
    return register(task, overwrite=True)


for _task in (IOI, GREATER_THAN, GENDERED_PRONOUN, SVA):
    register(_task)
