"""Runner on TransformerLens 4.3's ``TransformerBridge`` (``HookedTransformer`` no longer exists in 4.x).

The bridge wraps the HF model *in place* (it inserts hook wrappers into the HF module tree) and re-implements
attention from split q/k/v projections; without compatibility mode (which we never enable) its logits equal
the HF model's. Hook names are architecture-independent:

``blocks.0.hook_in`` (resid0), ``blocks.{l}.ln1.hook_in``, ``blocks.{l}.attn.{q,k,v}.hook_out`` ([B,P,H,dh]),
``blocks.{l}.attn.o.hook_in`` (z, [B,P,H,dh]), ``blocks.{l}.ln2.hook_in``, ``blocks.{l}.mlp.hook_out``,
``ln_final.hook_in``.

Gradients: hooks whose value the bridge converts (q/k/v, z) do not support ``retain_grad``; we register a
tensor hook on the value the hook *returns* (which the bridge reverts with a view and uses downstream).
"""

from __future__ import annotations

import copy
import tempfile
import weakref
from functools import partial

from torch import Tensor, nn

from circuittrack.errors import InvalidInput
from circuittrack.models.arch import get_arch
from circuittrack.models.hooks import QKV_NAMES, Hooks, attach_grad, intervene_input, mlp_in_callbacks
from circuittrack.models.runners.runner import Prefix, Runner
from circuittrack.models.unembed import logits_at

_BRIDGE_KEY = "_circuittrack_tl_bridge"


