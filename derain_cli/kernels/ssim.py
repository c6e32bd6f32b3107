"""SSIM as a differentiable kernel: the Gaussian window, the per-pixel map (Wang et al. 2004),
and 1 - SSIM as a loss. The metrics (evaluation) and the networks' paper losses (methods) share it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """(size, size) normalised Gaussian, float64."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_map(a: torch.Tensor, b: torch.Tensor, window: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, K1=0.01, K2=0.03) with 'valid' filtering by a
    (k, k) ``window`` applied to each channel of (B, C, H, W) tensors; also used by the loss."""
    c = a.shape[1]
    w = window.to(a).expand(c, 1, *window.shape)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, w, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))


def ssim_loss(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """1 - mean SSIM over channels (data range 1, Gaussian window, 'valid' filtering).

    Images smaller than the window use a window of their size (LPNet's coarse levels).
    Computed in float32 even under autocast: its variances are differences of nearly equal
    blurred squares, which bf16's 8-bit mantissa would cancel away.
    """
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(y.shape)}")
    size = min(window, x.shape[-2], x.shape[-1])
    with torch.autocast(x.device.type, enabled=False):
        return 1.0 - ssim_map(x.float(), y.float(), gaussian_window(size, sigma), 1.0).mean()
