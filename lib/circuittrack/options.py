"""The valid values of user-facing options, checked without importing torch or the kernels.

The command line checks every option here first, so a typo is refused in a fraction of a second instead of after
seconds of imports; the library functions call the same checks (and then the ones that need torch, such as
whether a CUDA device exists). Every error is an :class:`~circuittrack.errors.InvalidInput` naming the choices.
"""

from __future__ import annotations

import math
import re

from circuittrack.errors import InvalidInput, choices

#: Attribution methods (circuits.attribution implements them).
METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact")
#: Runners (models.runners implements them).
BACKENDS = ("torch", "nnsight", "transformer_lens")
#: dtype names users may type -> the canonical torch name.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}
DEVICE_SYNTAX = "cpu, cuda, cuda:N, mps"
_DEVICE = re.compile(r"^(cpu|mps|cuda)(:\d+)?$")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}; valid methods: {choices(METHODS)}")
    return method


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InvalidInput(f"unknown backend {backend!r}; valid backends: {choices(BACKENDS)}")
    return backend


def check_dtype_name(dtype) -> str:
    """The canonical name of a dtype typed as text (a torch dtype passes through as its name)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise InvalidInput(f"unknown dtype {dtype!r}; valid: {choices(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def check_device_syntax(device) -> str:
    """A device string of a known kind (whether it exists here needs torch: models.devices.parse_device)."""
    text = str(device)
    if not isinstance(device, str) and type(device).__name__ != "device":
        raise InvalidInput(f"unknown device {device!r}; valid: {DEVICE_SYNTAX}")
    if not _DEVICE.match(text):
        raise InvalidInput(f"unsupported device {text!r}; valid: {DEVICE_SYNTAX}")
    return text


def check_size(name: str, value) -> int | str:
    """A batch size: a positive int or ``"auto"``."""
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput(f"{name} must be a positive integer or 'auto', got {value!r}")
    return value


def check_threshold(threshold) -> float:
    """A faithfulness to reach: a share of the full model's metric, in (0, 1]."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) \
            or not 0 < threshold <= 1:
        raise InvalidInput(f"threshold must be a faithfulness in (0, 1], a share of the full model's metric (the "
                           f"paper: 0.8), got {threshold!r}")
    return float(threshold)


def check_positive(name: str, value, paper=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        note = f" (the paper: {paper})" if paper is not None else ""
        raise InvalidInput(f"{name} must be a positive integer{note}, got {value!r}")
    return value


def check_circuit_options(method: str, backend: str, ig_steps: int, dtype, device, batch_size, circuit_batch,
                          threshold: float, max_size: int | None, paper_max_size: int = 1600) -> None:
    """Every option of a circuit search whose check needs no torch."""
    check_method(method)
    check_backend(backend)
    check_positive("ig_steps", ig_steps, 30)
    if dtype is not None:
        check_dtype_name(dtype)
    if device is not None:
        check_device_syntax(device)
    check_size("batch_size", batch_size)
    check_size("circuit_batch", circuit_batch)
    check_threshold(threshold)
    if max_size is not None:
        check_positive("max_size", max_size, paper_max_size)
