"""Attention patterns of every head, recomputed from each layer's q and k during one ordinary forward pass.

Hugging Face models only return attention weights from their slow "eager" attention, and switching a caller's
model to it would change the caller's model. Instead, one forward pass records each layer's fused q/k/v
projection and the keyword arguments of its attention module (the rotary cos/sin), and the pattern is
recomputed as softmax(scale * q_pos . k_pos) under the causal mask, with the architecture adapter placing q and
k (rotary for GPT-NeoX). Tested against the eager attention weights of a copy of the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuittrack.models.arch import get_arch, get_path


def attention_patterns(model, tokens: Tensor, layers: list[int] | None = None) -> Tensor:
    """Patterns [L', B, H, P, P] (float32; row = query position) of ``layers`` (default: all) for ``tokens``
    [B, P] (no padding: every position is attended as text). The model is not changed."""
    a = get_arch(model)
    layers = list(range(a.n_layers)) if layers is None else list(layers)
    blocks = list(get_path(model, a.layers_path))
    qkv: dict[int, Tensor] = {}
    kwargs: dict[int, dict] = {}
    handles = []
    try:
        for l in layers:
            handles.append(get_path(blocks[l], a.qkv_path).register_forward_hook(
                lambda m, args, out, l=l: qkv.__setitem__(l, out.detach())))
            handles.append(get_path(blocks[l], a.attn_path).register_forward_pre_hook(
                lambda m, args, kw, l=l: kwargs.__setitem__(l, kw), with_kwargs=True))
        with torch.no_grad():
            model(input_ids=tokens.to(a.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    P = tokens.shape[1]
    causal = torch.ones(P, P, dtype=torch.bool, device=a.device).tril()
    out = []
    for l in layers:
        q, k, _ = a.split_qkv(qkv[l].float())
        q, k = a.position_qk(q, k, kwargs[l])
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * a.attn_scale(l)
        out.append(scores.masked_fill(~causal, float("-inf")).softmax(-1))
    return torch.stack(out)
