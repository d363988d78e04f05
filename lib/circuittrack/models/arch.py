"""Architecture knowledge, one small adapter per Hugging Face model class.

An adapter says where the abstract sites of :mod:`circuittrack.backends.base` live in the HF module tree
(for the nnsight and plain-hook runners) and how the attention weights are laid out (for the kernels, which
need per-head W_Q/W_K/W_V, W_O and the LayerNorm parameters). Everything else (TransformerLens hook names)
is architecture-independent because the TransformerLens bridge normalises it.

Supported: ``GPTNeoXForCausalLM`` (Pythia and the toy suite; parallel or sequential blocks; fused
``query_key_value`` with per-head interleaved [H, 3, dh] output layout) and ``GPT2LMHeadModel`` (sequential
blocks; fused ``c_attn`` Conv1D with [3, H, dh] output layout).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from circuittrack.errors import InvalidInput


def unwrap(module: nn.Module) -> nn.Module:
    """The original HF module under TransformerLens bridge wrappers (which it inserts into the tree in place)."""
    while type(module).__module__.startswith("transformer_lens") and isinstance(
            getattr(module, "original_component", None), nn.Module):
        module = module.original_component
    return module


def get_path(root, path: str):
    """Walk a dotted path (``gpt_neox.layers.3.attention``) on modules or nnsight envoys."""
    obj = root
    for part in path.split(".") if path else []:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
        if isinstance(obj, nn.Module):
            obj = unwrap(obj)
    return obj


def is_wrapped_by_transformer_lens(model: nn.Module) -> bool:
    """True when a TransformerLens bridge has inserted its wrappers into this HF model."""
    return any(type(m).__module__.startswith("transformer_lens") for m in model.modules())


class ArchAdapter(ABC):
    """Sizes, site paths and weight layout of one HF causal-LM architecture."""

    name: str = "?"
    # dotted paths: ``layers`` from the root, the rest relative to one layer, ``final_ln`` from the root
    layers_path: str
    ln1_path: str
    qkv_path: str
    o_path: str
    ln2_path: str
    mlp_path: str
    final_ln_path: str
    attn_path: str  # the attention module (its forward keyword arguments carry the rotary cos/sin, if any)

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.d_model = int(cfg.hidden_size)
        if self.d_model % self.n_heads:
            raise InvalidInput(f"hidden_size {self.d_model} is not a multiple of num_attention_heads {self.n_heads}")
        self.d_head = self.d_model // self.n_heads
        self.parallel = self._parallel(cfg)
        layers = get_path(model, self.layers_path)
        # Capture the original modules now: a TransformerLens bridge may wrap them later.
        self._layers = [
            {k: get_path(unwrap(layer), p) for k, p in
             (("ln1", self.ln1_path), ("qkv", self.qkv_path), ("o", self.o_path), ("ln2", self.ln2_path),
              ("mlp", self.mlp_path))}
            for layer in layers
        ]
        if len(self._layers) != self.n_layers:
            raise InvalidInput(f"config says {self.n_layers} layers but the model has {len(self._layers)}")
        self._final_ln = get_path(model, self.final_ln_path)

    # ----- sizes -----------------------------------------------------------------------------------
    @abstractmethod
    def _parallel(self, cfg) -> bool:
        """Whether attention and MLP read the same residual (parallel blocks)."""

    @property
    def device(self) -> torch.device:
        return self._final_ln.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._layers[0]["ln1"].weight.dtype

    # ----- weights ---------------------------------------------------------------------------------
    @staticmethod
    def _ln(ln: nn.Module) -> tuple[Tensor, Tensor, float]:
        w = ln.weight
        b = ln.bias if ln.bias is not None else torch.zeros_like(w)
        return w, b, float(ln.eps)

    def ln1(self, layer: int) -> tuple[Tensor, Tensor, float]:
        """(weight [d], bias [d], eps) of the attention LayerNorm."""
        return self._ln(self._layers[layer]["ln1"])

    def ln2(self, layer: int) -> tuple[Tensor, Tensor, float]:
        return self._ln(self._layers[layer]["ln2"])

    def ln_final(self) -> tuple[Tensor, Tensor, float]:
        return self._ln(self._final_ln)

    @abstractmethod
    def qkv_params(self, layer: int) -> tuple[Tensor, Tensor]:
        """W [3, H, dh, d] and b [3, H, dh]: head h's t-projection is ``LN(x) @ W[t, h].T + b[t, h]``."""

    @abstractmethod
    def o_weight(self, layer: int) -> Tensor:
        """W_O [d, H, dh]: head h writes ``z_h @ W_O[:, h].T`` into the residual stream."""

    # ----- activation layout -----------------------------------------------------------------------
    @abstractmethod
    def split_qkv(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fused projection output [B, P, 3d] -> (q, k, v) views [B, P, H, dh]."""

    @abstractmethod
    def merge_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Inverse of :meth:`split_qkv` (a new tensor)."""

    def embed_weight(self) -> Tensor:
        """W_E [V, d]."""
        return unwrap(self.model).get_input_embeddings().weight

    def unembed_weight(self) -> Tensor:
        """W_U [V, d] (logits = final residual after the final LayerNorm @ W_U.T)."""
        return unwrap(self.model).get_output_embeddings().weight

    def mlp(self, layer: int) -> nn.Module:
        """Layer ``layer``'s MLP module (input: the normalised residual, output: its residual write)."""
        return self._layers[layer]["mlp"]

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict) -> tuple[Tensor, Tensor]:
        """Queries and keys [B, P, H, dh] as the attention scores see them (positional rotation applied);
        ``attn_kwargs`` are the keyword arguments the attention module was called with."""
        return q, k

    def attn_scale(self, layer: int) -> float:
        """The factor on q . k before the softmax."""
        return self.d_head ** -0.5


