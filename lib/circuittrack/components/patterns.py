"""Attention patterns of every head, recomputed from each layer's q and k during one ordinary forward pass.

Hugging Face models only return attention weights from their slow "eager" attention, and switching a caller's
model to it would change the caller's model. Instead, one forward pass records each layer's fused q/k/v
projection (or its q and k projections) and the keyword arguments of its attention module (the rotary cos/sin),
and the pattern is recomputed as softmax(scale * q_pos . k_pos) under the causal mask, with the architecture
adapter placing q and k (q/k norms, rotary; each query head reads its key/value group's key). Tested against the eager attention weights of a copy of the model.
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
    qk: dict[tuple[int, int], Tensor] = {}
    kwargs: dict[int, dict] = {}
    handles = []

    def keep(l: int, ts: tuple[int, ...]):
        def hook(m, args, out):
            for t, part in zip(ts, a.split_projection(out.detach().float(), ts)):
                qk[(l, t)] = part
        return hook

    try:
        for l in layers:
            for path, ts in a.projection_sites():
                if 0 in ts or 1 in ts:
                    handles.append(get_path(blocks[l], path).register_forward_hook(keep(l, ts)))
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
        q, k = a.position_qk(qk[(l, 0)], qk[(l, 1)], kwargs[l], l)
        k = k.repeat_interleave(a.n_heads // a.n_kv_heads, dim=2)  # grouped-query attention: HF's repeat_kv
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * a.attn_scale(l)
        out.append(scores.masked_fill(~causal, float("-inf")).softmax(-1))
    return torch.stack(out)
