"""Device and precision choice."""

from __future__ import annotations

import functools
from pathlib import Path

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


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX on x86, BF16 on Arm).

    Without it torch emulates bf16 and runs about ten times slower than float32. Read from
    /proc/cpuinfo; False where that does not exist (the safe answer: fp32 is never slow).
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def pick_dtype(precision: str, device: torch.device, half_safe: bool, bf16_safe: bool = False) -> torch.dtype:
    """Resolve ``--precision`` for a method on a device.

    ``auto``: float16 on CUDA for half-safe methods; bfloat16 on a CPU with native bf16 for
    methods declared bf16-safe; float32 everywhere else, so auto never picks a slow path.
    ``fp16`` is refused on the CPU (slow and unsupported by many kernels) and for methods
    that do not declare themselves half-safe; ``bf16`` is honoured anywhere (see
    BF16_EMULATED_COST for what it costs on a CPU without it).
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if precision == "auto":
        if device.type == "cuda" and half_safe:
            return torch.float16
        if device.type == "cpu" and bf16_safe and cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if precision == "fp16":
        if device.type == "cpu":
            raise UsageError("fp16 runs on GPU only; use --precision bf16 or fp32 on the CPU")
        if not half_safe:
            raise UsageError("this method is not half-precision safe; use --precision fp32")
        return torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float32


# Measured on AMD EPYC AVX2 CPUs without bf16 (docs/performance.md): 4x to 12x slower.
BF16_EMULATED_COST = "this CPU has no native bf16, which torch emulates: 4x to 12x slower than fp32 when measured; --precision fp32 is faster"


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()
