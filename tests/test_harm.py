"""The no-reference harm measures: they read zero harm for a perfect derainer, and they catch
a darkening and a blur of known size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from derain_cli.evaluation.harm import BRIGHT, measure, removed_light_mask
from derain_cli.data.synth import STYLES, add_rain


def _scene(size: int = 160) -> np.ndarray:
    """A clean picture with edges, texture and bright and dark areas, uint8 (H, W, 3)."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([x, y, 1 - x], axis=2) * 0.5 + 0.25
    base[: size // 3, : size // 2] = 0.92  # a white wall
    base[-size // 4 :, -size // 3 :] = 0.08  # a dark doorway
    base[(np.floor(x * 12) + np.floor(y * 12)) % 2 == 0] *= 0.9  # a tiled pattern: edges everywhere
    base += rng.normal(0, 0.01, base.shape)
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def _pair():
    clean = _scene()
    rainy = add_rain(clean, STYLES["light"], 0, 1)
    return rainy.astype(np.float32) / 255, clean.astype(np.float32) / 255


def test_a_perfect_derainer_does_no_harm_and_removes_the_streaks():
    rainy, clean = _pair()
    rain = removed_light_mask(rainy, clean)
    assert 0.01 < rain.mean() < 0.6
    harm = measure(rainy, clean, rain)
    assert abs(harm.bright_shift) < 1.0 and abs(harm.dark_shift) < 1.0 and harm.colour_shift < 1.5
    assert 0.9 < harm.detail_kept < 1.1 and harm.streaks_left < 0.8
    idle = measure(rainy, rainy, rain)  # a model that does nothing leaves every streak
    assert idle.streaks_left == pytest.approx(1.0) and idle.detail_kept == pytest.approx(1.0) and idle.bright_shift == 0


def test_darkened_whites_read_as_their_size():
    rainy, clean = _pair()
    rain = removed_light_mask(rainy, clean)
    darker = clean.copy()
    luma = clean @ np.array([0.299, 0.587, 0.114], np.float32)
    darker[luma > BRIGHT - 0.05] -= 40 / 255  # whites lose 40 grey levels, nothing else changes
    harm = measure(rainy, np.clip(darker, 0, 1), rain)
    assert harm.bright_shift == pytest.approx(-40, abs=2.5)
    assert abs(harm.dark_shift) < 1.0


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_a_blur_of_known_size_loses_detail_in_order(sigma):
    rainy, clean = _pair()
    rain = removed_light_mask(rainy, clean)
    blurred = cv2.GaussianBlur(clean, (0, 0), sigma)
    kept = measure(rainy, blurred, rain).detail_kept
    sharper = measure(rainy, cv2.GaussianBlur(clean, (0, 0), sigma / 2), rain).detail_kept
    assert kept < sharper < 1.0 and kept < {1.0: 0.6, 2.0: 0.35}[sigma]


def _photos_and_checkpoints(tmp_path, darken: float):
    """PhotoSampler over rainy scenes; lpnet.rain100l's weights as they are and with every
    output shifted down by ``darken`` (a result that darkens everything)."""
    import torch
    from PIL import Image

    from derain_cli.data.pairs import PhotoSampler, find_photos
    from derain_cli.inference.checkpoints import export_safetensors
    from derain_cli.weights.loading import read_state_dict
    from derain_cli.weights.resolve import resolve

    folder = tmp_path / "photos"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(add_rain(_scene(96), STYLES["heavy"], k, 2)).save(folder / f"p{k}.png")
    state = read_state_dict(resolve("lpnet.rain100l").path)
    same, darker = tmp_path / "same.safetensors", tmp_path / "darker.safetensors"
    export_safetensors(state, same)
    state = {k: v.clone() for k, v in state.items()}
    state["subnets.0.output.bias"] -= darken  # the finest level's output: every pixel darker
    export_safetensors({k: v.contiguous() for k, v in state.items()}, darker)
    return PhotoSampler(find_photos(folder), 32, 2), same, darker


def test_the_guard_refuses_a_result_that_darkens_and_passes_one_that_does_not(tmp_path):
    from derain_cli.errors import HarmfulResult
    from derain_cli.training.finetune import FinetuneRequest, _harm_guard

    photos, same, darker = _photos_and_checkpoints(tmp_path, darken=0.08)
    card = tmp_path / "card.md"
    card.write_text("# card\n")
    request = FinetuneRequest(photos=tmp_path / "photos", device="cpu")
    _harm_guard(request, "lpnet.rain100l", photos, same, card, log=lambda m: None)
    assert "no more harm than the start" in card.read_text()
    with pytest.raises(HarmfulResult, match=r"harms your photos more than lpnet.rain100l does \(whites 2\d.\d levels darker"):
        _harm_guard(request, "lpnet.rain100l", photos, darker, card, log=lambda m: None)
    unguarded = FinetuneRequest(photos=tmp_path / "photos", device="cpu", guard=False)
    _harm_guard(unguarded, "lpnet.rain100l", photos, darker, card, log=lambda m: None)
    assert "MORE HARM than the start: whites" in card.read_text() and "(saved: --no-guard)" in card.read_text()
