"""Architecture knowledge, one small adapter per Hugging Face model class.

An adapter says where the abstract sites of :mod:`circuittrack.backends.base` live in the HF module tree
(for the nnsight and plain-hook runners) and how the attention weights are laid out (for the kernels, which
need per-head W_Q/W_K/W_V, W_O and the LayerNorm parameters). Everything else (TransformerLens hook names)
is architecture-independent because the TransformerLens bridge normalises it.

Supported:

* ``GPTNeoXForCausalLM`` (Pythia and the toy suite; parallel or sequential blocks; fused ``query_key_value``
  with per-head interleaved [H, 3, dh] output layout, LayerNorm);
* ``GPT2LMHeadModel`` (sequential blocks; fused ``c_attn`` Conv1D with [3, H, dh] output layout, LayerNorm);
* ``LlamaForCausalLM`` (Llama, SmolLM2, LLM360 Amber, the FineWeb ablation models) and ``Qwen2ForCausalLM`` /
  ``Qwen3ForCausalLM``: separate q/k/v projections (Qwen2 with biases), grouped-query attention (``G`` key/value
  heads, query head h reads key/value head ``h // (H / G)``), RMSNorm, gated MLP; Qwen3 normalises each head's
  q and k (RMSNorm over dh) after the projection;
* ``Olmo2ForCausalLM``: no norm before attention or MLP; RMSNorm on the whole q and k projections (all heads
  together) and on the attention and MLP outputs before they enter the residual stream.

The projection *sites* (``qkv(l, t)`` of :mod:`circuittrack.models.hooks`) are the linear projection outputs,
before any q/k norm; a q/k norm is part of the head downstream of its input (for OLMo-2, whose norm spans all
heads, the heads of a layer share its scale, as in the model). With post-norms (OLMo-2) head h's residual write
is its share ``w * (z_h W_O[:, h]^T) / rms(attention output)`` of the normalised attention output: the shares
sum exactly to what the layer writes, so the residual stream stays the sum of its sources in every run.
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
    o_path: str
    ln2_path: str
    mlp_path: str
    final_ln_path: str
    attn_path: str  # the attention module (its forward keyword arguments carry the rotary cos/sin, if any)
    qkv_path: str | None = None  # a fused q/k/v projection, or
    proj_paths: tuple[str, str, str] | None = None  # separate q, k and v projections
    norm: str = "layernorm"  # the norm before attention and MLP: "layernorm", "rmsnorm" or "none"
    attn_in_path: str | None = None  # module whose first argument is attention's residual input (default ln1)
    mlp_in_path: str | None = None  # ... the MLP branch's residual input (default ln2)
    mlp_out_path: str | None = None  # module whose output is the MLP's residual write (default the MLP)
    attn_out_path: str | None = None  # module whose output is attention's residual write (default W_O's)
    post_norm: bool = False  # attention and MLP outputs are normalised before they enter the residual (OLMo-2)

    def __init__(self, model: nn.Module):
        self.model = model
        cfg = model.config
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.d_model = int(cfg.hidden_size)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise InvalidInput(f"num_attention_heads {self.n_heads} is not a multiple of num_key_value_heads "
                               f"{self.n_kv_heads}")
        head_dim = getattr(cfg, "head_dim", None)
        if head_dim is None and self.d_model % self.n_heads:
            raise InvalidInput(f"hidden_size {self.d_model} is not a multiple of num_attention_heads {self.n_heads}")
        self.d_head = int(head_dim or self.d_model // self.n_heads)
        self.parallel = self._parallel(cfg)
        layers = get_path(model, self.layers_path)
        paths = {"ln1": self.ln1_path, "o": self.o_path, "ln2": self.ln2_path, "mlp": self.mlp_path}
        if self.qkv_path is not None:
            paths["qkv"] = self.qkv_path
        else:
            paths.update(zip(("q", "k", "v"), self.proj_paths))
        paths.update({k: p for k, p in self._extra_paths().items()})
        # Capture the original modules now: a TransformerLens bridge may wrap them later.
        self._layers = [{k: get_path(unwrap(layer), p) if p else None for k, p in paths.items()} for layer in layers]
        if len(self._layers) != self.n_layers:
            raise InvalidInput(f"config says {self.n_layers} layers but the model has {len(self._layers)}")
        self._final_ln = get_path(model, self.final_ln_path)

    # ----- sizes -----------------------------------------------------------------------------------
    def _parallel(self, cfg) -> bool:
        """Whether attention and MLP read the same residual (parallel blocks; GPT-NeoX may, the others do not)."""
        return False

    def _extra_paths(self) -> dict[str, str]:
        """More per-layer modules an adapter needs (name -> dotted path)."""
        return {}

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.n_kv_heads < self.n_heads

    def heads(self, t: int) -> int:
        """Number of heads of projection t (0 q, 1 k, 2 v): H for queries, G for keys and values."""
        return self.n_heads if t == 0 else self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads (HF's ``repeat_kv`` order)."""
        return head // (self.n_heads // self.n_kv_heads)

    # ----- sites -------------------------------------------------------------------------------------
    def projection_sites(self) -> list[tuple[str, tuple[int, ...]]]:
        """(module path in a layer, projections t it outputs): one fused q/k/v module or three."""
        if self.qkv_path is not None:
            return [(self.qkv_path, (0, 1, 2))]
        return [(p, (t,)) for t, p in enumerate(self.proj_paths)]

    def split_projection(self, out: Tensor, ts: tuple[int, ...]) -> tuple[Tensor, ...]:
        """A projection module's output [B, P, *] -> per t in ``ts`` a view [B, P, H_t, dh]."""
        if len(ts) == 3:
            return self.split_qkv(out)
        return (out.view(*out.shape[:-1], self.heads(ts[0]), self.d_head),)

    def merge_projection(self, parts, ts: tuple[int, ...]) -> Tensor:
        """Inverse of :meth:`split_projection` (a new tensor)."""
        if len(ts) == 3:
            return self.merge_qkv(*parts)
        return parts[0].flatten(-2)

    def site(self, kind: str) -> str:
        """Path in a layer of the module at a site: ``attn_in`` (its first argument is attention's residual input),
        ``mlp_in`` (the MLP branch's), ``mlp_out`` / ``attn_out`` (its output is that residual write)."""
        own, default = {"attn_in": (self.attn_in_path, self.ln1_path), "mlp_in": (self.mlp_in_path, self.ln2_path),
                        "mlp_out": (self.mlp_out_path, self.mlp_path), "attn_out": (self.attn_out_path, self.o_path)}[kind]
        return own or default

    @property
    def device(self) -> torch.device:
        return self._final_ln.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self._final_ln.weight.dtype

    # ----- weights ---------------------------------------------------------------------------------
    @staticmethod
    def _ln(ln: nn.Module | None, like: Tensor | None = None) -> tuple[Tensor, Tensor, float]:
        if ln is None:  # no norm: the identity, as weight 1, bias 0
            return torch.ones_like(like), torch.zeros_like(like), 0.0
        w = ln.weight
        b = getattr(ln, "bias", None)
        b = b if b is not None else torch.zeros_like(w)
        return w, b, float(getattr(ln, "eps", None) or getattr(ln, "variance_epsilon"))

    def ln1(self, layer: int) -> tuple[Tensor, Tensor, float]:
        """(weight [d], bias [d], eps) of the attention input's norm (kind :attr:`norm`; bias 0 for RMSNorm;
        weight 1, bias 0 where there is none)."""
        return self._ln(self._layers[layer]["ln1"], self._final_ln.weight)

    def ln2(self, layer: int) -> tuple[Tensor, Tensor, float]:
        return self._ln(self._layers[layer]["ln2"], self._final_ln.weight)

    def ln_final(self) -> tuple[Tensor, Tensor, float]:
        return self._ln(self._final_ln)

    @property
    def final_norm(self) -> str:
        """Kind of the final norm: "layernorm" or "rmsnorm"."""
        return "layernorm" if self.norm == "layernorm" else "rmsnorm"

    def norm_spread(self, x: Tensor, kind: str | None = None) -> Tensor:
        """[...]: what a norm of ``kind`` (default :attr:`norm`) divides ``x`` [..., d] by, squared and before eps:
        the variance (LayerNorm) or the mean square (RMSNorm), in float32."""
        x = x.float()
        return x.var(-1, unbiased=False) if (kind or self.norm) == "layernorm" else x.pow(2).mean(-1)

    def normalize(self, x: Tensor, params: tuple[Tensor, Tensor, float], kind: str | None = None) -> Tensor:
        """``x`` [..., d] through a norm with ``params`` (weight, bias, eps) of ``kind`` (default :attr:`norm`),
        in float32."""
        w, b, eps = params
        kind = kind or self.norm
        x = x.float()
        if kind == "layernorm":
            return torch.nn.functional.layer_norm(x, x.shape[-1:], w.float(), b.float(), eps)
        if kind == "rmsnorm":
            return x * torch.rsqrt(self.norm_spread(x, kind)[..., None] + eps) * w.float()
        return x

    def qkv_params(self, layer: int) -> tuple[Tensor, Tensor]:
        """W [3, H, dh, d] and b [3, H, dh] of a fused projection (ungrouped architectures only)."""
        if self.grouped:
            raise InvalidInput(f"{self.name} has grouped key/value heads; use proj_params(layer, t)")
        Ws, bs = zip(*(self.proj_params(layer, t) for t in range(3)))
        return torch.stack(Ws), torch.stack(bs)

    def proj_params(self, layer: int, t: int) -> tuple[Tensor, Tensor]:
        """W [H_t, dh, d] and b [H_t, dh] of projection t (0 q, 1 k, 2 v): head h's t-input is
        ``norm(x) @ W[h].T + b[h]`` (H_t = :meth:`heads`)."""
        W, b = self.qkv_params(layer)
        return W[t], b[t]

    def project(self, layer: int, t: int, y: Tensor, heads: Tensor) -> Tensor:
        """Projection t of normalised inputs ``y`` [N, J, ..., d] (one input per listed head, float32) for the
        ``heads`` [J] (indices into the H_t heads of t): [N, ..., J, dh] float32. One matrix product per head on its
        contiguous block (an einsum over the J axis copied the whole input first: 1.6x slower on toy-l)."""
        W, b = self.proj_params(layer, t)
        W, b = W.float().index_select(0, heads), b.float().index_select(0, heads)
        out = torch.empty(y.shape[0], *y.shape[2:-1], len(heads), W.shape[1], dtype=torch.float32, device=y.device)
        for j in range(len(heads)):
            out[..., j, :] = y[:, j] @ W[j].T
        return out.add_(b)

    @abstractmethod
    def o_weight(self, layer: int) -> Tensor:
        """W_O [d, H, dh]: head h writes ``z_h @ W_O[:, h].T`` into the residual stream (before any post-norm)."""

    def head_writes(self, layer: int, z: Tensor, heads: list[int] | None = None) -> Tensor:
        """Per-head residual writes [B, P, H', d] (float32) from z [B, P, H, dh], for ``heads`` (default all)."""
        w = self.o_weight(layer).float()
        if heads is not None:
            idx = torch.tensor(heads, device=z.device)
            z, w = z.index_select(2, idx), w.index_select(1, idx)
        return torch.einsum("bphe,dhe->bphd", z.float(), w)

    def head_writes_alone(self, layer: int, z: Tensor) -> Tensor:
        """[B, P, H, d]: what each head would write if it were the only one (a post-norm scales it by its own
        rms): a head's OV circuit, for the head scores. Without a post-norm this is :meth:`head_writes`."""
        return self.head_writes(layer, z)

    # ----- activation layout -----------------------------------------------------------------------
    def split_qkv(self, out: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fused projection output [B, P, 3d] -> (q, k, v) views [B, P, H, dh]."""
        raise NotImplementedError(f"{self.name} has no fused q/k/v projection")

    def merge_qkv(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Inverse of :meth:`split_qkv` (a new tensor)."""
        raise NotImplementedError(f"{self.name} has no fused q/k/v projection")

    def embed_weight(self) -> Tensor:
        """W_E [V, d]."""
        return unwrap(self.model).get_input_embeddings().weight

    def unembed_weight(self) -> Tensor:
        """W_U [V, d] (logits = final residual after the final LayerNorm @ W_U.T)."""
        return unwrap(self.model).get_output_embeddings().weight

    def mlp(self, layer: int) -> nn.Module:
        """Layer ``layer``'s MLP module (input: the normalised residual, output: its residual write)."""
        return self._layers[layer]["mlp"]

    def mlp_write(self, layer: int, x: Tensor) -> Tensor:
        """What MLP ``layer`` writes into the residual stream for input ``x`` (its output, after a post-norm)."""
        out = self.mlp(layer)(x)
        post = self._layers[layer].get("post_mlp")
        return post(out) if post is not None else out

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict, layer: int = 0) -> tuple[Tensor, Tensor]:
        """Queries [B, P, H, dh] and keys [B, P, H_k, dh] (projection outputs) as the attention scores see them
        (q/k norms and positional rotation applied); ``attn_kwargs`` are the keyword arguments the attention
        module was called with."""
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

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict, layer: int = 0) -> tuple[Tensor, Tensor]:
        """Rotary embedding on the first ``rotary_dim`` channels of each head (cos/sin [B, P, rotary_dim])."""
        return rotary(q, k, attn_kwargs)


