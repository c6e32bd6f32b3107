"""DDN: Fu et al., "Removing rain from single images via a deep detail network", CVPR 2017.

The network sees only the detail layer (the image minus its guided-filter base) and
predicts the negative residual: output = rainy image + network(detail). 26 3x3 convs of
16 channels, each followed by batch normalisation with the current batch's own statistics
(as the official code does at test time) and ReLU (not after the last); a shortcut adds
every second conv's output onto a running sum. About 57k parameters. SIRR (Wei et al.
CVPR 2019) fine-tunes this network semi-supervised on real rain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


DEPTH = 26
CHANNELS = 16
GUIDE_RADIUS = 15
GUIDE_EPS = 1.0


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window: zero border, divided by the pixels inside the image.

    Separable (rows, then columns): each pass divides by its own in-image count, whose
    product is the 2-D count, so this equals the 2-D window mean at 2(2r+1) instead of
    (2r+1)^2 additions per pixel (12x faster at r = 15)."""
    k = 2 * radius + 1
    rows = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(rows, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


def guided_filter_self(x: torch.Tensor, radius: int = GUIDE_RADIUS, eps: float = GUIDE_EPS) -> torch.Tensor:
    """He et al.'s guided filter with each channel guiding itself: the smooth base layer."""
    mean = box_mean(x, radius)
    var = box_mean(x * x, radius) - mean * mean
    a = var / (var + eps)
    b = mean - a * mean
    return box_mean(a, radius) * x + box_mean(b, radius)


class DDN(nn.Module):
    """Input (B, 3, H, W) rainy image in [0, 1]; output the derained image clipped to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        widths = [3] + [CHANNELS] * (DEPTH - 1) + [3]
        self.convs = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, padding=1) for i in range(DEPTH))
        # statistics of the current batch, never running averages (the authors' test-time behaviour)
        self.norms = nn.ModuleList(nn.BatchNorm2d(widths[i + 1], track_running_stats=False) for i in range(DEPTH))
        # The last norm emits the residual; with its default scale of 1 an untrained network adds
        # unit-variance noise to the image. A small scale starts training near the identity.
        nn.init.constant_(self.norms[-1].weight, 0.01)

    def detail(self, rainy: torch.Tensor) -> torch.Tensor:
        return rainy - guided_filter_self(rainy)

    def residual(self, rainy: torch.Tensor) -> torch.Tensor:
        """The network's prediction (the negative rain layer), before it is added to the input."""
        x = F.relu(self.norms[0](self.convs[0](self.detail(rainy))))
        shortcut = x
        for i in range(1, DEPTH - 1, 2):
            x = F.relu(self.norms[i](self.convs[i](shortcut)))
            x = F.relu(self.norms[i + 1](self.convs[i + 1](x)))
            shortcut = shortcut + x
        return self.norms[-1](self.convs[-1](shortcut))

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        return (rainy + self.residual(rainy)).clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss: mean squared error of the derained image (negative residual mapping)."""
        loss = F.mse_loss(rainy + self.residual(rainy), clean)
        return {"loss": loss}


def state_dict_from_tensorflow(arrays) -> dict[str, torch.Tensor]:
    """Map the official TensorFlow variables ``conv_k/{weights,biases,scale,beta}_k``
    (k = 1..26) onto this network; the unused duplicates ``conv_k_1/*`` are ignored."""
    state = {}
    for k in range(1, DEPTH + 1):
        i = k - 1
        state[f"convs.{i}.weight"] = torch.from_numpy(arrays[f"conv_{k}/weights_{k}"]).permute(3, 2, 0, 1).contiguous()
        state[f"convs.{i}.bias"] = torch.from_numpy(arrays[f"conv_{k}/biases_{k}"])
        state[f"norms.{i}.weight"] = torch.from_numpy(arrays[f"conv_{k}/scale_{k}"])
        state[f"norms.{i}.bias"] = torch.from_numpy(arrays[f"conv_{k}/beta_{k}"])
    return state
