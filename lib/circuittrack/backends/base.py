"""The kernel-side contract: one forward pass with interventions at abstract sites.

Every backend (TransformerLens, nnsight, plain PyTorch hooks) implements :class:`Runner` over the same
Hugging Face weights, so the attribution and evaluation kernels are written once. A pass is described by a
:class:`Hooks` object whose callbacks the runner calls in module execution order:

=============  ====================================================  =============================
site           value (B batch, P positions, H heads, dh head size)   callback may
=============  ====================================================  =============================
resid0         residual stream entering layer 0 (token embeddings)   read / replace
attn_in(l)     layer l's attention LayerNorm input (the residual)    read
qkv(l, t)      projection output of t in (q, k, v): [B, P, H, dh]    read / replace
qkv_grad(l,t)  dLoss/d(projection output), [B, P, H, dh]             (backward) read
z(l)           head outputs before W_O: [B, P, H, dh]                read / replace
mlp_in(l)      MLP LayerNorm input [B, P, d]                         read / replace
mlp_in_grad(l) dLoss/d(MLP LayerNorm input) through the MLP only     (backward) read
mlp_out(l)     MLP output [B, P, d]                                  read / replace
final_in       final LayerNorm input [B, P, d]                       read / replace
final_in_grad  dLoss/d(final LayerNorm input)                        (backward) read
=============  ====================================================  =============================

A forward callback returns ``None`` to leave the value alone or a tensor of the same shape to replace it.
Gradient callbacks fire during a later ``backward``/``autograd.grad`` of something computed from the logits;
the runner attaches them to tensors that are really on the path to the loss (for the MLP input it inserts an
identity node so the gradient is that of the MLP branch alone, not of the whole residual).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .arch import ArchAdapter

QKV_NAMES = ("q", "k", "v")


@dataclass
class Hooks:
    """Callbacks of one forward pass; ``None`` means the site is not touched (and costs nothing)."""

    resid0: Callable[[Tensor], Tensor | None] | None = None
    attn_in: Callable[[int, Tensor], None] | None = None
    qkv: Callable[[int, int, Tensor], Tensor | None] | None = None
    qkv_grad: Callable[[int, int, Tensor], None] | None = None
    z: Callable[[int, Tensor], Tensor | None] | None = None
    mlp_in: Callable[[int, Tensor], Tensor | None] | None = None
    mlp_in_grad: Callable[[int, Tensor], None] | None = None
    mlp_out: Callable[[int, Tensor], Tensor | None] | None = None
    final_in: Callable[[Tensor], Tensor | None] | None = None
    final_in_grad: Callable[[Tensor], None] | None = None


_READ_SITES = ("attn_in",)
_GRAD_SITES = ("qkv_grad", "mlp_in_grad", "final_in_grad")


def merge_hooks(*hooks: Hooks) -> Hooks:
    """One :class:`Hooks` running several in order: replacements chain (each callback sees the value left by
    the previous one), reads and gradient callbacks all run."""
    hooks = tuple(h for h in hooks if h is not None)
    out = Hooks()
    for name in Hooks.__dataclass_fields__:
        fns = [getattr(h, name) for h in hooks if getattr(h, name) is not None]
        if not fns:
            continue
        if len(fns) == 1:
            setattr(out, name, fns[0])
        elif name in _READ_SITES or name in _GRAD_SITES:
            setattr(out, name, _fan_out(fns))
        else:
            setattr(out, name, _chain(fns))
    return out


def _fan_out(fns):
    def run(*args):
        for fn in fns:
            fn(*args)

    return run


def _chain(fns):
    def run(*args):
        *keys, value = args
        changed = None
        for fn in fns:
            new = fn(*keys, value)
            if new is not None:
                value = changed = new
        return changed

    return run


def _observer(fn: Callable[[Tensor], None]) -> Callable[[Tensor], None]:
    """A tensor hook that passes the gradient to ``fn`` and never modifies it."""

    def hook(grad: Tensor) -> None:
        fn(grad)

    return hook


def attach_grad(x: Tensor, fn: Callable[[Tensor], None]) -> Tensor:
    """Register ``fn`` to receive dLoss/dx; returns ``x`` (to be used downstream so the hook fires)."""
    if x.requires_grad:
        x.register_hook(_observer(fn))
    return x


def intervene_qkv(arch: ArchAdapter, h: Hooks, layer: int, out: Tensor) -> Tensor:
    """Apply ``h.qkv`` (per q/k/v, each [B, P, H, dh]) and ``h.qkv_grad`` to a fused projection output;
    returns ``out`` itself when nothing was replaced."""
    if h.qkv is not None:
        parts = arch.split_qkv(out)
        new = [h.qkv(layer, t, p) for t, p in enumerate(parts)]
        if any(n is not None for n in new):
            out = arch.merge_qkv(*(p if n is None else n for p, n in zip(parts, new)))
    if h.qkv_grad is not None:
        out = attach_grad(out, lambda g: [h.qkv_grad(layer, t, gt) for t, gt in enumerate(arch.split_qkv(g))])
    return out


def branch_with_grad(x: Tensor, fn: Callable[[Tensor], None] | None) -> Tensor:
    """An identity node on ``x`` whose gradient is that of its own consumers only (e.g. just the MLP)."""
    if fn is None or not x.requires_grad:
        return x
    y = x.view_as(x)
    y.register_hook(_observer(fn))
    return y


class Runner(ABC):
    """One forward pass of a causal LM with :class:`Hooks`, returning logits."""

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
    def frozen(self) -> Iterator[None]:
        """Parameters stop requiring grad (no weight gradients, fewer saved tensors); restored afterwards."""
        seen: dict[int, nn.Parameter] = {}
        for m in (self.module, self.arch.model):
            seen.update((id(p), p) for p in m.parameters() if p.requires_grad)
        params = list(seen.values())
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def __repr__(self) -> str:
        a = self.arch
        return (f"{type(self).__name__}({a.name}, layers={a.n_layers}, heads={a.n_heads}, d={a.d_model}, "
                f"device={a.device}, dtype={a.dtype})")
