"""JORDER: Yang et al., "Deep Joint Rain Detection and Removal from a Single Image", CVPR 2017.

Rain model O = B + S * R: R is the binary rain-location map, S the streak layer, B the
background. From shared features the network predicts R (rain detection), then S from the
features and R, and B = O - R * S, so rain-free regions (R near 0) are left alone instead
of being smoothed. The features come from a contextualized dilated network: three parallel
paths of two 3x3 convolutions with dilation 1, 2 and 3 (different dilations sample
different pixel lattices, so fusing them avoids the gridding holes of a single dilated
path). JORDER-R applies the network recurrently, each pass on the previous estimate,
removing overlapping streak layers progressively. Written from the paper's description;
the choices it leaves open are listed in docs/methods.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


CHANNELS = 64
DILATIONS = (1, 2, 3)
RECURRENCES = 2
MASK_THRESHOLD = 0.02  # mean-over-channels residual O - B above ~5/255 counts as rain
MASK_WEIGHT = 0.01  # the detection loss is a guide; restoration losses dominate
STREAK_WEIGHT = 1.0


def rain_mask(rainy: torch.Tensor, clean: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Binary rain-location map R for a training pair: hard threshold of the residual O - B
    (mean over colour channels), shape (B, 1, H, W), values 0 or 1."""
    return ((rainy - clean).mean(dim=1, keepdim=True) > threshold).to(rainy.dtype)


def conv(cin: int, cout: int, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)


class ContextualizedDilation(nn.Module):
    """Parallel dilated paths (dilation 1, 2, 3), concatenated and fused by a 1x1 conv."""

    def __init__(self, channels: int = CHANNELS, dilations: tuple[int, ...] = DILATIONS) -> None:
        super().__init__()
        self.paths = nn.ModuleList(
            nn.Sequential(conv(channels, channels, d), nn.ReLU(), conv(channels, channels, d), nn.ReLU())
            for d in dilations
        )
        self.fuse = nn.Conv2d(channels * len(dilations), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fuse(torch.cat([path(x) for path in self.paths], dim=1)))


class JORDER(nn.Module):
    """Input (B, 3, H, W) rainy image in [0, 1]. In eval mode returns ``{"image", "mask"}``:
    the derained image clipped to [0, 1] and the rain-location probability (B, 1, H, W),
    the largest over the recurrences (where any pass found rain)."""

    def __init__(self, channels: int = CHANNELS, recurrences: int = RECURRENCES) -> None:
        super().__init__()
        self.recurrences = recurrences
        self.head = nn.Sequential(conv(3, channels), nn.ReLU())
        self.context = ContextualizedDilation(channels)
        self.detect = nn.Sequential(conv(channels, channels), nn.ReLU(), conv(channels, 1))
        self.streaks = nn.Sequential(conv(channels + 1, channels), nn.ReLU(), conv(channels, 3))

    def step(self, rainy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One pass: (mask logits R, streak layer S, background B = O - sigmoid(R) * S)."""
        features = self.context(self.head(rainy))
        logits = self.detect(features)
        mask = torch.sigmoid(logits)
        streaks = self.streaks(torch.cat([features, mask], dim=1))
        return logits, streaks, rainy - mask * streaks

    def passes(self, rainy: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Every recurrence as (input, mask logits, streaks, background); each pass reads the
        previous background estimate."""
        results, current = [], rainy
        for _ in range(self.recurrences):
            logits, streaks, background = self.step(current)
            results.append((current, logits, streaks, background))
            current = background
        return results

    def forward(self, rainy: torch.Tensor) -> dict[str, torch.Tensor]:
        passes = self.passes(rainy)
        mask = torch.stack([torch.sigmoid(logits) for _, logits, _, _ in passes]).amax(dim=0)
        return {"image": passes[-1][3].clamp(0.0, 1.0), "mask": mask}

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per pass: MSE of the background, MSE of the streak layer inside the true rain
        regions (target O_t - B), and binary cross-entropy of the detected mask against R
        thresholded from O_t - B; summed over passes."""
        totals = {"background": 0.0, "streaks": 0.0, "mask": 0.0}
        for current, logits, streaks, background in self.passes(rainy):
            residual = current - clean
            target_mask = rain_mask(current, clean)
            totals["background"] = totals["background"] + F.mse_loss(background, clean)
            totals["streaks"] = totals["streaks"] + F.mse_loss(target_mask * streaks, target_mask * residual)
            totals["mask"] = totals["mask"] + F.binary_cross_entropy_with_logits(logits, target_mask)
        loss = totals["background"] + STREAK_WEIGHT * totals["streaks"] + MASK_WEIGHT * totals["mask"]
        return {"loss": loss, **{k: v.detach() for k, v in totals.items()}}
