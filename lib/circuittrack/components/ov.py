"""What each head writes into the residual stream when it reads given vectors through its OV circuit."""

from __future__ import annotations

import torch



def ov_outputs(arch, layer: int, x: torch.Tensor, value_bias: bool = True) -> torch.Tensor:
    """[H, n, d] (float32): x [n, d] (as the heads read it) through each head's W_V (plus its bias b_V when
    ``value_bias``), then W_O (and a post-norm, each head as if alone). Without the bias this is x @ OV,
    TransformerLens' ``attn.OV`` (W_V @ W_O)."""
    W, b = arch.proj_params(layer, 2)  # [H_v, dh, d]: per key/value head
    groups = torch.tensor([arch.kv_head(h) for h in range(arch.n_heads)], device=W.device)
    W, b = W.index_select(0, groups), b.index_select(0, groups)  # each query head reads its group's values
    v = torch.einsum("nd,hed->nhe", x.float(), W.float())  # [n, H, dh]
    if value_bias:
        v = v + b.float()
    return arch.head_writes_alone(layer, v[None])[0].transpose(0, 1)  # each head alone (OLMo-2: its own norm)
