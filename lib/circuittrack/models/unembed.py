"""Logits at one position per row, whatever the installed transformers does with ``logits_to_keep``.

Hugging Face causal LMs take ``logits_to_keep``, but only recent transformers (5.2x's ``slice_logits_to_keep``)
read a 2-D tensor as per-row positions; earlier 5.x releases (5.17, as on the GPU machines' images) index the
sequence dimension with the whole tensor and return [B, B, 1, V] logits. So the kernels do not pass it: a forward
pre-hook on the unembedding (``get_output_embeddings()``) gives it each row's residual at its position only, the
same rows the recent ``slice_logits_to_keep`` takes, on every version. It gathers them with ``torch.gather``, which
refuses a position past the end (``torch.take_along_dim``, which transformers uses, broadcasts a length-1 sequence
instead).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn


def unembedding(model: nn.Module, required: bool = False) -> nn.Module | None:
    """The module that maps the final residual to logits (Hugging Face's ``get_output_embeddings()``), or None
    (``required``: a clear error instead)."""
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module):
        return head
    if required:
        raise TypeError(f"{type(model).__name__} has no output embedding (get_output_embeddings) to read rows from")
    return None


def rows_at(x: Tensor, positions: Tensor) -> Tensor:
    """Row b of ``x`` [B, P, ...] at position ``positions[b]`` ([B] or [B, 1]): [B, 1, ...]."""
    index = positions.reshape(-1, 1, *[1] * (x.dim() - 2)).to(x.device)
    return torch.gather(x, 1, index.expand(-1, 1, *x.shape[2:]))


def rows_hook(positions: Tensor):
    """A forward pre-hook for the unembedding: its input [B, P, d] becomes the rows at ``positions`` ([B] or
    [B, 1]): [B, 1, d], so the logits are [B, 1, V]."""
    return lambda module, args: (rows_at(args[0], positions), *args[1:])


@contextmanager
def logits_at(model: nn.Module, positions: Tensor | None):
    """While open, ``model(...).logits`` is [B, 1, V]: each row's logits at its position in ``positions`` (None:
    every position, as without it)."""
    if positions is None:
        yield
        return
    handle = unembedding(model, required=True).register_forward_pre_hook(rows_hook(positions))
    try:
        yield
    finally:
        handle.remove()
