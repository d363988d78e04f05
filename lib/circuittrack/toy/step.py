"""The toy trainer's loss: next-token cross-entropy of a GPT-NeoX model, computed straight from its parameters.

Hugging Face's forward is general (masks, caches, attention back-ends, a loss that materialises log-softmax over
every position); at the toy suite's sizes that generality costs as much as the arithmetic. :func:`lm_loss` runs
the same computation (parallel or sequential residual, rotary on the first ``rotary_ndims`` of each head, exact
GELU, untied unembedding) on the module's own parameters, so the optimizer updates the model that is saved, and
fuses the unembedding with the cross-entropy (:class:`UnembedCrossEntropy`): the softmax is computed once, in
place, and reused as the gradient. Tests tie the loss and every parameter's gradient to the Hugging Face
model's ``model(x, labels=x).loss``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class UnembedCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i W_U^T, y_i) with the [N, V] logits freed after the forward: their softmax, kept in place,
    is the gradient (softmax - onehot) / N, so the backward is two matrix products."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, dtype: torch.dtype) -> Tensor:
        ctx.dtype = dtype
        h, weight = h.to(dtype), weight.to(dtype)
        logits = (h @ weight.t()).float()
        top = logits.max(-1, keepdim=True).values
        probs = logits.sub_(top).exp_()
        total = probs.sum(-1, keepdim=True)
        picked = probs.gather(1, targets[:, None])
        loss = (total.log() - picked.log()).mean()  # log sum exp(z - top) - (z_y - top)
        probs.div_(total)
        ctx.save_for_backward(h, weight, targets, probs)
        return loss

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, weight, targets, probs = ctx.saved_tensors
        g = probs.clone()
        g[torch.arange(len(targets), device=g.device), targets] -= 1
        g = g.mul_(grad / len(targets)).to(ctx.dtype)
        return (g @ weight).float(), (g.t() @ h).float(), None, None


def _rotary(config, positions: int, device, dtype) -> tuple[Tensor, Tensor, int]:
    """cos, sin [P, rot] as GPT-NeoX builds them (inv_freq over the rotary dims, frequencies repeated)."""
    head = config.hidden_size // config.num_attention_heads
    rot = int(head * config.rope_parameters.get("partial_rotary_factor", 1.0))
    base = config.rope_parameters.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, rot, 2, dtype=torch.float, device=device) / rot))
    freqs = torch.arange(positions, device=device, dtype=torch.float)[:, None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype), rot


def _rotate(x: Tensor, cos: Tensor, sin: Tensor, rot: int) -> Tensor:
    r, rest = x[..., :rot], x[..., rot:]
    half = rot // 2
    turned = torch.cat((-r[..., half:], r[..., :half]), dim=-1)
    return torch.cat((r * cos + turned * sin, rest), dim=-1)


def lm_loss(model, tokens: Tensor, compute_dtype: torch.dtype = torch.float32) -> Tensor:
    """Mean next-token cross-entropy of a ``GPTNeoXForCausalLM`` (no dropout, no padding) on ``tokens`` [B, P]:
    what ``model(tokens, labels=tokens).loss`` computes, without its overhead. ``compute_dtype`` bfloat16 runs
    the matrix products in bf16 (autocast; the parameters, norms, softmax and loss stay float32)."""
    with torch.autocast(tokens.device.type, dtype=compute_dtype, enabled=compute_dtype != torch.float32):
        return _lm_loss(model, tokens, compute_dtype)


def _lm_loss(model, tokens: Tensor, compute_dtype: torch.dtype) -> Tensor:
    cfg = model.config
    net = model.gpt_neox
    B, P = tokens.shape
    H = cfg.num_attention_heads
    dh = cfg.hidden_size // H
    eps = cfg.layer_norm_eps
    h = net.embed_in(tokens)
    cos, sin, rot = _rotary(cfg, P, h.device, torch.float32)
    for layer in net.layers:
        a = layer.attention
        x = F.layer_norm(h, h.shape[-1:], layer.input_layernorm.weight, layer.input_layernorm.bias, eps)
        qkv = F.linear(x, a.query_key_value.weight, a.query_key_value.bias).view(B, P, H, 3 * dh).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = _rotate(q.float(), cos, sin, rot), _rotate(k.float(), cos, sin, rot)
        with torch.autocast(tokens.device.type, enabled=False):  # attention in float32 (its bf16 backward is slow)
            z = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True, scale=dh**-0.5)
        attn = F.linear(z.transpose(1, 2).reshape(B, P, H * dh), a.dense.weight, a.dense.bias)
        mlp_in = h if cfg.use_parallel_residual else h + attn
        m = layer.mlp
        y = F.layer_norm(mlp_in, h.shape[-1:], layer.post_attention_layernorm.weight,
                         layer.post_attention_layernorm.bias, eps)
        y = F.linear(F.gelu(F.linear(y, m.dense_h_to_4h.weight, m.dense_h_to_4h.bias)), m.dense_4h_to_h.weight,
                     m.dense_4h_to_h.bias)
        h = mlp_in + attn + y if cfg.use_parallel_residual else mlp_in + y
    h = F.layer_norm(h, h.shape[-1:], net.final_layer_norm.weight, net.final_layer_norm.bias, eps)
    inputs = h[:, :-1].reshape(-1, h.shape[-1])
    return UnembedCrossEntropy.apply(inputs.float(), model.get_output_embeddings().weight, tokens[:, 1:].reshape(-1),
                                     compute_dtype)
