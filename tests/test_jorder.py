"""JORDER: mask derivation, the rain model O = B + R * S, and the --save-mask output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import DATA, make_checkpoint, needs_shared, rainy_picture
from derain_cli.cli import app
from derain_cli.methods import get_method
from derain_cli.methods.jorder import MASK_THRESHOLD, JORDER, rain_mask

runner = CliRunner()


def test_rain_mask_is_the_thresholded_residual():
    clean = torch.full((1, 3, 8, 8), 0.4)
    rainy = clean.clone()
    rainy[..., 2, :] += 0.3  # a bright streak row
    rainy[..., 5, 3] += MASK_THRESHOLD / 2  # faint change: below the threshold
    rainy[0, 0, 6, 6] += 2 * MASK_THRESHOLD  # one channel only: its mean stays below the threshold
    mask = rain_mask(rainy, clean)
    expected = torch.zeros(1, 1, 8, 8)
    expected[..., 2, :] = 1
    assert mask.shape == (1, 1, 8, 8)
    assert torch.equal(mask, expected)


def test_parameter_count_and_declared_outputs():
    model = JORDER()
    assert sum(p.numel() for p in model.parameters()) == 312_452
    spec = get_method("jorder")
    assert spec.outputs == ("image", "mask")
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 33, 47))
    assert out["image"].shape == (1, 3, 33, 47) and out["mask"].shape == (1, 1, 33, 47)
    assert 0 <= float(out["mask"].min()) and float(out["mask"].max()) <= 1


def test_regions_detected_as_rain_free_are_left_untouched():
    """B = O - R * S: with the detector saying 'no rain' everywhere the image passes through."""
    torch.manual_seed(0)
    model = JORDER().eval()
    with torch.no_grad():
        model.detect[-1].bias.fill_(-40.0)  # sigmoid -> 0
        x = torch.rand(1, 3, 24, 24)
        out = model(x)
    assert torch.allclose(out["image"], x, atol=1e-6)
    assert float(out["mask"].max()) < 1e-6


def test_training_loss_trains_all_three_outputs():
    torch.manual_seed(0)
    model = JORDER(channels=8)
    clean = torch.rand(2, 3, 16, 16) * 0.5
    rainy = clean.clone()
    rainy[..., ::4, :] += 0.4
    losses = model.training_loss(rainy, clean)
    assert set(losses) == {"loss", "background", "streaks", "mask"}
    losses["loss"].backward()
    for head in (model.detect, model.streaks, model.head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_save_mask_writes_a_grayscale_map_beside_the_output(tmp_path):
    weights = make_checkpoint("jorder", tmp_path / "jorder.safetensors")
    src = tmp_path / "street.png"
    Image.fromarray(rainy_picture(40, 52)).save(src)
    result = runner.invoke(app, ["remove", str(src), "-m", "jorder", "-w", str(weights), "--device", "cpu",
                                 "-o", str(tmp_path / "out"), "--save-mask"])
    assert result.exit_code == 0, result.output
    mask = Image.open(tmp_path / "out" / "street_mask.png")
    assert mask.mode == "L" and mask.size == (52, 40)
    assert (tmp_path / "out" / "street.png").is_file()

    # an existing mask is an output like any other: not replaced without --overwrite
    again = runner.invoke(app, ["remove", str(src), "-m", "jorder", "-w", str(weights), "--device", "cpu",
                                "-o", str(tmp_path / "out"), "--save-mask"])
    assert again.exit_code == 1 and "output exists" in again.output


def test_save_mask_with_a_method_that_predicts_none_is_a_usage_error(tmp_path, lpnet_checkpoint):
    src = tmp_path / "street.png"
    Image.fromarray(rainy_picture(40, 52)).save(src)
    result = runner.invoke(app, ["remove", str(src), "-w", str(lpnet_checkpoint), "--save-mask"])
    assert result.exit_code == 2
    assert "lpnet predicts no mask" in result.output and "jorder" in result.output
    assert not list(tmp_path.glob("street_*"))


def test_mask_tiles_blend_like_the_image(tmp_path):
    """The mask is a declared output, so the engine tiles and blends it like the image."""
    from derain_cli.inference.engine import InferenceEngine

    torch.manual_seed(1)
    spec = get_method("jorder")
    model = JORDER()
    picture = rainy_picture(150, 170)
    whole = InferenceEngine(model, spec, "cpu", "fp32", tile=0).run(picture)
    tiled = InferenceEngine(model, spec, "cpu", "fp32", tile=112).run(picture)
    diff = np.abs(whole["mask"].astype(int) - tiled["mask"].astype(int))
    assert diff.max() <= 1


@pytest.mark.slow
@needs_shared
def test_shipped_mask_finds_the_real_streaks():
    """On Rain100L test pairs the shipped model's rain probability is far higher on the
    streaks (thresholded O - B) than elsewhere; an untrained detector scores ~1x."""
    import derain_cli
    from derain_cli.data.pairs import find_pairs, load_pair

    restorer = derain_cli.load("jorder.rain100l", device="cpu", tile=0)
    for pair in find_pairs(DATA / "rain100l" / "test")[:3]:
        rainy, clean = load_pair(pair)
        prob = restorer.run(rainy)["mask"][..., 0].astype(np.float32) / 255
        as_tensor = [torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255 for a in (rainy, clean)]
        streaks = rain_mask(*as_tensor)[0, 0].numpy() > 0
        assert prob[streaks].mean() > 2 * prob[~streaks].mean()


def test_api_saves_masks_through_the_same_options(tmp_path, lpnet_checkpoint):
    import derain_cli
    from derain_cli.media.batch import OutputOptions
    from derain_cli.errors import UsageError

    src = tmp_path / "a.png"
    Image.fromarray(rainy_picture(30, 36)).save(src)
    weights = make_checkpoint("jorder", tmp_path / "jorder.safetensors")
    options = OutputOptions(output=tmp_path / "out", extras=("mask",))
    results = derain_cli.derain_paths([src], options=options, method="jorder", weights=str(weights), device="cpu")
    assert [r.status for r in results] == ["ok"] and (tmp_path / "out" / "a_mask.png").is_file()
    with pytest.raises(UsageError, match="lpnet predicts no mask"):
        derain_cli.derain_paths([src], options=options, method="lpnet", weights=str(lpnet_checkpoint), device="cpu")
