"""PReNet: Ren et al., "Progressive Image Deraining Networks: A Better and Simpler Baseline",
CVPR 2019 (PReNet6: 6 stages, 32 channels, a convolutional LSTM, 5 residual blocks).

Each stage sees the rainy image concatenated with the previous estimate, updates an LSTM
state, runs five residual blocks and predicts the rain-free image as a residual of the
input. 168,963 parameters. Module names follow the authors' code so their released
state dicts load key for key (``--weights net_latest.pth``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.losses import ssim_loss

STAGES = 6
CHANNELS = 32


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


def _residual_block() -> nn.Sequential:
    return nn.Sequential(_conv(CHANNELS, CHANNELS), nn.ReLU(), _conv(CHANNELS, CHANNELS), nn.ReLU())


class PReNet(nn.Module):
    """Input (B, 3, H, W) rainy image in [0, 1]; output the derained image clipped to [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(6, CHANNELS), nn.ReLU())
        # five residual blocks under the authors' attribute names
        self.res_conv1, self.res_conv2, self.res_conv3, self.res_conv4, self.res_conv5 = (
            _residual_block() for _ in range(5)
        )
        self.conv_i = nn.Sequential(_conv(2 * CHANNELS, CHANNELS), nn.Sigmoid())
        self.conv_f = nn.Sequential(_conv(2 * CHANNELS, CHANNELS), nn.Sigmoid())
        self.conv_g = nn.Sequential(_conv(2 * CHANNELS, CHANNELS), nn.Tanh())
        self.conv_o = nn.Sequential(_conv(2 * CHANNELS, CHANNELS), nn.Sigmoid())
        self.conv = nn.Sequential(_conv(CHANNELS, 3))

    def stages(self, rainy: torch.Tensor) -> list[torch.Tensor]:
        """The estimate after every stage (unclipped), first to last."""
        b, _, h, w = rainy.shape
        hidden = rainy.new_zeros(b, CHANNELS, h, w)
        cell = rainy.new_zeros(b, CHANNELS, h, w)
        estimate, outputs = rainy, []
        blocks = (self.res_conv1, self.res_conv2, self.res_conv3, self.res_conv4, self.res_conv5)
        for _ in range(STAGES):
            x = self.conv0(torch.cat((rainy, estimate), 1))
            x = torch.cat((x, hidden), 1)
            cell = self.conv_f(x) * cell + self.conv_i(x) * self.conv_g(x)
            hidden = self.conv_o(x) * torch.tanh(cell)
            x = hidden
            for block in blocks:
                x = F.relu(block(x) + x)
            estimate = self.conv(x) + rainy
            outputs.append(estimate)
        return outputs

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        return self.stages(rainy)[-1].clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss: negative SSIM of the final stage's output."""
        loss = ssim_loss(self.stages(rainy)[-1], clean)
        return {"loss": loss, "ssim": loss.detach()}
