"""PReNet: the paper's size, and key-for-key compatibility with the authors' checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import derain_cli
from derain_cli.methods.prenet import PReNet
from derain_cli.evaluation.metrics import psnr
from derain_cli.weights.loading import load_into, read_state_dict

from conftest import DATA, REFERENCE, needs_shared


def test_parameter_count_is_the_papers():
    assert sum(p.numel() for p in PReNet().parameters()) == 168_963


def test_stage_count_and_residual_output():
    with torch.no_grad():
        stages = PReNet().stages(torch.rand(1, 3, 24, 24))
    assert len(stages) == 6


@needs_shared
@pytest.mark.parametrize("regime", ["rain100l", "rain100h"])
def test_authors_checkpoints_load_strictly(regime):
    path = REFERENCE / "prenet" / f"prenet6_{regime}.pth"
    state = read_state_dict(path)
    assert len(state) == 32
    load_into(PReNet(), state, str(path))  # raises on any missing / unexpected / misshaped key


@needs_shared
def test_authors_rain100l_checkpoint_derains_through_derain():
    restorer = derain_cli.load("prenet", weights=str(REFERENCE / "prenet/prenet6_rain100l.pth"), device="cpu", tile=0)
    load = lambda p: np.asarray(Image.open(p).convert("RGB"))  # noqa: E731
    rainy, clean = load(DATA / "rain100l/test/rain/norain-1.png"), load(DATA / "rain100l/test/norain/norain-1.png")
    t = lambda a: torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    before, after = psnr(t(rainy), t(clean)).item(), psnr(t(restorer(rainy)), t(clean)).item()
    assert after > before + 8  # measured: 27.30 -> 38.01 dB Y-PSNR
