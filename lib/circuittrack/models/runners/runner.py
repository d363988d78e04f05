"""The :class:`Runner` contract: one forward pass of a causal LM with :class:`~circuittrack.models.hooks.Hooks`."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from circuittrack.models.arch import ArchAdapter
from circuittrack.models.hooks import Hooks


class Runner(ABC):
    """One forward pass of a causal LM with :class:`Hooks`, returning logits; kernels call it inside
    :meth:`session`."""

    backend: str = "?"

    def __init__(self, arch: ArchAdapter, module: nn.Module):
        self.arch = arch
        self.module = module  # the object whose parameters are frozen during attribution

    @property
    def device(self) -> torch.device:
        return self.arch.device

    @property
    def dtype(self) -> torch.dtype:
        return self.arch.dtype

    @abstractmethod
    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None) -> Tensor:
        """Run ``input_ids`` [B, P]; logits [B, P, V], or [B, V] at ``positions`` [B] when given.

        Computing the unembedding only where the metric reads it saves most of the vocabulary cost.
        """

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """For one kernel call: eval mode (no dropout) and frozen parameters (no weight gradients, fewer saved
        tensors); the model's own training flags and ``requires_grad`` are restored afterwards."""
        modules: dict[int, nn.Module] = {}
        params: dict[int, nn.Parameter] = {}
        for root in (self.module, self.arch.model):
            modules.update((id(m), m) for m in root.modules())
            params.update((id(p), p) for p in root.parameters() if p.requires_grad)
        training = [(m, m.training) for m in modules.values()]
        for m, _ in training:
            m.training = False
        for p in params.values():
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params.values():
                p.requires_grad_(True)
            for m, flag in training:
                m.training = flag

    def __repr__(self) -> str:
        a = self.arch
        return (f"{type(self).__name__}({a.name}, layers={a.n_layers}, heads={a.n_heads}, d={a.d_model}, "
                f"device={a.device}, dtype={a.dtype})")
