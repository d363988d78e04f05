"""Runners: the same Hugging Face weights driven through TransformerLens, nnsight or plain PyTorch hooks.

:func:`get_runner` gives the kernel-side :class:`~circuittrack.models.runners.runner.Runner` that the
attribution and evaluation kernels are written against. It never changes the model it is given. The ``torch``
backend hooks the caller's model only for the duration of a pass. The TransformerLens bridge rewires the modules
it wraps and nnsight permanently installs its controller on them, so those backends, and any run on another
device or dtype, work on a private copy made by this call. Copies are not cached (a cache would pin a second
model in memory for as long as the caller's lives, and miss weight edits made through ``.data``): build the
runner once with :func:`get_runner` and pass it to the kernels to reuse the copy, as
:func:`~circuittrack.circuits.discovery.find_circuit` does.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from circuittrack import options
from circuittrack.errors import InvalidInput
from circuittrack.models.runners.nnsight import NNsightRunner
from circuittrack.models.runners.runner import Runner
from circuittrack.models.runners.torch_hooks import TorchRunner
from circuittrack.models.runners.transformer_lens import TransformerLensRunner

BACKENDS = options.BACKENDS
#: Plain PyTorch hooks: the fastest backend in ``make bench`` (see docs/architecture.md), with identical scores.
DEFAULT_BACKEND = "torch"
_RUNNERS = {"transformer_lens": TransformerLensRunner, "nnsight": NNsightRunner, "torch": TorchRunner}


def check_backend(backend: str) -> str:
    return options.check_backend(backend)


def get_runner(backend: str, model, device: torch.device | str | None = None,
               dtype: torch.dtype | None = None) -> Runner:
    """The runner of ``model`` (a HF causal LM, a ``TransformerBridge``, an nnsight model, or a Runner, returned
    as is) on ``backend`` in :data:`BACKENDS`, running on ``device`` in ``dtype`` (default: the model's own).

    The model is never moved, cast or rewired: where that would be needed, the runner works on a cached copy.
    """
    if isinstance(model, Runner):
        return model
    check_backend(backend)
    hf = underlying_hf(model)
    first = next(hf.parameters(), None)
    if first is None:
        raise InvalidInput(f"{type(hf).__name__} has no parameters; pass a causal language model")
    want_dev = torch.device(device) if device is not None else first.device
    want_dtype = dtype if dtype is not None else first.dtype
    if want_dev.type == "cuda" and want_dev.index is None:
        want_dev = torch.device("cuda", torch.cuda.current_device())
    same = first.device == want_dev and first.dtype == want_dtype
    if same and backend == "torch":
        return TorchRunner(hf)
    if same and hf is not model:  # a bridge or nnsight object the user built: theirs to change
        return _RUNNERS[backend](model)
    private = copy.deepcopy(hf) if same else copy.deepcopy(hf).to(device=want_dev, dtype=want_dtype)
    if backend == "transformer_lens":
        return TransformerLensRunner(private, copy_model=False)
    return _RUNNERS[backend](private)


def underlying_hf(model) -> nn.Module:
    """The Hugging Face module under a TransformerLens bridge or an nnsight wrapper (or the model itself)."""
    mod = type(model).__module__
    if mod.startswith("transformer_lens"):
        return model.original_model
    if mod.startswith("nnsight"):
        return model._module
    if not isinstance(model, nn.Module):
        raise InvalidInput(f"expected a Hugging Face model, a TransformerBridge or an nnsight model, "
                           f"got {type(model).__name__}")
    return model


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "NNsightRunner", "Runner", "TorchRunner", "TransformerLensRunner",
           "check_backend", "get_runner", "underlying_hf"]
