"""Runner on plain PyTorch module hooks: no interpretability library in between (the fastest path)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from circuittrack.errors import InvalidInput
from circuittrack.models.arch import get_arch, get_path, is_wrapped_by_transformer_lens
from circuittrack.models.hooks import Hooks, intervene_input, intervene_qkv, mlp_in_callbacks
from circuittrack.models.runners.runner import Prefix, Runner


class TorchRunner(Runner):
    """Forward/pre-forward hooks registered on the HF modules for one pass and removed afterwards."""

    backend = "torch"
    supports_prefix = True
    skips_known = True

    def __init__(self, model: nn.Module):
        if is_wrapped_by_transformer_lens(model):
            raise InvalidInput("this model was wrapped in place by a TransformerLens bridge; build the torch/nnsight "
                             "runner on an unwrapped copy (copy.deepcopy before wrap_transformer_lens)")
        super().__init__(get_arch(model), model)
        a = self.arch
        self._layers = list(get_path(model, a.layers_path))
        self._final_ln = get_path(model, a.final_ln_path)

    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None,
                prefix: Prefix | None = None) -> Tensor:
        h = hooks or Hooks()
        a = self.arch
        handles = []

        def pre(module, fn):
            handles.append(module.register_forward_pre_hook(fn))

        def post(module, fn):
            handles.append(module.register_forward_hook(fn))

        def known(module, fn):
            handles.append(_KnownOutput(module, fn))

        def first_arg(args, new):
            return None if new is None else (new, *args[1:])

        try:
            if positions is not None and input_ids.shape[1] > 1:
                last = self._layers[-1]
                for path in (a.o_path, a.mlp_path):
                    handles.append(_AnswerRowsOnly(get_path(last, path), positions))
            if h.resid0 is not None:
                pre(self._layers[0], lambda m, args: first_arg(args, h.resid0(args[0])))
            for l, layer in enumerate(self._layers):
                if h.attn_in is not None:
                    pre(get_path(layer, a.site("attn_in")), partial(self._attn_in, h, l))
                if h.qkv is not None or h.qkv_grad is not None:
                    for path, ts in a.projection_sites():
                        post(get_path(layer, path), partial(self._qkv, h, l, ts))
                if h.qkv_known is not None:
                    for path, ts in a.projection_sites():
                        known(get_path(layer, path), partial(h.qkv_known, l, ts))
                if h.attn_known is not None:
                    known(get_path(layer, a.attn_path), partial(self._attn_known, h, l))
                if h.z is not None:
                    pre(get_path(layer, a.o_path), partial(self._z, h, l))
                if h.attn_out is not None:
                    post(get_path(layer, a.site("attn_out")), lambda m, args, out, l=l: h.attn_out(l, out))
                if h.mlp_in is not None or h.mlp_in_grad is not None:
                    pre(get_path(layer, a.site("mlp_in")), partial(self._mlp_in, h, l))
                if h.mlp_out is not None:
                    post(get_path(layer, a.site("mlp_out")), lambda m, args, out, l=l: h.mlp_out(l, out))
                if h.mlp_known is not None:
                    known(get_path(layer, a.site("mlp_out")), partial(h.mlp_known, l))
            if h.final_in is not None or h.final_in_grad is not None:
                pre(self._final_ln, partial(self._final_in, h))
            kw = {} if positions is None else {"logits_to_keep": positions.view(-1, 1)}
            if prefix is not None:
                kw["past_key_values"] = prefix.cache(input_ids.shape[0])
            logits = self.module(input_ids=input_ids, use_cache=False, **kw).logits
        finally:
            for hd in reversed(handles):
                hd.remove()
        return logits if positions is None else logits[:, 0]

    @staticmethod
    def _attn_known(h: Hooks, l: int):
        value = h.attn_known(l)
        return None if value is None else (value, None)  # (output, attention weights), as the module returns

    @staticmethod
    def _attn_in(h: Hooks, l: int, module, args):
        h.attn_in(l, args[0])

    def _qkv(self, h: Hooks, l: int, ts: tuple[int, ...], module, args, out: Tensor):
        return intervene_qkv(self.arch, h, l, out, ts)

    def _z(self, h: Hooks, l: int, module, args):
        x = args[0]
        new = h.z(l, x.view(*x.shape[:-1], self.arch.n_heads, self.arch.d_head))
        return None if new is None else (new.flatten(-2), *args[1:])

    @staticmethod
    def _mlp_in(h: Hooks, l: int, module, args):
        x = args[0]
        y = intervene_input(x, *mlp_in_callbacks(h, l))
        return None if y is x else (y, *args[1:])

    @staticmethod
    def _final_in(h: Hooks, module, args):
        x = args[0]
        y = intervene_input(x, h.final_in, h.final_in_grad)
        return None if y is x else (y, *args[1:])


class _AnswerRowsOnly:
    """For one pass whose logits are read at one position per row: a last-layer module (the MLP, attention's output
    projection) whose outputs elsewhere reach no logit that is computed runs on those rows only, and writes zeros
    at the other positions. Removed like a hook handle (the module's own ``forward`` restored)."""

    def __init__(self, module: nn.Module, positions: Tensor):
        self.module, self.saved = module, module.__dict__.get("forward", _CLASS_FORWARD)
        run = module.forward

        def forward(x: Tensor, *args, **kwargs):
            rows = torch.arange(x.shape[0], device=x.device)
            pos = positions.reshape(-1).to(x.device)
            y = run(x[rows, pos].unsqueeze(1), *args, **kwargs)
            out = y.new_zeros(*x.shape[:2], *y.shape[2:])
            out[rows, pos] = y[:, 0]
            return out

        module.forward = forward

    def remove(self) -> None:
        _restore(self.module, self.saved)


class _KnownOutput:
    """For one pass, a module whose output the caller may already know (``fn()`` gives it, or None): then the
    module is not run, its hooks still are. Removed like a hook handle (the module's own ``forward`` restored)."""

    def __init__(self, module: nn.Module, fn):
        self.module, self.saved = module, module.__dict__.get("forward", _CLASS_FORWARD)
        run = module.forward

        def forward(*args, **kwargs):
            value = fn()
            return run(*args, **kwargs) if value is None else value

        module.forward = forward

    def remove(self) -> None:
        _restore(self.module, self.saved)


_CLASS_FORWARD = object()  # a module without a ``forward`` of its own (its class's is used)


def _restore(module: nn.Module, saved) -> None:
    """Put back a module's own ``forward``, or none (``saved`` is ``_CLASS_FORWARD``)."""
    if saved is _CLASS_FORWARD:
        del module.forward
    else:
        module.forward = saved
