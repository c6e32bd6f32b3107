"""Metrics against scikit-image (0.22+) as the reference implementation, and published values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from derain_cli.evaluation.metrics import psnr, rgb_to_y, ssim

from conftest import DATA, needs_shared, rainy_picture


def _pair(seed=0):
    a = rainy_picture(64, 80, seed=seed)
    rng = np.random.default_rng(seed)
    b = np.clip(a.astype(np.int16) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return a, b


def _tensor(a):
    return torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)[None]


def test_y_channel_matches_skimage_rgb2ycbcr():
    # skimage.color.rgb2ycbcr follows MATLAB's rgb2ycbcr (BT.601, Y in [16, 235])
    a, _ = _pair()
    ours = rgb_to_y(_tensor(a))[0, 0].numpy()
    assert np.allclose(ours, rgb2ycbcr(a)[..., 0], atol=1e-3)


@pytest.mark.parametrize("channel", ["y", "rgb"])
def test_psnr_and_ssim_match_skimage(channel):
    a, b = _pair(1)
    if channel == "y":
        ra, rb = rgb2ycbcr(a)[..., 0], rgb2ycbcr(b)[..., 0]
        kwargs = {}
    else:
        ra, rb = a.astype(np.float64), b.astype(np.float64)
        kwargs = {"channel_axis": 2}
    ref_psnr = peak_signal_noise_ratio(ra, rb, data_range=255)
    ref_ssim = structural_similarity(
        ra, rb, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, **kwargs
    )
    assert psnr(_tensor(a), _tensor(b), channel).item() == pytest.approx(ref_psnr, abs=1e-4)
    assert ssim(_tensor(a), _tensor(b), channel).item() == pytest.approx(ref_ssim, abs=1e-5)


def test_identical_images_and_bad_shapes():
    a = _tensor(rainy_picture(32, 32))
    assert psnr(a, a).item() == float("inf")
    assert ssim(a, a).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, a[..., :16])
    with pytest.raises(ValueError, match="channel"):
        psnr(a, a, channel="lab")


@needs_shared
def test_rainy_rain100l_inputs_score_the_published_26_90():
    # Rain100L's rainy inputs score 26.90 dB Y-PSNR against ground truth (data README)
    scores = []
    for rainy in sorted((DATA / "rain100l/test/rain").glob("*.png")):
        clean = DATA / "rain100l/test/norain" / rainy.name
        load = lambda p: _tensor(np.asarray(Image.open(p).convert("RGB")))  # noqa: E731
        scores.append(psnr(load(rainy), load(clean)).item())
    assert len(scores) == 100
    assert np.mean(scores) == pytest.approx(26.90, abs=0.005)
