"""Training losses, differentiable, on (B, C, H, W) tensors in [0, 1]."""

from __future__ import annotations

import torch

from derain_cli.metrics import gaussian_window, ssim_map


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM over channels (data range 1, Gaussian window, 'valid' filtering).

    Images smaller than the window use a window of their size (LPNet's coarse levels).
    """
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    size = min(window, x.shape[-2], x.shape[-1])
    return 1.0 - ssim_map(x, y, gaussian_window(size, sigma), 1.0).mean()
