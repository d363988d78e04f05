"""Task metrics from answer-position logits: logit difference, probability difference, accuracy.

The loss used for attribution is the negated mean metric (see :mod:`circuittrack.circuits.attribution`).
"""

from __future__ import annotations

import torch

from circuittrack.errors import InvalidInput
from circuittrack.tasks.data import TaskData


def answer_logits(logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """Logits at each example's answer position: [n, P, V] -> [n, V]."""
    idx = torch.arange(logits.shape[0], device=logits.device)
    return logits[idx, data.answer_pos.to(logits.device)]


def metric_per_example(final_logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """The task metric of each example from its answer-position logits [n, V] -> [n] (float32)."""
    x = final_logits.float()
    tokens = data.answer_tokens.to(x.device)
    sign = data.answer_sign.to(x.device, torch.float32)
    if data.metric_kind == "logit_diff":
        picked = x[:, tokens]
    elif data.metric_kind == "prob_diff":
        picked = torch.softmax(x, dim=-1)[:, tokens]
    else:  # pragma: no cover - guarded by MetricKind
        raise InvalidInput(f"unknown metric kind {data.metric_kind!r}")
    return (picked * sign).sum(-1)


def metric(logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """Per-example metric from full logits [n, P, V] -> [n]."""
    return metric_per_example(answer_logits(logits, data), data)


def accuracy(logits: torch.Tensor, data: TaskData) -> float:
    """Fraction of examples whose metric is positive (right answer beats wrong answer)."""
    return float((metric(logits, data) > 0).float().mean())
