"""Task data: the contract between task definitions and the kernels (metrics: :mod:`circuittrack.tasks.metrics`).

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

from circuittrack.errors import InvalidInput

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
            raise InvalidInput(f"{self.task}: clean {tuple(self.clean.shape)} and corrupted "
                             f"{tuple(self.corrupted.shape)} token tensors differ in shape")
        if self.answer_sign.shape != (n, self.answer_tokens.shape[0]):
            raise InvalidInput(f"{self.task}: answer_sign must be [n, A] = [{n}, {self.answer_tokens.shape[0]}]")

    def __len__(self) -> int:
        return self.clean.shape[0]

    def to(self, device: torch.device | str) -> TaskData:
        """A copy with every tensor on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return TaskData(**moved)

    def columns(self, start: int, stop: int) -> TaskData:
        """Positions ``start:stop`` of every prompt (answer positions and lengths counted from ``start``): the part
        a kernel runs after a shared prefix, without the padding every prompt has at the end."""
        if not 0 <= start < stop <= self.clean.shape[1]:
            raise ValueError(f"columns {start}:{stop} outside the {self.clean.shape[1]} positions")
        out = dict(self.__dict__, clean=self.clean[:, start:stop], corrupted=self.corrupted[:, start:stop],
                   lengths=self.lengths - start, answer_pos=self.answer_pos - start)
        return TaskData(**out)

    def slice_rows(self, rows: torch.Tensor) -> TaskData:
        """The examples ``rows`` (a long tensor of indices), in that order."""
        return self._rows(rows)

    def slice(self, start: int, stop: int) -> TaskData:
        """Examples ``start:stop`` (for batching); answer columns are kept."""
        return self._rows(slice(start, stop))

    def _rows(self, index: slice | torch.Tensor) -> TaskData:
        """The examples ``index`` selects (a slice: views; index tensor: copies in its order) of every per-example
        field; answer tokens and scalars are kept."""
        out = {}
        for k, v in self.__dict__.items():
            if isinstance(v, torch.Tensor) and k != "answer_tokens":
                out[k] = v[index]
            elif isinstance(v, tuple) and v:
                out[k] = v[index] if isinstance(index, slice) else tuple(v[int(i)] for i in index)
            else:
                out[k] = v
        return TaskData(**out)

    def batches(self, batch_size: int):
        """Yield consecutive slices of at most ``batch_size`` examples."""
        for s in range(0, len(self), batch_size):
            yield self.slice(s, min(s + batch_size, len(self)))
