"""The kernel-side contract: the abstract sites of one forward pass and the callbacks that intervene there.

Every backend (TransformerLens, nnsight, plain PyTorch hooks) implements
:class:`~circuittrack.models.runners.runner.Runner` over the same
Hugging Face weights, so the attribution and evaluation kernels are written once. A pass is described by a
:class:`Hooks` object whose callbacks the runner calls in module execution order:

=============  ====================================================  =============================
site           value (B batch, P positions, H heads, dh head size)   callback may
=============  ====================================================  =============================
resid0         residual stream entering layer 0 (token embeddings)   read / replace
attn_in(l)     layer l's attention LayerNorm input (the residual)    read
qkv(l, t)      projection output of t in (q, k, v): [B, P, H_t, dh]  read / replace
qkv_grad(l,t)  dLoss/d(projection output), [B, P, H_t, dh]           (backward) read
z(l)           head outputs before W_O: [B, P, H, dh]                read / replace
attn_out(l)    attention's residual write [B, P, d] (after a post-norm) read / replace
mlp_in(l)      MLP LayerNorm input [B, P, d]                         read / replace
mlp_in_grad(l) dLoss/d(MLP LayerNorm input) through the MLP only     (backward) read
mlp_out(l)     MLP output [B, P, d]                                  read / replace
final_in       final LayerNorm input [B, P, d]                       read / replace
final_in_grad  dLoss/d(final LayerNorm input)                        (backward) read
mlp_known(l)   the MLP's residual write, when the caller knows it    give it (or None)
qkv_known(l,   a projection module's whole output (the t in ts),      give it (or None)
  ts)          when the caller knows it
attn_known(l)  the attention module's output (W_O's, before any      give it (or None)
               post-norm), when the caller knows it
=============  ====================================================  =============================

A forward callback returns ``None`` to leave the value alone or a tensor of the same shape to replace it.
The ``*_known`` callbacks are only a saving: a tensor they give must be what the module would compute in this
pass (e.g. a value recorded in an earlier pass on the same inputs). A runner that can (plain PyTorch) then skips
running the module and uses the tensor; one that cannot runs the module as usual. Either way the pass computes
the same thing, and the site's other callbacks (``mlp_out``, ``qkv``) still see the value. ``attn_known`` is
the exception: a runner that skips the attention module does not call the callbacks of the sites inside it
(``qkv``, ``qkv_known``, ``z``, and ``attn_out`` where W_O's output is the residual write), so a caller that gives
it must not need them.
H_t is H for queries and the number of key/value heads for keys and values (grouped-query attention).
Gradient callbacks fire during a later ``backward``/``autograd.grad`` of something computed from the logits;
the runner attaches them to tensors that are really on the path to the loss (for the MLP input it inserts an
identity node so the gradient is that of the MLP branch alone, not of the whole residual).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from circuittrack.models.arch import ArchAdapter

QKV_NAMES = ("q", "k", "v")


@dataclass
class Hooks:
    """Callbacks of one forward pass; ``None`` means the site is not touched (and costs nothing)."""

    resid0: Callable[[Tensor], Tensor | None] | None = None
    attn_in: Callable[[int, Tensor], None] | None = None
    qkv: Callable[[int, int, Tensor], Tensor | None] | None = None
    qkv_grad: Callable[[int, int, Tensor], None] | None = None
    z: Callable[[int, Tensor], Tensor | None] | None = None
    attn_out: Callable[[int, Tensor], Tensor | None] | None = None
    mlp_in: Callable[[int, Tensor], Tensor | None] | None = None
    mlp_in_grad: Callable[[int, Tensor], None] | None = None
    mlp_out: Callable[[int, Tensor], Tensor | None] | None = None
    final_in: Callable[[Tensor], Tensor | None] | None = None
    final_in_grad: Callable[[Tensor], None] | None = None
    mlp_known: Callable[[int], Tensor | None] | None = None
    qkv_known: Callable[[int, tuple[int, ...]], Tensor | None] | None = None
    attn_known: Callable[[int], Tensor | None] | None = None


_READ_SITES = ("attn_in",)
_GRAD_SITES = ("qkv_grad", "mlp_in_grad", "final_in_grad")
_KNOWN_SITES = ("mlp_known", "qkv_known", "attn_known")


def merge_hooks(*hooks: Hooks) -> Hooks:
    """One :class:`Hooks` running several in order: replacements chain (each callback sees the value left by
    the previous one), reads and gradient callbacks all run, a known value is the first one given."""
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
        elif name in _KNOWN_SITES:
            setattr(out, name, _first_known(fns))
        else:
            setattr(out, name, _chain(fns))
    return out


def _fan_out(fns):
    def run(*args):
        for fn in fns:
            fn(*args)

    return run


def _first_known(fns):
    def run(*keys):
        for fn in fns:
            value = fn(*keys)
            if value is not None:
                return value
        return None

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


def intervene_qkv(arch: ArchAdapter, h: Hooks, layer: int, out: Tensor, ts: tuple[int, ...] = (0, 1, 2)) -> Tensor:
    """Apply ``h.qkv`` (per projection t in ``ts``, each [B, P, H_t, dh]) and ``h.qkv_grad`` to the output of a
    projection module (fused q/k/v, or one of them); returns ``out`` itself when nothing was replaced."""
    if h.qkv is not None:
        parts = arch.split_projection(out, ts)
        new = [h.qkv(layer, t, p) for t, p in zip(ts, parts)]
        if any(n is not None for n in new):
            out = arch.merge_projection([p if n is None else n for p, n in zip(parts, new)], ts)
    if h.qkv_grad is not None:
        out = attach_grad(out, lambda g: [h.qkv_grad(layer, t, gt)
                                          for t, gt in zip(ts, arch.split_projection(g, ts))])
    return out


def branch_with_grad(x: Tensor, fn: Callable[[Tensor], None] | None) -> Tensor:
    """An identity node on ``x`` whose gradient is that of its own consumers only (e.g. just the MLP)."""
    if fn is None or not x.requires_grad:
        return x
    y = x.view_as(x)
    y.register_hook(_observer(fn))
    return y


def intervene_input(x: Tensor, replace: Callable[[Tensor], Tensor | None] | None,
                    on_grad: Callable[[Tensor], None] | None) -> Tensor:
    """A module input (MLP or final LayerNorm) after the ``replace`` callback and with the ``on_grad`` branch
    attached; returns ``x`` itself when nothing changed, so a runner can skip writing it back."""
    new = replace(x) if replace is not None else None
    y = x if new is None else new
    return branch_with_grad(y, on_grad) if on_grad is not None else y


def mlp_in_callbacks(h: Hooks, layer: int) -> tuple[Callable | None, Callable | None]:
    """(replace, on_grad) of the ``mlp_in`` site of ``layer`` for :func:`intervene_input`."""
    replace = (lambda x: h.mlp_in(layer, x)) if h.mlp_in is not None else None
    on_grad = (lambda g: h.mlp_in_grad(layer, g)) if h.mlp_in_grad is not None else None
    return replace, on_grad