def rotary(q: Tensor, k: Tensor, attn_kwargs: dict) -> tuple[Tensor, Tensor]:
    """HF's ``apply_rotary_pos_emb`` in the [B, P, H, dh] layout, on the first cos.shape[-1] channels."""
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


class LlamaAdapter(ArchAdapter):
    """``LlamaForCausalLM``: pre-norm RMSNorm, separate q/k/v projections (grouped-query attention), rotary on
    the whole head, gated SiLU MLP, no biases (``attention_bias`` adds q/k/v/o biases)."""

    name = "llama"
    layers_path = "model.layers"
    ln1_path = "input_layernorm"
    proj_paths = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
    o_path = "self_attn.o_proj"
    ln2_path = "post_attention_layernorm"
    mlp_path = "mlp"
    final_ln_path = "model.norm"
    attn_path = "self_attn"
    norm = "rmsnorm"

    def proj_params(self, layer: int, t: int) -> tuple[Tensor, Tensor]:
        lin = self._layers[layer]["qkv"[t]]
        W = lin.weight.view(self.heads(t), self.d_head, self.d_model)
        b = lin.bias.view(self.heads(t), self.d_head) if lin.bias is not None else W.new_zeros(W.shape[:2])
        return W, b

    def o_weight(self, layer: int) -> Tensor:
        return self._layers[layer]["o"].weight.view(self.d_model, self.n_heads, self.d_head)

    def attn_scale(self, layer: int) -> float:
        return float(getattr(self._layers[layer]["attn"], "scaling", self.d_head ** -0.5))

    def _extra_paths(self) -> dict[str, str]:
        return {"attn": self.attn_path}

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict, layer: int = 0) -> tuple[Tensor, Tensor]:
        return rotary(q, k, attn_kwargs)