class GPTNeoXAdapter(ArchAdapter):
    """``GPTNeoXForCausalLM``: fused qkv output viewed as [B, P, H, 3, dh] (interleaved per head)."""

    name = "gpt_neox"
    layers_path = "gpt_neox.layers"
    ln1_path = "input_layernorm"
    qkv_path = "attention.query_key_value"
    o_path = "attention.dense"
    ln2_path = "post_attention_layernorm"
    mlp_path = "mlp"
    final_ln_path = "gpt_neox.final_layer_norm"
    attn_path = "attention"

    def _parallel(self, cfg) -> bool:
        return bool(cfg.use_parallel_residual)

    def qkv_params(self, layer: int) -> tuple[Tensor, Tensor]:
        lin = self._layers[layer]["qkv"]
        H, dh, d = self.n_heads, self.d_head, self.d_model
        W = lin.weight.view(H, 3, dh, d).transpose(0, 1)
        b = lin.bias.view(H, 3, dh).transpose(0, 1) if lin.bias is not None else W.new_zeros(3, H, dh)
        return W, b

    def o_weight(self, layer: int) -> Tensor:
        return self._layers[layer]["o"].weight.view(self.d_model, self.n_heads, self.d_head)

    def split_qkv(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return out.view(*out.shape[:-1], self.n_heads, 3, self.d_head).unbind(-2)

    def merge_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.stack((q, k, v), dim=-2).flatten(-3)

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict) -> tuple[Tensor, Tensor]:
        """Rotary embedding on the first ``rotary_dim`` channels of each head (cos/sin [B, P, rotary_dim])."""
        cos, sin = attn_kwargs["position_embeddings"]
        cos, sin = cos.unsqueeze(2).to(q.dtype), sin.unsqueeze(2).to(q.dtype)
        r = cos.shape[-1]

        def rotate(x: Tensor) -> Tensor:
            x_rot, x_pass = x[..., :r], x[..., r:]
            half = torch.cat((-x_rot[..., r // 2:], x_rot[..., : r // 2]), dim=-1)
            return torch.cat((x_rot * cos + half * sin, x_pass), dim=-1)

        return rotate(q), rotate(k)


class GPT2Adapter(ArchAdapter):
    """``GPT2LMHeadModel``: Conv1D weights [in, out]; fused c_attn output viewed as [B, P, 3, H, dh]."""

    name = "gpt2"
    layers_path = "transformer.h"
    ln1_path = "ln_1"
    qkv_path = "attn.c_attn"
    o_path = "attn.c_proj"
    ln2_path = "ln_2"
    mlp_path = "mlp"
    final_ln_path = "transformer.ln_f"
    attn_path = "attn"

    def _parallel(self, cfg) -> bool:
        return False

    def qkv_params(self, layer: int) -> tuple[Tensor, Tensor]:
        conv = self._layers[layer]["qkv"]
        H, dh, d = self.n_heads, self.d_head, self.d_model
        W = conv.weight.t().view(3, H, dh, d)
        return W, conv.bias.view(3, H, dh)

    def o_weight(self, layer: int) -> Tensor:
        return self._layers[layer]["o"].weight.t().view(self.d_model, self.n_heads, self.d_head)

    def split_qkv(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return out.view(*out.shape[:-1], 3, self.n_heads, self.d_head).unbind(-3)

    def merge_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return torch.stack((q, k, v), dim=-3).flatten(-3)

    def attn_scale(self, layer: int) -> float:
        cfg = self.model.config
        scale = self.d_head ** -0.5 if cfg.scale_attn_weights else 1.0
        return scale / (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale


ADAPTERS: dict[str, type[ArchAdapter]] = {
    "GPTNeoXForCausalLM": GPTNeoXAdapter,
    "GPT2LMHeadModel": GPT2Adapter,
}


def get_arch(model: nn.Module) -> ArchAdapter:
    """The adapter for a Hugging Face causal LM; a clear error for unsupported classes."""
    cls = type(unwrap(model)).__name__
    if cls not in ADAPTERS:
        raise InvalidInput(f"unsupported model class {cls!r}; supported: {sorted(ADAPTERS)} "
                         "(add an adapter in circuittrack/backends/arch.py)")
    return ADAPTERS[cls](model)
