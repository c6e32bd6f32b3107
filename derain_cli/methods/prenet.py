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

from derain_cli.kernels.blocks import blocking_applies, run_in_blocks
from derain_cli.kernels.fused import conv_act, fusion_applies
from derain_cli.kernels.ssim import ssim_loss

STAGES = 6
CHANNELS = 32
GATES = {"i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid"}  # the LSTM's, by module name
STAGE_RADIUS = 13  # 3x3 convs in sequence per stage: conv0, the gates, 5 x 2 in the blocks, conv


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
        for _ in range(STAGES):
            # a stage is local (radius 13): on the CPU it runs in cached blocks
            if blocking_applies(rainy):
                estimate, hidden, cell = run_in_blocks(self.stage, (rainy, estimate, hidden, cell), STAGE_RADIUS, CHANNELS)
            else:
                estimate, hidden, cell = self.stage(rainy, estimate, hidden, cell)
            outputs.append(estimate)
        return outputs

    def stage(self, rainy, estimate, hidden, cell) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stage: (rainy, previous estimate, LSTM hidden and cell) -> the next three."""
        # each Sequential is (conv, activation): conv_act fuses the two in CPU inference;
        # otherwise conv0 runs as itself, the feature stage finetune-real's moments tap hooks
        both = torch.cat((rainy, estimate), 1)
        x = conv_act(self.conv0[0], both, "relu") if fusion_applies(both) else self.conv0(both)
        x = torch.cat((x, hidden), 1)
        gate = {name: conv_act(getattr(self, f"conv_{name}")[0], x, act) for name, act in GATES.items()}
        cell = gate["f"] * cell + gate["i"] * gate["g"]
        hidden = gate["o"] * torch.tanh(cell)
        x = hidden
        for block in (self.res_conv1, self.res_conv2, self.res_conv3, self.res_conv4, self.res_conv5):
            x = F.relu(conv_act(block[2], conv_act(block[0], x, "relu"), "relu") + x)
        return self.conv(x) + rainy, hidden, cell

    def forward(self, rainy: torch.Tensor) -> torch.Tensor:
        return self.stages(rainy)[-1].clamp(0.0, 1.0)

    def training_loss(self, rainy: torch.Tensor, clean: torch.Tensor) -> dict[str, torch.Tensor]:
        """The paper's loss: negative SSIM of the final stage's output."""
        loss = ssim_loss(self.stages(rainy)[-1], clean)
        return {"loss": loss, "ssim": loss.detach()}
