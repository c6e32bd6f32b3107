"""Precision of a training run: fp32, or bf16 / fp16 autocast, chosen where it is fast.

Inference precision lives in engine/device.py; training has other rules: autocast keeps the
weights and the optimizer in fp32 and runs convolutions in the lower precision, losses stay
in fp32 (losses.py), and fp16 needs loss scaling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from derain_cli.inference.device import cpu_has_native_bf16
from derain_cli.errors import UsageError

TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(asked: str, device: torch.device, bf16_safe: bool,
                       warn: Callable[[str], None] = print) -> str:
    """The precision a run uses: ``auto`` is bf16 on CUDA, and on CPUs with native bf16, for
    methods that declare bf16 training safe (``MethodSpec.bf16_training``); fp32 otherwise.

    ``fp16`` runs on CUDA only (with loss scaling); an explicit ``bf16`` is honoured anywhere,
    with a warning where it is slow (a CPU without native bf16) or not measured (the method
    does not declare it safe).
    """
    if asked not in TRAINING_PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(TRAINING_PRECISIONS)}, got '{asked}'")
    if asked == "auto":
        fast = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return "bf16" if fast and bf16_safe else "fp32"
    if asked == "fp16" and device.type != "cuda":
        raise UsageError("fp16 training runs on CUDA only; use --precision bf16 or fp32")
    if asked in ("bf16", "fp16") and not bf16_safe:
        warn(f"{asked} training is not measured as safe for this method; compare with --precision fp32")
    if asked == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warn("this CPU has no native bf16, which torch emulates: bf16 training is about 10x slower than fp32 here")
    return asked


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Loss scaling for fp16 (its gradients underflow otherwise); None for fp32 and bf16."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