class Qwen2Adapter(LlamaAdapter):
    """``Qwen2ForCausalLM``: Llama's layout with q/k/v biases."""

    name = "qwen2"


class Qwen3Adapter(LlamaAdapter):
    """``Qwen3ForCausalLM``: Llama's layout; each head's q and k RMS-normalised over dh before the rotary."""

    name = "qwen3"

    def _extra_paths(self) -> dict[str, str]:
        return {"attn": self.attn_path, "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict, layer: int = 0) -> tuple[Tensor, Tensor]:
        mods = self._layers[layer]
        q = self.normalize(q, self._ln(mods["q_norm"]), "rmsnorm").to(q.dtype)
        k = self.normalize(k, self._ln(mods["k_norm"]), "rmsnorm").to(k.dtype)
        return rotary(q, k, attn_kwargs)


class Olmo2Adapter(LlamaAdapter):
    """``Olmo2ForCausalLM``: no norm before attention or MLP; q and k RMS-normalised over the whole projection
    (all heads together); the attention and MLP outputs RMS-normalised before they enter the residual stream."""

    name = "olmo2"
    ln1_path = ""  # none: attention reads the raw residual
    ln2_path = ""
    norm = "none"
    attn_in_path = "self_attn.q_proj"  # its input is the residual
    mlp_in_path = "mlp"
    mlp_out_path = "post_feedforward_layernorm"
    attn_out_path = "post_attention_layernorm"
    post_norm = True

    def __init__(self, model: nn.Module):
        if getattr(model.config, "attention_bias", False):
            raise InvalidInput("OLMo-2 with attention biases is not supported: the output bias would pass "
                               "through the post-attention norm and not cancel between runs")
        super().__init__(model)

    def _extra_paths(self) -> dict[str, str]:
        return {"attn": self.attn_path, "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm",
                "post_attn": "post_attention_layernorm", "post_mlp": "post_feedforward_layernorm"}

    def position_qk(self, q: Tensor, k: Tensor, attn_kwargs: dict, layer: int = 0) -> tuple[Tensor, Tensor]:
        mods = self._layers[layer]
        q = self.normalize(q.flatten(-2), self._ln(mods["q_norm"]), "rmsnorm").view_as(q).to(q.dtype)
        k = self.normalize(k.flatten(-2), self._ln(mods["k_norm"]), "rmsnorm").view_as(k).to(k.dtype)
        return rotary(q, k, attn_kwargs)

    def head_writes(self, layer: int, z: Tensor, heads: list[int] | None = None) -> Tensor:
        """Each head's share of the normalised attention output: ``w * (z_h W_O[:, h]^T) * r`` with the rms factor
        r of the whole output (the shares sum to what the layer writes)."""
        w_o = self.o_weight(layer).float()
        per_head = torch.einsum("bphe,dhe->bphd", z.float(), w_o)  # [B, P, H, d]
        w, _, eps = self._ln(self._layers[layer]["post_attn"])
        r = torch.rsqrt(per_head.sum(2).pow(2).mean(-1) + eps)  # [B, P]
        if heads is not None:
            per_head = per_head[:, :, heads]
        return per_head * (r[..., None, None] * w.float())

    def head_writes_alone(self, layer: int, z: Tensor) -> Tensor:
        per_head = torch.einsum("bphe,dhe->bphd", z.float(), self.o_weight(layer).float())
        return self.normalize(per_head, self._ln(self._layers[layer]["post_attn"]), "rmsnorm")


ADAPTERS: dict[str, type[ArchAdapter]] = {
    "GPTNeoXForCausalLM": GPTNeoXAdapter,
    "GPT2LMHeadModel": GPT2Adapter,
    "LlamaForCausalLM": LlamaAdapter,
    "Qwen2ForCausalLM": Qwen2Adapter,
    "Qwen3ForCausalLM": Qwen3Adapter,
    "Olmo2ForCausalLM": Olmo2Adapter,
}


def get_arch(model: nn.Module) -> ArchAdapter:
    """The adapter for a Hugging Face causal LM; a clear error for unsupported classes."""
    cls = type(unwrap(model)).__name__
    if cls not in ADAPTERS:
        raise InvalidInput(f"unsupported model class {cls!r}; supported: {sorted(ADAPTERS)} "
                         "(add an adapter in circuittrack/models/arch.py)")
    return ADAPTERS[cls](model)
