"""Device and precision choice."""

from __future__ import annotations

import torch

from derain_cli.errors import UsageError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; other names are passed to torch."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device '{name}': {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}' was asked for but CUDA is not available")
    return device


def pick_dtype(precision: str, device: torch.device, half_safe: bool) -> torch.dtype:
    """``auto`` is float16 on CUDA for half-safe methods and float32 everywhere else.

    ``fp16`` is refused on the CPU (slow and unsupported by many kernels) and for methods
    that do not declare themselves half-safe; ``bf16`` is opt-in anywhere.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" and half_safe else torch.float32
    if precision == "fp16":
        if device.type == "cpu":
            raise UsageError("fp16 runs on GPU only; use --precision bf16 or fp32 on the CPU")
        if not half_safe:
            raise UsageError("this method is not half-precision safe; use --precision fp32")
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float32


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
