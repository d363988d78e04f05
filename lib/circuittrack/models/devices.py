"""Devices and dtypes: parsing what a user typed, and how much memory a device has free.

Validation here is cheap and runs before anything is loaded: an unknown dtype, a malformed device string or a
CUDA device on a machine without one is an :class:`~circuittrack.errors.InvalidInput` listing the choices.
"""

from __future__ import annotations

import os

import torch

from circuittrack.errors import InvalidInput, choices
from circuittrack.options import check_device_syntax, check_dtype_name

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A torch dtype from ``float32`` / ``bfloat16`` / ``float16`` (or their short names)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise InvalidInput(f"unsupported dtype {dtype}; valid: {choices(DTYPES)}")
        return dtype
    return DTYPES[check_dtype_name(dtype)]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_device(device: str | torch.device) -> torch.device:
    """A torch device that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    check_device_syntax(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidInput(f"unknown device {device!r}; valid: cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {device!r} asked for, but this machine has no CUDA device; use cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InvalidInput(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                               f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InvalidInput(f"device {device!r} asked for, but MPS is not available here; use cpu")
    elif dev.type != "cpu":
        raise InvalidInput(f"unsupported device {device!r}; valid: cpu, cuda, cuda:N, mps")
    return dev


def free_memory(device: str | torch.device) -> int:
    """Bytes free for new tensors on ``device``: CUDA's free memory, else the host's available memory."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0  # pragma: no cover
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 8 << 30  # pragma: no cover


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS, or a CPU allocation failure)."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, (RuntimeError, MemoryError)) and (
        isinstance(err, MemoryError) or "out of memory" in text.lower() or "DefaultCPUAllocator" in text)
