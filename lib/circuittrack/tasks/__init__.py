"""Task definitions (IOI, Greater-Than, Gendered Pronoun, SVA, CSV tasks), their data contract and evaluation.

The registry and :class:`Task` load with the package; :class:`TaskData`, the metrics and :func:`evaluate` (which
need torch) on first use, so that the command line can check task names without importing torch.
"""

import importlib
import sys
import types

from circuittrack.tasks.registry import TASKS, get_task, list_tasks, register, resolve_task, task_for_job
from circuittrack.tasks.task import Task

_LAZY = {
    "TaskData": "circuittrack.tasks.data",
    "evaluate": "circuittrack.tasks.evaluate",
    "accuracy": "circuittrack.tasks.metrics",
    "answer_logits": "circuittrack.tasks.metrics",
    "metric": "circuittrack.tasks.metrics",
    "metric_per_example": "circuittrack.tasks.metrics",
}

__all__ = sorted([*_LAZY, "TASKS", "Task", "get_task", "list_tasks", "register", "resolve_task", "task_for_job"])


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


class _Package(types.ModuleType):
    """Keeps ``circuittrack.tasks.evaluate`` the function: importing the submodule of that name binds the module
    on its package, which would otherwise hide the function."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType) and value.__name__ == _LAZY[name]:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
