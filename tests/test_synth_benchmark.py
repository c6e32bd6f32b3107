"""Rain synthesis and the benchmark command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from derain_cli.evaluation.benchmark import dataset_name, published_scores
from derain_cli.cli import app
from derain_cli.data.pairs import find_pairs
from derain_cli.evaluation.metrics import psnr
from derain_cli.data.synth import STYLES, add_rain

from conftest import DATA, needs_shared, rainy_picture
from test_training import make_dataset

runner = CliRunner()


def _psnr(a, b):
    t = lambda x: torch.from_numpy(x.astype(np.float32) / 255).permute(2, 0, 1)[None]  # noqa: E731
    return psnr(t(a), t(b)).item()


def test_synthesis_is_seeded_and_heavy_is_heavier():
    clean = (rainy_picture(120, 160) * 0.6).astype(np.uint8)
    light = add_rain(clean, STYLES["light"], 1, 0)
    assert np.array_equal(light, add_rain(clean, STYLES["light"], 1, 0))
    assert not np.array_equal(light, add_rain(clean, STYLES["light"], 2, 0))
    heavy = add_rain(clean, STYLES["heavy"], 1, 0)
    assert light.shape == heavy.shape == clean.shape and heavy.dtype == np.uint8
    # streaks only brighten in the light model; haze lifts everything in the heavy one
    assert np.all(light >= clean)
    assert _psnr(heavy, clean) < _psnr(light, clean) - 5
    assert 20 < _psnr(light, clean) < 40


def test_synth_cli_writes_a_trainable_layout(tmp_path):
    for i in range(3):
        Image.fromarray(rainy_picture(50, 60, seed=i)).save(tmp_path / f"c{i}.jpg")
    (tmp_path / "bad.png").write_bytes(b"")
    result = runner.invoke(app, ["synth", str(tmp_path), "-o", str(tmp_path / "pairs"), "--style", "heavy", "--copies", "2"])
    assert result.exit_code == 1 and "bad.png" in result.output
    pairs = find_pairs(tmp_path / "pairs")
    assert len(pairs) == 6 and pairs[0].rainy.name == pairs[0].clean.name
    first = np.asarray(Image.open(pairs[0].rainy))
    runner.invoke(app, ["synth", str(tmp_path / "c0.jpg"), "-o", str(tmp_path / "again"), "--copies", "2"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again/rain/c0_0.png")), first)



def test_synth_refuses_an_existing_pair_folder_and_never_overwrites_inputs(tmp_path):
    """A real pair folder X (rain/ + norain/): `synth X/norain -o X` must not replace X/rain."""
    for i in range(2):
        for part in ("rain", "norain"):
            (tmp_path / "X" / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rainy_picture(30, 40, seed=i + 10 * (part == "rain"))).save(tmp_path / "X" / part / f"p{i}.png")
    before = {p: p.read_bytes() for p in (tmp_path / "X").rglob("*.png")}
    result = runner.invoke(app, ["synth", str(tmp_path / "X/norain"), "-o", str(tmp_path / "X")])
    assert result.exit_code == 2, result.output
    assert "already holds pairs" in result.output and "p0.png exists and 1 more" in result.output
    assert "--overwrite" in result.output and len(result.output.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in (tmp_path / "X").rglob("*.png")} == before
    # an earlier set under other names, too: a second run with another seed is refused
    runner.invoke(app, ["synth", str(tmp_path / "X/norain"), "-o", str(tmp_path / "S")])
    result = runner.invoke(app, ["synth", str(tmp_path / "X/rain"), "-o", str(tmp_path / "S"), "--seed", "3"])
    assert result.exit_code == 2 and "already holds pairs" in result.output
    # --overwrite replaces rain/, but the clean inputs in norain/ are kept as they are
    result = runner.invoke(app, ["synth", str(tmp_path / "X/norain"), "-o", str(tmp_path / "X"), "--overwrite"])
    assert result.exit_code == 0, result.output
    clean = sorted((tmp_path / "X/norain").iterdir())
    assert all(p.read_bytes() == before[p] for p in clean)
    assert (tmp_path / "X/rain/p0.png").read_bytes() != before[tmp_path / "X/rain/p0.png"]
    # rain/ outputs that are the inputs themselves: refused even with --overwrite
    result = runner.invoke(app, ["synth", str(tmp_path / "X/rain"), "-o", str(tmp_path / "X"), "--overwrite"])
    assert result.exit_code == 2 and "would overwrite an input" in result.output
    # a fresh folder from a norain/ folder alone: the pairs' clean side is the inputs, untouched
    lone = tmp_path / "lone"
    (lone / "norain").mkdir(parents=True)
    Image.fromarray(rainy_picture(30, 40)).save(lone / "norain/a.png")
    kept = (lone / "norain/a.png").read_bytes()
    assert runner.invoke(app, ["synth", str(lone / "norain"), "-o", str(lone)]).exit_code == 0
    assert (lone / "norain/a.png").read_bytes() == kept and (lone / "rain/a.png").is_file()

def test_benchmark_scores_match_the_metrics_and_write_reports(tmp_path, lpnet_checkpoint):
    import derain_cli

    data = make_dataset(tmp_path / "rain100x" / "test", n=3)
    result = runner.invoke(app, ["benchmark", str(data), "-w", str(lpnet_checkpoint), "--device", "cpu",
                                 "--json", str(tmp_path / "b.json"), "--csv", str(tmp_path / "b.csv"),
                                 "--markdown", str(tmp_path / "b.md")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b.json").read_text())
    summary = report["results"][0]
    assert summary["dataset"] == "rain100x" and summary["pairs"] == 3 and summary["parameters"] == 7548
    assert "Y channel" in report["convention"]
    restorer = derain_cli.load("lpnet", weights=str(lpnet_checkpoint), device="cpu", tile=0)
    pair = find_pairs(data)[0]
    rainy, clean = (np.asarray(Image.open(p).convert("RGB")) for p in (pair.rainy, pair.clean))
    expected = _psnr(restorer(rainy), clean)
    assert abs(report["results"][0]["images"][0]["psnr"] - expected) < 1e-6
    assert len((tmp_path / "b.csv").read_text().splitlines()) == 4
    assert "| lpnet |" in (tmp_path / "b.md").read_text()


def test_published_scores_cite_sources():
    scores = published_scores()
    assert scores[("lpnet", "rain100l")]["psnr"] == 33.42
    assert all(row["source"] for row in scores.values())
    assert published_scores("rgb") == {}
    assert dataset_name(__import__("pathlib").Path("x/rain100h/test")) == "rain100h"


def test_truncation_follows_the_authors_protocol(tmp_path, lpnet_checkpoint):
    import derain_cli
    from derain_cli.evaluation.benchmark import evaluate

    data = make_dataset(tmp_path / "set", n=2)
    restorer = derain_cli.load("lpnet", weights=str(lpnet_checkpoint), device="cpu", tile=0)
    scored = evaluate(restorer, data, quantize="truncate")
    pair = find_pairs(data)[0]
    rainy, clean = (np.asarray(Image.open(p).convert("RGB")) for p in (pair.rainy, pair.clean))
    floored = np.floor(restorer(rainy.astype(np.float32) / 255) * 255).astype(np.uint8)
    assert abs(scored.images[0].psnr - _psnr(floored, clean)) < 1e-6


def test_input_row_scores_the_rainy_pictures_themselves(tmp_path):
    data = make_dataset(tmp_path / "rain100x" / "test", n=2)
    result = runner.invoke(app, ["benchmark", str(data), "-m", "lpnet", "--input", "--device", "cpu",
                                 "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "b.json").read_text())["results"]
    assert [r["method"] for r in rows] == ["input", "lpnet"]
    pair = find_pairs(data)[0]
    rainy, clean = (np.asarray(Image.open(p).convert("RGB")) for p in (pair.rainy, pair.clean))
    from derain_cli.evaluation.metrics import score_uint8

    assert rows[0]["images"][0]["psnr"] == pytest.approx(score_uint8(rainy, clean, "y")[0], abs=1e-9)
    assert "| input | - | rain100x | 2 |" in (tmp_path / "b.md").read_text()


@pytest.mark.slow
@needs_shared
def test_input_row_gives_rain100l_its_known_26_90():
    from derain_cli.evaluation.benchmark import evaluate_input

    assert evaluate_input(DATA / "rain100l/test").psnr == pytest.approx(26.90, abs=0.005)
