"""Model backends: the same Hugging Face weights run through TransformerLens, nnsight or plain PyTorch hooks.

``wrap_transformer_lens`` / ``wrap_nnsight`` give the libraries' own objects (for notebooks and the checkpoint
loader); :func:`get_runner` gives the kernel-side :class:`~circuittrack.backends.base.Runner` that the
attribution and evaluation kernels are written against.
"""

from __future__ import annotations

import torch
from torch import nn

from .arch import ADAPTERS, ArchAdapter, get_arch, is_wrapped_by_transformer_lens
from .base import Hooks, Runner
from .nnsight import NNsightRunner, wrap_nnsight
from .torch_hooks import TorchRunner
from .transformer_lens import TransformerLensRunner, wrap_transformer_lens

BACKENDS = ("transformer_lens", "nnsight", "torch")
_RUNNERS = {"transformer_lens": TransformerLensRunner, "nnsight": NNsightRunner, "torch": TorchRunner}
_CACHE_KEY = "_circuittrack_runners"


def get_runner(backend: str, model, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Runner:
    """The kernel-side runner of ``model`` (a HF causal LM, a ``TransformerBridge``, an nnsight model, or a
    Runner, returned as is) on ``backend`` in ``BACKENDS``.

    ``device``/``dtype``, when given, move/cast the HF model in place first (before any wrapping). The model is
    put in eval mode (attribution with dropout would be meaningless). Runners are cached on the HF model.
    """
    if isinstance(model, Runner):
        return model
    if backend not in _RUNNERS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    hf = _underlying_hf(model)
    if device is not None or dtype is not None:
        hf.to(device=device, dtype=dtype)
    hf.eval()
    cache = hf.__dict__.setdefault(_CACHE_KEY, {})
    if backend != "transformer_lens" and backend in cache and is_wrapped_by_transformer_lens(hf):
        # hooks on HF modules stop firing once TransformerLens re-implements attention around them
        del cache[backend]
        raise ValueError(f"this model was wrapped in place by a TransformerLens bridge after its {backend} runner "
                         "was built; use an unwrapped copy (copy.deepcopy before wrap_transformer_lens)")
    if backend not in cache:
        cache[backend] = _RUNNERS[backend](model if backend == "transformer_lens" else hf)
    return cache[backend]


def _underlying_hf(model) -> nn.Module:
    mod = type(model).__module__
    if mod.startswith("transformer_lens"):
        return model.original_model
    if mod.startswith("nnsight"):
        return model._module
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a Hugging Face model, a TransformerBridge or an nnsight model, got {type(model)}")
    return model


__all__ = ["ADAPTERS", "ArchAdapter", "BACKENDS", "Hooks", "NNsightRunner", "Runner", "TorchRunner",
           "TransformerLensRunner", "get_arch", "get_runner", "wrap_nnsight", "wrap_transformer_lens"]
