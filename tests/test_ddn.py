"""DDN: guided-filter detail layer, the paper's size, and the SIRR authors' released network."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method
from derain_cli.methods.ddn import DDN, box_mean, guided_filter_self, state_dict_from_tensorflow

from conftest import DATA, REFERENCE, needs_shared


def test_parameter_count():
    assert sum(p.numel() for p in DDN().parameters()) == 57_369  # "about 57k" in the paper


def test_box_mean_divides_by_pixels_inside_the_image():
    ones = torch.ones(1, 1, 20, 30)
    assert torch.allclose(box_mean(ones, 15), ones)
    x = torch.rand(1, 1, 9, 9)
    assert torch.allclose(box_mean(x, 15), x.mean().expand_as(x), atol=1e-6)  # window covers it all


def test_detail_of_a_flat_image_is_zero():
    flat = torch.full((1, 3, 40, 40), 0.3)
    assert torch.allclose(guided_filter_self(flat), flat, atol=1e-6)
    assert DDN().detail(flat).abs().max() < 1e-5  # float32 box sums


def test_ddn_is_declared_untileable_and_the_engine_obeys():
    spec = get_method("ddn")
    assert not spec.tileable
    torch.manual_seed(0)
    model = DDN().eval()
    image = np.random.default_rng(0).random((200, 260, 3), dtype=np.float32)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    InferenceEngine(model, spec, "cpu", tile=64).run(image)
    assert seen == [(200, 260)]


@needs_shared
def test_reproduces_the_sirr_authors_output():
    arrays = np.load(REFERENCE / "sirr/official.npz")
    model = DDN()
    model.load_state_dict(state_dict_from_tensorflow(arrays), strict=True)
    model.eval()
    rainy = np.asarray(Image.open(DATA / "rain100l/test/rain/norain-1.png").convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(rainy).permute(2, 0, 1)[None]
    with torch.no_grad():
        detail = model.detail(x)[0].permute(1, 2, 0).numpy()
        out = model(x)[0].permute(1, 2, 0).numpy()
    assert np.abs(detail - np.load(REFERENCE / "sirr/official_rain100l_detail_norain-1.npy")).max() < 1e-4
    assert np.abs(out - np.load(REFERENCE / "sirr/official_rain100l_output_norain-1.npy")).max() < 1e-4


def test_an_untrained_network_starts_near_the_identity():
    """The residual's norm starts small, so training begins from 'return the input'."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        gap = (DDN().eval()(x) - x).pow(2).mean()
    assert 10 * torch.log10(1 / gap) > 30


def test_separable_box_mean_equals_the_two_dimensional_window():
    x = torch.rand(2, 3, 37, 52)
    direct = torch.nn.functional.avg_pool2d(x, 31, stride=1, padding=15, count_include_pad=False)
    assert torch.allclose(box_mean(x, 15), direct, atol=2e-6)