def _placeholder_tokenizer():
    """A one-token offline tokenizer for bridges over models used with token ids only."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


_TOKENIZER_DIRS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> TemporaryDirectory


def _reloadable(tokenizer):
    """TL re-loads tokenizers that have a BOS token from ``name_or_path``; an in-memory one is saved once to a
    temporary directory (removed when the tokenizer is collected or the process exits) and loaded from there."""
    if tokenizer.bos_token is None or tokenizer.init_kwargs.get("name_or_path"):
        return tokenizer
    from transformers import AutoTokenizer

    saved = _TOKENIZER_DIRS.get(tokenizer)
    if saved is None:
        saved = tempfile.TemporaryDirectory(prefix="circuittrack-tokenizer-")
        tokenizer.save_pretrained(saved.name)
        _TOKENIZER_DIRS[tokenizer] = saved
    return AutoTokenizer.from_pretrained(saved.name)


def wrap_transformer_lens(hf_model: nn.Module, tokenizer=None):
    """A ``TransformerBridge`` over ``hf_model`` (offline; no weight processing, logits identical to HF).

    The bridge modifies ``hf_model``'s module tree in place (and switches it to eager attention); wrapping the
    same model twice returns the first bridge. Use ``copy.deepcopy`` first if the unwrapped HF model is
    still needed (e.g. for the nnsight backend).
    """
    if _BRIDGE_KEY in hf_model.__dict__:
        return hf_model.__dict__[_BRIDGE_KEY]
    from transformer_lens.model_bridge import TransformerBridge

    _check_supported(get_arch(hf_model))  # clear error for unsupported classes before booting
    tok = _placeholder_tokenizer() if tokenizer is None else _reloadable(tokenizer)
    device = next(hf_model.parameters()).device
    bridge = TransformerBridge.boot_transformers(
        getattr(hf_model.config, "_name_or_path", None) or "local/model", hf_model=hf_model, tokenizer=tok,
        device=device, dtype=next(hf_model.parameters()).dtype)
    hf_model.__dict__[_BRIDGE_KEY] = bridge  # plain attribute (not a registered submodule)
    return bridge


#: Architectures whose TransformerLens hook layout the runner knows (one fused q/k/v per head, pre-LayerNorm).
TL_ARCHITECTURES = ("gpt_neox", "gpt2")


def _check_supported(arch) -> None:
    if arch.name not in TL_ARCHITECTURES:
        raise InvalidInput(f"the transformer_lens backend runs {list(TL_ARCHITECTURES)} models, not {arch.name!r}; "
                           "use backend='torch' (or 'nnsight')")


class TransformerLensRunner(Runner):
    """Forward hooks on the bridge's HookPoints, added for one pass with ``bridge.hooks``."""

    backend = "transformer_lens"

    def __init__(self, model, copy_model: bool = True):
        from transformer_lens.model_bridge import TransformerBridge

        if isinstance(model, TransformerBridge):
            hf = model.original_model
            _check_supported(get_arch(hf))
            super().__init__(get_arch(hf), model)
            self.bridge = model
        elif isinstance(model, nn.Module):
            # The bridge rewires the modules it wraps: it gets a private copy, the caller's model stays as it is.
            _check_supported(get_arch(model))
            hf = copy.deepcopy(model) if copy_model else model
            arch = get_arch(hf)  # capture the original modules before the bridge wraps them
            self.bridge = wrap_transformer_lens(hf)
            super().__init__(arch, self.bridge)
        else:
            raise TypeError(f"TransformerLensRunner needs a HF model or a TransformerBridge, got {type(model)}")
        self._hf = hf  # its unembedding reads the answer rows only (circuittrack.models.unembed)

    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None,
                prefix: Prefix | None = None) -> Tensor:
        if prefix is not None:
            raise NotImplementedError("the transformer_lens runner does not reuse prefixes (supports_prefix)")
        h = hooks or Hooks()
        fwd = []
        if h.attn_out is not None:
            raise InvalidInput("the transformer_lens backend has no attn_out site (it is for post-norm models, which "
                               "it does not run); use backend='torch'")
        if h.resid0 is not None:
            fwd.append(("blocks.0.hook_in", lambda x, hook: h.resid0(x)))
        for l in range(self.arch.n_layers):
            b = f"blocks.{l}"
            if h.attn_in is not None:
                fwd.append((f"{b}.ln1.hook_in", partial(_read, h.attn_in, l)))
            if h.qkv is not None or h.qkv_grad is not None:
                for t, name in enumerate(QKV_NAMES):
                    fwd.append((f"{b}.attn.{name}.hook_out", partial(_qkv, h, l, t)))
            if h.z is not None:
                fwd.append((f"{b}.attn.o.hook_in", partial(_call, h.z, l)))
            if h.mlp_in is not None or h.mlp_in_grad is not None:
                fwd.append((f"{b}.ln2.hook_in", partial(_mlp_in, h, l)))
            if h.mlp_out is not None:
                fwd.append((f"{b}.mlp.hook_out", partial(_call, h.mlp_out, l)))
        if h.final_in is not None or h.final_in_grad is not None:
            fwd.append(("ln_final.hook_in", partial(_final_in, h)))
        with logits_at(self._hf, positions), self.bridge.hooks(fwd_hooks=fwd):
            logits = self.bridge(input_ids)
        return logits if positions is None else logits[:, 0]


def _read(fn, l: int, x: Tensor, hook) -> None:
    fn(l, x)


def _call(fn, l: int, x: Tensor, hook) -> Tensor | None:
    return fn(l, x)


def _qkv(h: Hooks, l: int, t: int, x: Tensor, hook) -> Tensor | None:
    new = h.qkv(l, t, x) if h.qkv is not None else None
    if h.qkv_grad is None:
        return new
    y = x if new is None else new
    return attach_grad(y, lambda g: h.qkv_grad(l, t, g))


def _mlp_in(h: Hooks, l: int, x: Tensor, hook) -> Tensor | None:
    y = intervene_input(x, *mlp_in_callbacks(h, l))
    return None if y is x else y


def _final_in(h: Hooks, x: Tensor, hook) -> Tensor | None:
    y = intervene_input(x, h.final_in, h.final_in_grad)
    return None if y is x else y
