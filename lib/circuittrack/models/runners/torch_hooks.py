"""Runner on plain PyTorch module hooks: no interpretability library in between (the fastest path)."""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor, nn

from circuittrack.errors import InvalidInput
from circuittrack.models.arch import get_arch, get_path, is_wrapped_by_transformer_lens
from circuittrack.models.hooks import Hooks, intervene_input, intervene_qkv, mlp_in_callbacks
from circuittrack.models.runners.runner import Prefix, Runner
from circuittrack.models.unembed import rows_at, rows_hook, unembedding


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
        self._unembed = unembedding(model, required=True)

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
            if positions is not None:  # logits at those rows only (circuittrack.models.unembed)
                pre(self._unembed, rows_hook(positions))
            kw = {} if prefix is None else {"past_key_values": prefix.cache(input_ids.shape[0])}
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


class _SwappedForward:
    """For one pass, a module's ``forward`` replaced by ``self.forward(run, ...)`` (``run``: the one it had);
    removed like a hook handle, which puts the module's own ``forward`` back (or none, if it had none)."""

    _CLASS_FORWARD = object()

    def __init__(self, module: nn.Module):
        self.module, self.saved = module, module.__dict__.get("forward", self._CLASS_FORWARD)
        module.forward = partial(self.forward, module.forward)

    def forward(self, run, *args, **kwargs):
        raise NotImplementedError

    def remove(self) -> None:
        if self.saved is self._CLASS_FORWARD:
            del self.module.forward
        else:
            self.module.forward = self.saved


class _AnswerRowsOnly(_SwappedForward):
    """For one pass whose logits are read at one position per row: a last-layer module (the MLP, attention's output
    projection) whose outputs elsewhere reach no logit that is computed runs on those rows only, and writes zeros
    at the other positions."""

    def __init__(self, module: nn.Module, positions: Tensor):
        self.pos = positions.reshape(-1)
        self.rows = torch.arange(len(self.pos), device=positions.device)
        super().__init__(module)

    def forward(self, run, x: Tensor, *args, **kwargs):
        y = run(rows_at(x, self.pos), *args, **kwargs)
        out = y.new_zeros(*x.shape[:2], *y.shape[2:])
        out[self.rows.to(x.device), self.pos.to(x.device)] = y[:, 0]
        return out


class _KnownOutput(_SwappedForward):
    """For one pass, a module whose output the caller may already know (``fn()`` gives it, or None): then the
    module is not run, its hooks still are."""

    def __init__(self, module: nn.Module, fn):
        self.fn = fn
        super().__init__(module)

    def forward(self, run, *args, **kwargs):
        value = self.fn()
        return run(*args, **kwargs) if value is None else value
