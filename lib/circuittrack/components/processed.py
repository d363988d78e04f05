"""The weights a head's copy score reads, processed as the paper's models were loaded.

The paper's `utils/backup_analysis.load_model` calls ``HookedTransformer.from_pretrained(..., fold_ln=True,
center_writing_weights=True, center_unembed=True, refactor_factored_attn_matrices=False)`` with TransformerLens'
default ``fold_value_biases=True``. Its steps, in TransformerLens' order (``process_weights``):

1. fold_ln: each attention LayerNorm's weight scales W_V's input rows and its bias joins b_V
   (b_V + ln.b @ W_V), then W_V is centred over d_model; the final LayerNorm's weight scales W_U's rows and its
   bias joins b_U (b_U + ln_f.b @ W_U), then W_U is centred over d_model. The LayerNorms keep only centring and
   the division by the scale, which a direct read of the weights does not apply.
2. center_writing_weights: W_E, W_O and b_O are centred over d_model (so is every residual stream).
3. center_unembed: W_U and b_U are centred over the vocabulary.
4. fold_value_biases: b_O += sum_h b_V[h] @ W_O[h], then b_V = 0 (and b_O is centred again).

Everything is computed from the adapter's weights into new float32 tensors in TransformerLens' layout
(``x @ W``); the caller's model is never changed. Only what the copy score reads is built (W_V, b_V, W_O, W_U,
b_U); the processed model's residual stream is the plain model's centred over d_model (:func:`centred`: W_E,
every W_O, b_O, W_out and b_out are centred, and LayerNorms ignore the mean of their input).
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuittrack.models.arch import unwrap


def centred(x: Tensor) -> Tensor:
    """x minus its mean over the last axis (d_model: the processed model's residual; or the vocabulary)."""
    return x - x.mean(-1, keepdim=True)


@torch.no_grad()
def processed_ov(arch, layer: int) -> tuple[Tensor, Tensor, Tensor]:
    """(W_V [H, d, dh], b_V [H, dh], W_O [H, dh, d]) of ``layer`` after the four steps (float32; b_V is zero,
    its value went into b_O, which the copy score does not read). With RMSNorm (or none) TransformerLens folds
    only the norm's weight and centres nothing over d_model (the residual is not centred); each query head reads
    its key/value group's W_V."""
    W, b = arch.proj_params(layer, 2)
    groups = torch.tensor([arch.kv_head(h) for h in range(arch.n_heads)], device=W.device)
    W, b = W.index_select(0, groups), b.index_select(0, groups)
    ln_w, ln_b = (t.float() for t in arch.ln1(layer)[:2])
    W_V = W.float().transpose(1, 2)  # [H, d, dh]
    b_V = b.float() + (W_V * ln_b[None, :, None]).sum(-2)  # 1. fold the LayerNorm bias ...
    W_V = W_V * ln_w[None, :, None]  # ... and weight
    W_O = arch.o_weight(layer).float().permute(1, 2, 0)  # [H, dh, d]
    if arch.norm == "layernorm":
        W_V = W_V - W_V.mean(-2, keepdim=True)  # ... and centre the reading weights over d_model
        W_O = centred(W_O)  # 2. centre the writing weights
    return W_V, torch.zeros_like(b_V), W_O  # 4. b_V folded into b_O


@torch.no_grad()
def processed_unembed(arch) -> tuple[Tensor, Tensor]:
    """(W_U [d, V], b_U [V]) after folding the final LayerNorm and centring (float32)."""
    head = unwrap(arch.model).get_output_embeddings()
    W_U = head.weight.float().T  # [d, V]
    b_U = W_U.new_zeros(W_U.shape[1]) if head.bias is None else head.bias.float()
    ln_w, ln_b = (t.float() for t in arch.ln_final()[:2])
    b_U = b_U + ln_b @ W_U  # 1. fold the final LayerNorm's bias ...
    W_U = W_U * ln_w[:, None]  # ... and weight
    if arch.final_norm == "layernorm":
        W_U = W_U - W_U.mean(0, keepdim=True)  # ... and centre the reading weights over d_model
    return centred(W_U), centred(b_U)  # 3. centre over the vocabulary
