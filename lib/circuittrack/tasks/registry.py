"""The task registry: name -> :class:`Task`.

Add a task by writing a module that defines a :class:`Task` and calling :func:`register` (or
``register(Task.from_csv(path, name=...))`` for a CSV-defined task).
"""

from __future__ import annotations

from circuittrack.errors import InvalidInput
from circuittrack.tasks.gendered_pronoun import TASK as GENDERED_PRONOUN
from circuittrack.tasks.greater_than import TASK as GREATER_THAN
from circuittrack.tasks.ioi import TASK as IOI
from circuittrack.tasks.sva import TASK as SVA
from circuittrack.tasks.task import Task

TASKS: dict[str, Task] = {}


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


def get_task(name: str) -> Task:
    """The task called ``name``; ValueError listing the valid names otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise InvalidInput(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}") from None


for _task in (IOI, GREATER_THAN, GENDERED_PRONOUN, SVA):
    register(_task)
