"""Image-quality metrics with the deraining papers' convention.

Papers score Rain100L/H with PSNR and SSIM on the Y channel of MATLAB's ``rgb2ycbcr``
(ITU-R BT.601, images on [0, 255]), SSIM with an 11x11 Gaussian window of sigma 1.5 and
no border crop. Every function takes (B, 3, H, W) float tensors in [0, 1] and returns one
value per image, shape (B,). ``channel="rgb"`` scores the three colour channels instead
(SSIM averaged over channels, PSNR over all values).
"""

from __future__ import annotations

import numpy as np
import torch

from derain_cli.kernels.ssim import gaussian_window, ssim_map

_Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr for inputs in [0, 1]


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) luma Y in [16, 235] as MATLAB's rgb2ycbcr."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) RGB, got shape {tuple(x.shape)}")
    w = x.new_tensor(_Y_WEIGHTS).view(1, 3, 1, 1)
    return 16.0 + (x * w).sum(dim=1, keepdim=True)


def _prepare(x: torch.Tensor, y: torch.Tensor, channel: str) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = x.double(), y.double()
    if channel == "y":
        return rgb_to_y(x), rgb_to_y(y)
    if channel == "rgb":
        return x * 255.0, y * 255.0
    raise ValueError(f"channel must be 'y' or 'rgb', got {channel!r}")


def psnr(x: torch.Tensor, y: torch.Tensor, channel: str = "y") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, peak 255; identical images give +inf."""
    a, b = _prepare(x, y, channel)
    mse = (a - b).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(255.0**2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor, channel: str = "y") -> torch.Tensor:
    """Structural similarity: Gaussian 11x11 window, sigma 1.5, L=255, 'valid' filtering."""
    a, b = _prepare(x, y, channel)
    if min(a.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {tuple(a.shape[-2:])}")
    return ssim_map(a, b, gaussian_window(), 255.0).flatten(1).mean(dim=1)


def score_uint8(output: np.ndarray, clean: np.ndarray, channel: str = "y") -> tuple[float, float]:
    """(PSNR, SSIM) of two (H, W, 3) uint8 pictures."""
    a, b = (torch.tensor(v).permute(2, 0, 1)[None].float() / 255 for v in (output, clean))
    return psnr(a, b, channel).item(), ssim(a, b, channel).item()
