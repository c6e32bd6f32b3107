"""LPNet against the paper and the authors' released model."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method
from derain_cli.methods.lpnet import LPNet, LaplacianPyramid, state_dict_from_tensorflow

from conftest import REFERENCE, DATA, needs_shared


def test_parameter_count_is_the_papers():
    assert sum(p.numel() for p in LPNet().parameters()) == 7548


def test_pyramid_is_a_perfect_reconstruction():
    pyramid = LaplacianPyramid()
    x = torch.rand(1, 3, 37, 50)
    bands = pyramid.split(x)
    rebuilt = bands[-1]
    for band in reversed(bands[:-1]):
        rebuilt = band + pyramid.up(rebuilt, band.shape[-2:])
    assert torch.allclose(rebuilt, x, atol=1e-6)
    assert [b.shape[-1] for b in bands] == [50, 25, 13, 7, 4]


def test_pyramid_kernel_is_the_binomial_filter():
    # 5x5 outer product of [1, 4, 6, 4, 1] / 16, the fixed kernel of Fu et al.
    k = np.array([1, 4, 6, 4, 1]) / 16
    assert np.allclose(LaplacianPyramid().kernel[0, 0].numpy(), np.outer(k, k))


def official_lpnet(regime: str = "rain100l") -> LPNet:
    """The authors' TensorFlow weights (../shared/reference/lpnet) in derain's LPNet."""
    model = LPNet()
    arrays = np.load(REFERENCE / "lpnet" / f"official_{regime}.npz")
    model.load_state_dict(state_dict_from_tensorflow(arrays), strict=True)
    return model.eval()


@needs_shared
def test_reproduces_the_authors_output():
    rainy = np.asarray(Image.open(DATA / "rain100l/test/rain/norain-1.png").convert("RGB"), dtype=np.float32) / 255
    expected = np.load(REFERENCE / "lpnet/official_rain100l_output_norain-1.npy")
    model = official_lpnet()
    with torch.no_grad():
        direct = model(torch.from_numpy(rainy).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
    assert np.abs(direct - expected).max() < 1e-4
    # the shared engine (padding to 16k + 1, whole image) gives the same pixels
    engine = InferenceEngine(model, get_method("lpnet"), "cpu", "fp32", tile=0)
    assert np.abs(engine.run(rainy)["image"] - expected).max() < 1e-4
