"""Task data and metrics: the contract between task definitions and the patching kernels.

A task turns (tokenizer, n, seed) into :class:`TaskData`: clean and corrupted prompts of equal token
length (per example; right-padded across examples), the position whose logits are read, and the answer
tokens with a sign (+1 correct, -1 incorrect, 0 unused). Two metric kinds cover the paper:

* ``logit_diff``: sum over answers of sign * logit   (one +1 and one -1 answer: logit(right) - logit(wrong))
* ``prob_diff``:  sum over answers of sign * softmax(logits over the full vocabulary)

The loss used for attribution is the negated mean metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

MetricKind = Literal["logit_diff", "prob_diff"]


@dataclass(frozen=True)
class TaskData:
    """One batch of task examples, all tensors on the CPU until moved with :meth:`to`.

    Shapes: ``n`` examples, ``P`` padded positions, ``A`` distinct answer tokens.
    """

    task: str
    metric_kind: MetricKind
    clean: torch.Tensor  # [n, P] long, right-padded with pad_id
    corrupted: torch.Tensor  # [n, P] long; same per-example length as clean
    lengths: torch.Tensor  # [n] long: real (unpadded) length of each example
    answer_pos: torch.Tensor  # [n] long: position whose next-token logits are read (lengths - 1)
    answer_tokens: torch.Tensor  # [A] long: token ids that any example scores
    answer_sign: torch.Tensor  # [n, A] float: +1 correct, -1 incorrect, 0 ignored
    pad_id: int = 0
    clean_text: tuple[str, ...] = field(default=(), compare=False)
    corrupted_text: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        n, _ = self.clean.shape
        if self.corrupted.shape != self.clean.shape:
            raise ValueError(f"{self.task}: clean {tuple(self.clean.shape)} and corrupted "
                             f"{tuple(self.corrupted.shape)} token tensors differ in shape")
        if self.answer_sign.shape != (n, self.answer_tokens.shape[0]):
            raise ValueError(f"{self.task}: answer_sign must be [n, A] = [{n}, {self.answer_tokens.shape[0]}]")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device: torch.device | str) -> TaskData:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return TaskData(**moved)

    def slice(self, start: int, stop: int) -> TaskData:
        """Examples ``start:stop`` (for batching); answer columns are kept."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor) and k != "answer_tokens":
                out[k] = v[start:stop]
            elif isinstance(v, tuple):
                out[k] = v[start:stop]
            else:
                out[k] = v
        return TaskData(**out)

    def batches(self, batch_size: int):
        """Yield consecutive slices of at most ``batch_size`` examples."""
        for s in range(0, len(self), batch_size):
            yield self.slice(s, min(s + batch_size, len(self)))


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
        raise ValueError(f"unknown metric kind {data.metric_kind!r}")
    return (picked * sign).sum(-1)


def metric(logits: torch.Tensor, data: TaskData) -> torch.Tensor:
    """Per-example metric from full logits [n, P, V] -> [n]."""
    return metric_per_example(answer_logits(logits, data), data)


def accuracy(logits: torch.Tensor, data: TaskData) -> float:
    """Fraction of examples whose metric is positive (right answer beats wrong answer)."""
    return float((metric(logits, data) > 0).float().mean())
