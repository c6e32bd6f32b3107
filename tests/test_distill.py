"""Distillation (derain train --teacher NAME --photos DIR): the teacher's outputs are made once
and cached, the student moves towards them, resume is exact and refuses another teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import derain_cli
from derain_cli.cli import app
from derain_cli.training.objectives.distill import TEACHER_FOLDER, distill_objective
from derain_cli.training.trainer import TrainConfig, Trainer
from derain_cli.errors import UsageError
from derain_cli.methods import get_method

from conftest import rainy_picture

TEACHER = "lpnet.rain100h"  # bundled and fast: the mechanics do not depend on which teacher


def _photos(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rainy_picture(56, 72, seed=10 + i)).save(root / f"p{i}.jpg", quality=95)
    return root


def _trainer(tmp_path: Path, out: str, iterations: int, teacher: str = TEACHER, lr: float = 1e-3) -> Trainer:
    config = TrainConfig(method="lpnet", data="photos", out=str(tmp_path / out), iterations=iterations, batch_size=4,
                         patch_size=32, lr=lr, val_every=iterations, checkpoint_every=2, device="cpu")
    objective = distill_objective(teacher, tmp_path / "photos", [], batch_size=4, patch_size=32, pairs_share=0.25,
                                  max_side=2048, seed=0, out=tmp_path / out, device="cpu", log=lambda m: None)
    return Trainer(get_method("lpnet"), config, objective, [], log=lambda m: None)


def _distance_to_teacher(net: torch.nn.Module, tmp_path: Path, out: str) -> float:
    pairs = sorted((tmp_path / out / TEACHER_FOLDER / "rain").glob("*.png"))
    total = 0.0
    for rainy in pairs:
        x = torch.tensor(np.asarray(Image.open(rainy)), dtype=torch.float32).permute(2, 0, 1)[None] / 255
        y = torch.tensor(np.asarray(Image.open(rainy.parent.parent / "norain" / rainy.name)), dtype=torch.float32)
        with torch.no_grad():
            total += float((net.eval()(x)[0].permute(1, 2, 0) * 255 - y).abs().mean())
    return total / len(pairs)


def test_student_moves_towards_the_teacher(tmp_path):
    _photos(tmp_path / "photos")
    trainer = _trainer(tmp_path, "run", 30, lr=3e-3)
    torch.manual_seed(0)
    before = _distance_to_teacher(get_method("lpnet").build(), tmp_path, "run")  # the trainer's start: random init
    trainer.train()
    after = _distance_to_teacher(trainer.net, tmp_path, "run")
    assert after < 0.7 * before, (before, after)
    assert len(list((tmp_path / "run" / TEACHER_FOLDER / "norain").glob("*.png"))) == 3


def test_resume_is_exact_and_keeps_the_teacher(tmp_path, monkeypatch):
    _photos(tmp_path / "photos")
    straight = _trainer(tmp_path, "straight", 6)
    straight.train()
    crashing = _trainer(tmp_path, "crashed", 6)
    original = crashing.objective.taught.batch

    def crash(step, *args):
        if step == 4:
            raise KeyboardInterrupt("killed")
        return original(step, *args)

    monkeypatch.setattr(crashing.objective.taught, "batch", crash)
    with pytest.raises(KeyboardInterrupt):
        crashing.train()
    made = {p: p.stat().st_mtime_ns for p in (tmp_path / "crashed" / TEACHER_FOLDER).rglob("*.png")}
    resumed = _trainer(tmp_path, "crashed", 6)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "crashed" / TEACHER_FOLDER).rglob("*.png")} == made  # cached
    resumed.resume()
    resumed.train()
    for k, v in straight.net.state_dict().items():
        assert torch.equal(v, resumed.net.state_dict()[k]), k
    other = _trainer(tmp_path, "crashed", 6, teacher="lpnet.rain100l")
    with pytest.raises(UsageError, match="distilled from lpnet.rain100h .* resume with the same --teacher"):
        other.resume()


def test_cli_distils_and_mixes_labelled_pairs(tmp_path):
    _photos(tmp_path / "photos")
    data = tmp_path / "data"
    for i in range(3):
        rainy = rainy_picture(40, 48, seed=i)
        for sub, array in (("rain", rainy), ("norain", np.clip(rainy.astype(int) - 30, 0, 255).astype(np.uint8))):
            (data / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(data / sub / f"im{i}.png")
    args = ["train", str(data), "-m", "lpnet", "--teacher", TEACHER, "--photos", str(tmp_path / "photos"),
            "-o", str(tmp_path / "run"), "--iterations", "2", "--batch-size", "4", "--patch-size", "32",
            "--val-every", "2", "--val-split", "0.34", "--device", "cpu", "--tag", "taught", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    card = (tmp_path / "run" / "card.md").read_text()
    assert "lpnet.rain100h (sha256 " in card and "3 crops per step" in card and "2 pairs, 1 crops per step" in card
    assert derain_cli.load("lpnet.taught", device="cpu").run(rainy_picture(40, 40))["image"].shape == (40, 40, 3)


@pytest.mark.parametrize("extra, message", [
    (["--teacher", TEACHER], "needs both --teacher METHOD.TAG and --photos DIR"),
    (["--teacher", TEACHER, "--photos", "PHOTOS", "--rainy", "PHOTOS", "--clean", "PHOTOS", "-m", "lir-small"],
     "cannot be distilled"),
])
def test_cli_refuses_half_a_distillation(tmp_path, extra, message):
    _photos(tmp_path / "photos")
    extra = [str(tmp_path / "photos") if a == "PHOTOS" else a for a in extra]
    result = CliRunner().invoke(app, ["train", "-o", str(tmp_path / "run"), *extra])
    assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_distillation_under_torchrun_matches_one_process(tmp_path):
    """Two gloo processes: process 0 derains the photos, the other waits for its list; the run
    ends where one process with the full batch ends."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    _photos(tmp_path / "photos")
    common = ["-m", "lpnet", "--teacher", TEACHER, "--photos", str(tmp_path / "photos"), "--iterations", "3",
              "--batch-size", "4", "--patch-size", "32", "--val-every", "3", "--precision", "fp32", "--device", "cpu", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DERAIN_DATA_DIR": str(tmp_path / "data")}
    subprocess.run([sys.executable, "-m", "derain_cli", "train", "-o", str(tmp_path / "one"), *common, "--tag", "one"],
                   check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "derain_cli", "train", "-o", str(tmp_path / "two"), *common, "--tag", "two"],
                   check=True, env=env, timeout=300)
    one, two = (load_file(str(tmp_path / d / "final.safetensors")) for d in ("one", "two"))
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one)
    assert len(list((tmp_path / "two" / TEACHER_FOLDER / "norain").glob("*.png"))) == 3
