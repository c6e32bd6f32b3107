"""MSDN: the multi-scale de-raining network of Qiu et al., Journal of Computer Applications 2022.

The paper gives no code; this follows its description (see docs/methods.md for the choices
the text leaves open):

- feature transform: the rainy image to 32 feature channels. Its output is reachable through
  ``features`` because the semi-supervised matching method aligns the first- and second-order
  statistics of synthetic and real rain there;
- multi-scale de-raining units joined by dense connections (each unit reads a 1x1 fusion of
  the transform's and all earlier units' outputs) and residual connections (each unit adds
  its correction to its input);
- inside a unit, n = 3 scales: max pooling with kernel and stride 2^(i-1), a cascade
  convolution learning block per scale, bilinear upsampling back and a sum;
- image conversion: the fused features to RGB, added to the rainy image (the network learns
  the negative rain layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


CHANNELS = 32
SCALES = 3
UNITS = 4
CASCADE_DEPTH = 3


def conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class CascadeBlock(nn.Module):
    """Cascade convolution learning block: 3x3 conv + ReLU layers, each refining the last,
    with a local shortcut so a block can start out as the identity."""

    def __init__(self, channels: int = CHANNELS, depth: int = CASCADE_DEPTH) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for conv in self.convs:
            y = F.relu(conv(y))
        return x + y


class MultiScaleUnit(nn.Module):
    """Derain each of ``SCALES`` max-pooled copies (kernel = stride = 2^(i-1)) and sum them
    back at full size; the unit returns its input plus that correction (residual link)."""

    def __init__(self, channels: int = CHANNELS, scales: int = SCALES) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CascadeBlock(channels) for _ in range(scales))
        self.merge = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for i, block in enumerate(self.blocks):
            factor = 2 ** i
            y = F.max_pool2d(x, factor, factor) if factor > 1 else x
            y = block(y)
            if factor > 1:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            total = total + y
        return x + self.merge(total)


class MSDN(nn.Module):
    """Input (B, 3, H, W) rainy image in [0, 1], H and W multiples of 4; output the derained
    image clipped to [0, 1]."""

    def __init__(self, channels: int = CHANNELS, units: int = UNITS) -> None:
        super().__init__()
        self.transform = nn.Sequential(conv3x3(3, channels), nn.ReLU(), conv3x3(channels, channels), nn.ReLU())
        # dense links: unit k reads a 1x1 fusion of the transform output and units 1..k-1
        self.links = nn.ModuleList(nn.Conv2d(channels * (k + 1), channels, 1) for k in range(units))
        self.units = nn.ModuleList(MultiScaleUnit(channels) for _ in range(units))
        self.fuse = nn.Conv2d(channels * (units + 1), channels, 1)
        self.convert = nn.Sequential(conv3x3(channels, channels), nn.ReLU(), conv3x3(channels, 3))

    def features(self, rainy: torch.Tensor) -> torch.Tensor:
        """The feature-transform stage's output, where synthetic and real rain are matched."""
        return self.transform(rainy)

    def restore(self, rainy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The derained image (unclipped) from the transform's ``features``."""
        outputs = [features]
        for link, unit in zip(self.links, self.units):
            outputs.append(unit(link(torch.cat(outputs, dim=1))))
        return rainy + self.convert(self.fuse(torch.cat(outputs, dim=1)))

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        return self.restore(rainy, self.features(rainy)).clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean squared error of the derained image (the paper's supervised term)."""
        return {"loss": F.mse_loss(self.restore(rainy, self.features(rainy)), clean)}
