"""The :class:`Runner` contract: one forward pass of a causal LM with :class:`~circuittrack.models.hooks.Hooks`."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuittrack.models.arch import ArchAdapter
from circuittrack.models.hooks import Hooks


@dataclass(frozen=True)
class Prefix:
    """The keys and values of a batch's first ``length`` positions, computed once and reused by every later pass
    over the positions after them (a Hugging Face key/value cache, detached: no gradient reaches the prefix).

    Kernels use it where the clean and corrupted prompts (and so every patched or interpolated run) agree on the
    first positions: those positions' activations are the same in every run, their activation differences are
    zero, so nothing a kernel computes depends on running them again
    (:func:`circuittrack.circuits.sources.prefix_groups`)."""

    length: int
    rows: int  # examples the prefix was computed for
    kv: tuple[tuple[Tensor, Tensor], ...]  # per layer: keys, values [rows, heads, length, d_head]

    def cache(self, rows: int):
        """A fresh ``DynamicCache`` for a pass of ``rows`` = k x ``self.rows`` inputs (the batch repeated k times,
        block-major, as stacked circuits and interpolation points are): HF appends to it in place."""
        from transformers import DynamicCache

        k, rest = divmod(rows, self.rows)
        if rest or k < 1:
            raise ValueError(f"a pass of {rows} rows cannot reuse a prefix of {self.rows} rows")
        rep = (lambda t: t) if k == 1 else (lambda t: t.repeat(k, *([1] * (t.dim() - 1))))
        return DynamicCache(ddp_cache_data=[(rep(key), rep(value)) for key, value in self.kv])


class Runner(ABC):
    """One forward pass of a causal LM with :class:`Hooks`, returning logits; kernels call it inside
    :meth:`session`."""

    backend: str = "?"
    #: Whether :meth:`forward` takes a ``prefix`` (:meth:`encode_prefix`); runners that do not run every position.
    supports_prefix: bool = False
    #: Whether a module whose output a ``*_known`` hook gives is skipped (else it runs; see models/hooks.py).
    skips_known: bool = False

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
    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None,
                prefix: Prefix | None = None) -> Tensor:
        """Run ``input_ids`` [B, P]; logits [B, P, V], or [B, V] at ``positions`` [B] when given.

        Computing the unembedding only where the metric reads it saves most of the vocabulary cost; the torch
        runner then also runs the last layer's MLP and W_O on those rows only (their outputs elsewhere reach no
        computed logit; hooks see zeros there, and gradients are unchanged). With a
        ``prefix`` (only where :attr:`supports_prefix`), ``input_ids`` are the positions after it: hooks see
        those positions only, and ``positions`` count from the first of them.
        """

    def encode_prefix(self, input_ids: Tensor) -> Prefix:
        """The keys and values of ``input_ids`` [B, p] (no hooks, no gradient) for :meth:`forward`'s ``prefix``:
        one plain pass of the Hugging Face model (runners that support prefixes drive it directly)."""
        if not self.supports_prefix:
            raise NotImplementedError(f"the {self.backend} runner does not reuse prefixes")
        with torch.no_grad():
            out = self.arch.model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
        kv = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        return Prefix(int(input_ids.shape[1]), int(input_ids.shape[0]), kv)

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


class PrefixedRunner(Runner):
    """A runner whose every pass continues after the same :class:`Prefix` (the batch's shared first positions):
    kernels written for whole prompts run unchanged on the positions after it."""

    def __init__(self, inner: Runner, prefix: Prefix):
        super().__init__(inner.arch, inner.module)
        self.inner, self.prefix, self.backend, self.skips_known = inner, prefix, inner.backend, inner.skips_known

    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None,
                prefix: Prefix | None = None) -> Tensor:
        if prefix is not None:
            raise ValueError("a PrefixedRunner already continues a prefix")
        return self.inner.forward(input_ids, hooks, positions, prefix=self.prefix)

    def session(self):
        return self.inner.session()
