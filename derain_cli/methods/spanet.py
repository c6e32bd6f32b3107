"""SPANet: Wang et al., "Spatial Attentive Single-Image Deraining with a High Quality Real Rain
Dataset", CVPR 2019 — the network the authors trained on REAL rain (SPA-Data).

A trunk of 17 bottlenecks (32 channels); blocks 4-15, in four groups of three, are gated by a
spatial attentive module (SAM) whose two four-direction IRNN scans carry context along whole
rows and columns. The same SAM is called before each group. The network predicts the derained
image directly (not a residual). 283,716 parameters.

Module names follow the authors' ``SPANet.py`` so their ``net`` state dict loads strictly.
Their network reads BGR (``cv2.imread``); derain passes RGB everywhere, so the channel order
is reversed on the way in and out here. Their SAM also computes a four-channel direction
attention and multiplies each scan by it without keeping the products: those are no-ops in
their model, so its layers are here (the weights load) but never change the result.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.kernels.fused import conv_act
from derain_cli.kernels.ssim import ssim_loss
from derain_cli.kernels.irnn import DIRECTIONS, irnn_scan, scan

CHANNELS = 32
BLOCKS = 17
SAM_BEFORE = (4, 7, 10, 13)  # the SAM runs again before each of these blocks...
GATED = range(4, 16)  # ...and its mask gates blocks 4-15 (1-3 and 16-17 are plain residual blocks)
IRNN_ALPHA = 0.2  # the authors' initial recurrence weight


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, bias=False)


def rain_mask(rainy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """The authors' training mask (B, H, W): 1 where the 8-bit pair differs in any channel.

    Their ``np.clip((O - B).sum(axis=2), 0, 1)`` subtracts uint8 arrays, which wraps around,
    so every pixel that differs at all becomes 1, whichever sign the difference has.
    """
    return ((rainy - clean).abs() > 0.5 / 255).any(dim=1).to(rainy.dtype)


class Bottleneck(nn.Module):
    """1x1, ReLU, 3x3 dilation 2, ReLU, 1x1 (no biases); the caller adds the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.group1 = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False), relu1=nn.ReLU(),
            conv2=nn.Conv2d(CHANNELS, CHANNELS, 3, padding=2, dilation=2, bias=False), relu2=nn.ReLU(),
            conv3=nn.Conv2d(CHANNELS, CHANNELS, 1, bias=False),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group1
        return g.conv3(conv_act(g.conv2, conv_act(g.conv1, x, "relu"), "relu"))


class SpatialIRNN(nn.Module):
    """Per-channel recurrence weight and bias for each direction, stored as the authors'
    depthwise 1x1 convolutions (``{direction}_weight``)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        for direction in DIRECTIONS:
            conv = nn.Conv2d(channels, channels, 1, groups=channels)
            nn.init.constant_(conv.weight, IRNN_ALPHA)
            setattr(self, f"{direction}_weight", conv)

    def params(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(weight, bias), each of shape (C,), per direction."""
        return {d: (getattr(self, f"{d}_weight").weight.view(-1), getattr(self, f"{d}_weight").bias) for d in DIRECTIONS}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The four scans of x (B, C, H, W), concatenated (up, right, down, left): (B, 4C, H, W)."""
        params = self.params()
        scans = irnn_scan(x, {d: w for d, (w, _) in params.items()}, {d: b for d, (_, b) in params.items()})
        return torch.cat(scans, dim=1)

    def scanned_conv(self, x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
        """``conv(self(x))`` for a bias-free 3x3 ``conv`` without the four-map concatenation:
        each direction's scan meets its slice of the weight and is freed before the next, so
        whole pictures (which SPANet needs: its scans cannot be tiled) keep few maps alive."""
        channels, total = x.shape[1], None
        for k, (direction, (weight, bias)) in enumerate(self.params().items()):
            part = conv.weight[:, k * channels : (k + 1) * channels]
            y = F.conv2d(scan(x, direction, weight, bias), part, padding=1)
            total = y if total is None else total.add_(y)
        return total


class _Stored(nn.Module):
    """A convolution's weight and bias kept as buffers: loaded and saved, never trained."""

    def __init__(self, cin: int, cout: int, kernel: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(cout, cin, kernel, kernel))
        self.register_buffer("bias", torch.zeros(cout))


class DirectionAttention(nn.Module):
    """The authors' direction attention (3x3 32->16, 3x3 16->16, 1x1 16->4). Its output never
    reaches SPANet's result (see the module doc), so its weights are stored, not parameters."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.conv1 = _Stored(channels, channels // 2, 3)
        self.conv2 = _Stored(channels // 2, channels // 2, 3)
        self.conv3 = _Stored(channels // 2, 4, 1)


class SAM(nn.Module):
    """Spatial attentive module: features (B, 32, H, W) -> attention mask (B, 1, H, W) in (0, 1)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.irnn1 = SpatialIRNN(channels)
        self.irnn2 = SpatialIRNN(channels)
        self.conv_in = _conv3(channels, channels)
        self.conv2 = _conv3(4 * channels, channels)
        self.conv3 = _conv3(4 * channels, channels)
        self.attention_layer = DirectionAttention(channels)
        self.conv_out = nn.Conv2d(channels, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            y = self.conv3(self.irnn2(self.conv2(self.irnn1(self.conv_in(x)))))
        else:
            y = self.irnn2.scanned_conv(self.irnn1.scanned_conv(self.conv_in(x), self.conv2), self.conv3)
        return torch.sigmoid(self.conv_out(torch.relu(y)))


class SPANet(nn.Module):
    """Input (B, 3, H, W) RGB rainy image in [0, 1]. In eval mode returns ``{"image", "mask"}``:
    the derained image clipped to [0, 1] and the first SAM call's attention mask (B, 1, H, W),
    high where the network sees rain."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Sequential(_conv3(3, CHANNELS), nn.ReLU())
        self.SAM1 = SAM()
        for i in range(1, BLOCKS + 1):
            setattr(self, f"res_block{i}", Bottleneck())
        self.conv_out = nn.Sequential(_conv3(CHANNELS, 3))

    def raw(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(first attention mask, unclipped RGB image) as the authors' ``forward`` computes them."""
        bgr = rgb.flip(1)  # the authors' network reads BGR
        if not torch.is_grad_enabled():  # whole pixels per slice for the scans; oneDNN's own layout
            bgr = bgr.contiguous(memory_format=torch.channels_last)
        x = conv_act(self.conv_in[0], bgr, "relu")
        masks = []
        for i in range(1, BLOCKS + 1):
            if i in SAM_BEFORE:
                masks.append(self.SAM1(x))
            y = getattr(self, f"res_block{i}")(x)
            if torch.is_grad_enabled():
                x = F.relu(y * masks[-1] + x if i in GATED else y + x)
            else:  # in place: one pass over the map instead of three
                x = (x.addcmul_(y, masks[-1]) if i in GATED else x.add_(y)).relu_()
        return masks[0], self.conv_out(x).flip(1)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        mask, image = self.raw(rgb)
        return {"image": image.clamp(0.0, 1.0), "mask": mask}

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss: L1 + (1 - SSIM) of the image, plus the MSE of the first attention
        mask against the pair's rain mask."""
        mask, image = self.raw(rainy)
        terms = {
            "l1": F.l1_loss(image, clean),
            "ssim": ssim_loss(image, clean),
            "mask": F.mse_loss(mask[:, 0], rain_mask(rainy, clean)),
        }
        return {"loss": sum(terms.values()), **{k: v.detach() for k, v in terms.items()}}
