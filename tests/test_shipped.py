"""The checkpoints derain ships: bundled, verified, working offline, scoring what docs say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import derain_cli
from derain_cli.evaluation.benchmark import evaluate
from derain_cli.cli import app
from derain_cli.weights.manifest import load_manifest
from derain_cli.weights.resolve import resolve

from conftest import DATA, needs_shared

REPO = Path(__file__).resolve().parents[1]


def test_every_manifest_entry_resolves_offline_to_a_verified_bundled_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    entries = load_manifest()
    shipped = {f"{m}.{t}" for m in ("lpnet", "ddn", "msdn", "jorder") for t in ("rain100l", "rain100h")}
    assert shipped <= set(entries)
    for name, entry in entries.items():
        if entry.by_authors:  # the authors' files are downloaded from them, never bundled (test_authors_weights.py)
            assert entry.file is None, name
            continue
        resolved = resolve(name)  # checks the sha256
        assert resolved.source == "bundled" and resolved.path.stat().st_size < 2_000_000, name
        if entry.trained.startswith("converted"):  # another's weights whose licence permits it: notice in the card
            card = (REPO / "docs" / "weights" / f"{name}.md").read_text(encoding="utf-8")
            assert "BSD" in entry.license and "Redistributions in binary form must reproduce" in card, name
            continue
        assert entry.license == "MIT" and ("derain train" in entry.trained or "derain finetune-real" in entry.trained)


def test_readme_main_job_works_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = REPO / "examples" / "rainy_scene.jpg"
    out = tmp_path / "rainy_scene_derained.jpg"
    result = CliRunner().invoke(app, ["remove", str(src), "-o", str(out), "--offline"])
    assert result.exit_code == 0, result.output
    before, after = (np.asarray(Image.open(p), dtype=np.float32) for p in (src, out))
    assert before.shape == after.shape
    assert np.abs(before - after).mean() > 2.0  # streaks were removed, not copied through


# Scores recorded in docs/weights.md (derain benchmark, Y channel, rounded outputs, whole images)
DOCUMENTED = [
    ("lpnet.rain100l", "rain100l", 31.06, 0.9337),
    ("lpnet.rain100h", "rain100h", 20.49, 0.6406),
    ("ddn.rain100l", "rain100l", 30.10, 0.9023),
    ("ddn.rain100h", "rain100h", 18.90, 0.4950),
    ("msdn.rain100l", "rain100l", 31.63, 0.9265),
    ("msdn.rain100h", "rain100h", 22.29, 0.6721),
    ("jorder.rain100l", "rain100l", 30.43, 0.9069),
    ("jorder.rain100h", "rain100h", 20.53, 0.5854),
    ("lpnet.real", "rain100l", 30.52, 0.9221),  # the default: distilled from spanet.spa on real photos (real_rain.md)
    ("spanet.spa", "rain100l", 29.33, 0.9022),  # the SPANet authors' real-rain weights, converted
    ("lir-small.rain100l", "rain100l", 19.60, 0.6071),  # unsupervised, undertrained (docs/weights.md)
]


@pytest.mark.slow
@needs_shared
@pytest.mark.parametrize("name, dataset, psnr, ssim", DOCUMENTED)
def test_shipped_checkpoints_score_what_the_docs_say(name, dataset, psnr, ssim):
    restorer = derain_cli.load(name, device="cpu", tile=0, precision="fp32")  # the documented figures are fp32
    result = evaluate(restorer, DATA / dataset / "test")
    assert len(result.images) == 100
    assert result.psnr == pytest.approx(psnr, abs=0.01) and result.ssim == pytest.approx(ssim, abs=0.0005)
