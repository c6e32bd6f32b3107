"""LPNet: Fu et al., "Lightweight Pyramid Networks for Image Deraining", IEEE TNNLS 2019.

A 5-level Laplacian pyramid of the rainy image; one small recursive subnet per level
(16, 8, 4, 2, 1 features from finest to coarsest); each level's estimate is added to the
upsampled estimate of the coarser level, so the network rebuilds a Gaussian pyramid of the
clean image. 7,548 parameters. The pyramid ops follow the authors' TensorFlow code exactly
(SAME padding at stride 2, transposed-convolution upsampling), so their released weights
reproduce their outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.kernels.blocks import blocking_applies, run_in_blocks
from derain_cli.kernels.fused import conv_act, fusion_applies
from derain_cli.kernels.ssim import ssim_loss

BINOMIAL_5 = (0.0625, 0.25, 0.375, 0.25, 0.0625)
LEVELS = 5
FEATURES = (16, 8, 4, 2, 1)  # finest to coarsest
RECURSIONS = 5
SUBNET_RADIUS = 1 + 2 * RECURSIONS  # a subnet's receptive radius: its 3x3 convs in sequence


def _same_pad(size: int) -> tuple[int, int]:
    """TensorFlow SAME padding of a 5-tap, stride-2 filter: (before, after).

    That is (out - 1) * 2 + 5 - size with out = ceil(size / 2), always 3 or 4. Written with
    positive floor division only and no max(): traced for ONNX, integer division truncates
    (-(-size // 2) came out one short) and max() would freeze the export's size.
    """
    total = 2 * ((size + 1) // 2) + 3 - size
    return total // 2, total - total // 2


class LaplacianPyramid(nn.Module):
    """Fixed binomial-filter pyramid ops on (B, C, H, W) tensors, any H and W."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        k1 = torch.tensor(BINOMIAL_5)
        k2 = torch.outer(k1, k1)
        self.channels = channels
        self.register_buffer("kernel", k2.expand(channels, 1, 5, 5).clone(), persistent=False)

    def down(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _same_pad(x.shape[-2])
        left, right = _same_pad(x.shape[-1])
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.kernel, stride=2, groups=self.channels)

    def up(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Transposed convolution with 4x the kernel, cropped as TF's SAME transpose does."""
        full = F.conv_transpose2d(x, 4 * self.kernel, stride=2, groups=self.channels)
        top = _same_pad(size[0])[0]
        left = _same_pad(size[1])[0]
        return full[..., top : top + size[0], left : left + size[1]]

    def split(self, x: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
        """Laplacian levels, finest first; the last entry is the coarsest Gaussian level."""
        bands = []
        for _ in range(levels - 1):
            low = self.down(x)
            bands.append(x - self.up(low, x.shape[-2:]))
            x = low
        bands.append(x)
        return bands

    def gaussian(self, x: torch.Tensor, levels: int = LEVELS) -> list[torch.Tensor]:
        """Gaussian pyramid, finest first (the targets of LPNet's per-level outputs)."""
        out = [x]
        for _ in range(levels - 1):
            out.append(self.down(out[-1]))
        return out


class LevelSubnet(nn.Module):
    """One pyramid level: feature conv, a recursive 3x3 -> 1x1 -> 3x3 block, 1x1 output."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, features, 3, padding=1)
        self.block = nn.ModuleList(
            [
                nn.Conv2d(features, features, 3, padding=1),
                nn.Conv2d(features, features, 1),
                nn.Conv2d(features, features, 3, padding=1),
            ]
        )
        self.output = nn.Conv2d(features, 3, 1)

    def forward(self, band: torch.Tensor) -> torch.Tensor:
        # activations fused or in place: LeakyReLU on 16-channel maps is memory-bound on the CPU
        first = conv_act(self.features, band, "leaky_relu", 0.2)
        h = first
        for _ in range(RECURSIONS):  # the same weights on every recursion
            for conv in self.block:
                h = conv_act(conv, h, "leaky_relu", 0.2)
            h = h.add_(first) if fusion_applies(h) else h + first  # autograd needs h unchanged
        return self.output(h) + band


class LPNet(nn.Module):
    """Input (B, 3, H, W) rainy image in [0, 1]; output the derained image, clipped to [0, 1].

    ``features``: each level's width, finest first (the paper's 16, 8, 4, 2, 1 by default)."""

    def __init__(self, features: tuple[int, ...] = FEATURES) -> None:
        super().__init__()
        self.pyramid = LaplacianPyramid()
        self.widths = features
        self.subnets = nn.ModuleList([LevelSubnet(f) for f in features])

    def pyramid_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Per-level estimates of the clean Gaussian pyramid, finest first (unclipped)."""
        bands = self.pyramid.split(x)
        estimate = F.relu(self._subnet(LEVELS - 1, bands[-1]))
        outputs = [estimate]
        for level in range(LEVELS - 2, -1, -1):
            coarse = self.pyramid.up(estimate, bands[level].shape[-2:])
            estimate = F.relu(self._subnet(level, bands[level]) + coarse)
            outputs.append(estimate)
        return outputs[::-1]

    def _subnet(self, level: int, band: torch.Tensor) -> torch.Tensor:
        # the subnets are local (radius 11 at their level): on the CPU, run them in cached blocks
        if blocking_applies(band):
            return run_in_blocks(self.subnets[level], (band,), SUBNET_RADIUS, self.widths[level])
        return self.subnets[level](band)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pyramid_outputs(x)[0].clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss: L1 on every pyramid level + (1 - SSIM) on the two finest."""
        outputs = self.pyramid_outputs(rainy)
        targets = self.pyramid.gaussian(clean)
        l1 = sum(F.l1_loss(o, t) for o, t in zip(outputs, targets))
        ssim = sum(ssim_loss(o, t) for o, t in zip(outputs[:2], targets[:2]))
        return {"loss": l1 + ssim, "l1": l1.detach(), "ssim": ssim.detach()}


WIDE_FEATURES = (24, 12, 6, 4, 2)  # 2.2x the finest level's arithmetic: a student with more room


class LPNetWide(LPNet):
    """LPNet with wider levels (``WIDE_FEATURES``): a distillation student (docs/weights.md)."""

    def __init__(self) -> None:
        super().__init__(WIDE_FEATURES)


def state_dict_from_tensorflow(arrays) -> dict[str, torch.Tensor]:
    """Map the authors' TensorFlow variables onto this network's state dict.

    ``arrays`` maps ``inference/subnet{1..5}/{weights,biases}_{0..4}`` to numpy arrays (an
    ``np.load``-ed ``.npz``); subnet1 is the coarsest level. Kernels are HWIO there, OIHW here.
    """
    layers = ("features", "block.0", "block.1", "block.2", "output")
    state = {}
    for subnet in range(1, LEVELS + 1):
        level = LEVELS - subnet
        for k, layer in enumerate(layers):
            weight = torch.from_numpy(arrays[f"inference/subnet{subnet}/weights_{k}"])
            state[f"subnets.{level}.{layer}.weight"] = weight.permute(3, 2, 0, 1).contiguous()
            state[f"subnets.{level}.{layer}.bias"] = torch.from_numpy(arrays[f"inference/subnet{subnet}/biases_{k}"])
    return state
