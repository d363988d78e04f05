"""Runner on nnsight 0.8: the sites are read and assigned inside ``model.trace``, in module execution order.

Values inside a trace are real tensors, so gradient callbacks are plain ``Tensor.register_hook`` calls on
tensors that the trace puts back into the model.
"""

from __future__ import annotations

from torch import Tensor, nn

from circuittrack.errors import InvalidInput
from circuittrack.models.arch import get_arch, get_path, is_wrapped_by_transformer_lens
from circuittrack.models.hooks import Hooks, intervene_input, intervene_qkv, mlp_in_callbacks
from circuittrack.models.runners.runner import Prefix, Runner
from circuittrack.models.unembed import logits_at


def wrap_nnsight(hf_model: nn.Module, tokenizer=None):
    """The nnsight object for a HF model: ``TransformersModel`` when a tokenizer is given, else ``NNsight``.

    nnsight 0.8 permanently installs its controller on every module it wraps (``module.forward`` becomes an
    instance attribute); :meth:`LoadedModel.nnsight` and :func:`~circuittrack.models.runners.get_runner` therefore
    wrap a copy.
    """
    import nnsight

    if tokenizer is None:
        return nnsight.NNsight(hf_model)
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")


class NNsightRunner(Runner):
    """Interventions written as nnsight trace code over a plain ``nnsight.NNsight`` around the HF model."""

    backend = "nnsight"
    supports_prefix = True

    def __init__(self, model):
        import nnsight

        hf = model._module if type(model).__module__.startswith("nnsight") else model
        if not isinstance(hf, nn.Module):
            raise TypeError(f"NNsightRunner needs a HF model or an nnsight model, got {type(model).__name__}")
        if is_wrapped_by_transformer_lens(hf):
            raise InvalidInput("this model was wrapped in place by a TransformerLens bridge; build the nnsight runner "
                             "on an unwrapped copy (copy.deepcopy before wrap_transformer_lens)")
        super().__init__(get_arch(hf), hf)
        # A plain NNsight passes token ids straight to the model (no tokenizer-side padding or masks).
        self.nn = nnsight.NNsight(hf)

    def forward(self, input_ids: Tensor, hooks: Hooks | None = None, positions: Tensor | None = None,
                prefix: Prefix | None = None) -> Tensor:
        h = hooks or Hooks()
        a = self.arch
        kw = {} if prefix is None else {"past_key_values": prefix.cache(input_ids.shape[0])}
        # logits at ``positions`` only: a hook on the unembedding (circuittrack.models.unembed)
        with logits_at(self.module, positions), self.nn.trace(input_ids, use_cache=False, **kw):
            layers = get_path(self.nn, a.layers_path)
            if h.resid0 is not None:
                new = h.resid0(layers[0].input)
                if new is not None:
                    layers[0].input = new
            for l in range(a.n_layers):
                layer = layers[l]
                if h.attn_in is not None:
                    h.attn_in(l, get_path(layer, a.site("attn_in")).input)
                if h.qkv is not None or h.qkv_grad is not None:
                    for path, ts in a.projection_sites():
                        mod = get_path(layer, path)
                        out = mod.output
                        new = intervene_qkv(a, h, l, out, ts)
                        if new is not out:
                            mod.output = new
                if h.z is not None:
                    mod = get_path(layer, a.o_path)
                    x = mod.input
                    new = h.z(l, x.view(*x.shape[:-1], a.n_heads, a.d_head))
                    if new is not None:
                        mod.input = new.flatten(-2)
                if h.attn_out is not None:
                    mod = get_path(layer, a.site("attn_out"))
                    new = h.attn_out(l, mod.output)
                    if new is not None:
                        mod.output = new
                if h.mlp_in is not None or h.mlp_in_grad is not None:
                    mod = get_path(layer, a.site("mlp_in"))
                    x = mod.input
                    y = intervene_input(x, *mlp_in_callbacks(h, l))
                    if y is not x:
                        mod.input = y
                if h.mlp_out is not None:
                    mod = get_path(layer, a.site("mlp_out"))
                    new = h.mlp_out(l, mod.output)
                    if new is not None:
                        mod.output = new
            if h.final_in is not None or h.final_in_grad is not None:
                mod = get_path(self.nn, a.final_ln_path)
                x = mod.input
                y = intervene_input(x, h.final_in, h.final_in_grad)
                if y is not x:
                    mod.input = y
            logits = self.nn.output.logits.save()
        return logits if positions is None else logits[:, 0]
