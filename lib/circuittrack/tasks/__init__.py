"""Task definitions (IOI, Greater-Than, Gendered Pronoun, SVA, CSV tasks), their data contract and evaluation."""

from circuittrack.tasks.data import TaskData
from circuittrack.tasks.evaluate import evaluate
from circuittrack.tasks.metrics import accuracy, answer_logits, metric, metric_per_example
from circuittrack.tasks.registry import TASKS, get_task, list_tasks, register
from circuittrack.tasks.task import Task

__all__ = [
    "TASKS",
    "Task",
    "TaskData",
    "accuracy",
    "answer_logits",
    "evaluate",
    "get_task",
    "list_tasks",
    "metric",
    "metric_per_example",
    "register",
]
