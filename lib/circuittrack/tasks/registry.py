"""The task registry: name -> :class:`Task`.

Add a task by writing a module that defines a :class:`Task` and calling :func:`register` (or
``register(Task.from_csv(path, name=...))`` for a CSV-defined task).
"""

from __future__ import annotations

from circuittrack.tasks import gendered_pronoun, greater_than, ioi, sva
from circuittrack.tasks.task import Task

TASKS: dict[str, Task] = {}


def register(task: Task, overwrite: bool = False) -> Task:
    """Add ``task`` under ``task.name``; error if the name is taken unless ``overwrite``."""
    if not isinstance(task, Task):
        raise TypeError(f"register() takes a Task, got {type(task).__name__}")
    if task.name in TASKS and not overwrite:
        raise ValueError(f"a task named {task.name!r} is already registered; pass overwrite=True to replace it")
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
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}") from None


for _task in (ioi.TASK, greater_than.TASK, gendered_pronoun.TASK, sva.TASK):
    register(_task)
