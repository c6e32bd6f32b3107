"""Every registered method gets the same checks (timm-style): a new method cannot skip them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from derain_cli.inference.engine import InferenceEngine
from derain_cli.errors import UsageError
from derain_cli.methods import METHODS, get_method
from derain_cli.weights.loading import load_into, read_state_dict

from conftest import rainy_picture

NAMES = [spec.name for spec in METHODS]


def _built(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_method(name).build().eval()


def test_unknown_method_names_closest_match():
    with pytest.raises(UsageError, match=r"unknown method 'lpnt'.*Did you mean 'lpnet'.*Known methods: .*lpnet"):
        get_method("lpnt")


@pytest.mark.parametrize("name", NAMES)
def test_contract_is_consistent(name):
    spec = get_method(name)
    assert spec.size_multiple >= 1 and 0 <= spec.size_offset < spec.size_multiple
    assert spec.overlap >= 0 and spec.outputs[0] == "image"


@pytest.mark.parametrize("name", NAMES)
def test_forward_keeps_shape_and_range(name):
    x = torch.rand(2, 3, 49, 65)
    with torch.no_grad():
        y = _built(name)(x)
    y = y["image"] if isinstance(y, dict) else y
    assert y.shape == x.shape
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("name", NAMES)
def test_backward_reaches_every_parameter(name):
    model = _built(name).train()
    out = model(torch.rand(1, 3, 33, 33) * 0.8 + 0.1)
    out = out["image"] if isinstance(out, dict) else out
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


# LIR's full configuration (256-channel codes) needs a picture over 420 px to be tiled at all:
# ~1 TFLOP of CPU work, so its check is a slow one.
SLOW_TO_TILE = {"lir"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TO_TILE else n for n in NAMES])
def test_tiled_output_matches_whole_image(name):
    """Seams must stay below 1/255 when tiles overlap by the method's declared receptive field."""
    spec = get_method(name)
    tile = 2 * spec.overlap + 3 * spec.size_multiple  # forces several tiles both ways
    half = max(150, tile // 2 + 40)  # the picture must be larger than one tile each way
    image = np.concatenate([rainy_picture(half, max(200, tile + 80), seed=s) for s in range(2)], axis=0)
    image = image.astype(np.float32) / 255
    whole = InferenceEngine(_built(name), spec, "cpu", "fp32", tile=0).run(image)["image"]
    assert min(image.shape[:2]) > tile
    tiled = InferenceEngine(_built(name), spec, "cpu", "fp32", tile=tile).run(image)["image"]
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= 1.0 / 255


@pytest.mark.parametrize("name", NAMES)
def test_safetensors_round_trip(name, tmp_path):
    model = _built(name, seed=1)
    path = tmp_path / f"{name}.safetensors"
    save_file(model.state_dict(), str(path))
    reloaded = load_into(_built(name, seed=2), read_state_dict(path), str(path))
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        a, b = model(x), reloaded(x)
    a = a["image"] if isinstance(a, dict) else a
    b = b["image"] if isinstance(b, dict) else b
    assert torch.equal(a, b)
    assert set(load_file(str(path))) == set(model.state_dict())
