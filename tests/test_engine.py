"""The inference engine: tiling arithmetic, exactness, dtypes and the out-of-memory policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from derain_cli.inference.device import pick_device, pick_dtype
from derain_cli.inference.engine import InferenceEngine
from derain_cli.inference.tiling import aligned_size, ramp, tile_starts
from derain_cli.errors import ImageError, UsageError
from derain_cli.methods import MethodSpec

from conftest import rainy_picture

SPEC = MethodSpec(
    name="toy", network="unused:Unused", summary="", paper="", size_multiple=8, size_offset=1,
    overlap=16, half_safe=True, default_tag="x", recipe=None,
)


class Invert(nn.Module):
    """A pointwise network: tiling must reproduce it exactly. Records tile sizes seen."""

    def __init__(self, oom_above: int | None = None, oom_off_cpu: bool = False) -> None:
        super().__init__()  # no parameters, so it can move off the meta device
        self.oom_above, self.oom_off_cpu = oom_above, oom_off_cpu
        self.tiles: list[tuple[int, int, str]] = []

    def forward(self, x):
        self.tiles.append((x.shape[-2], x.shape[-1], x.device.type))
        if self.oom_off_cpu and x.device.type != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        if self.oom_above is not None and max(x.shape[-2:]) > self.oom_above:
            raise torch.OutOfMemoryError("out of memory (injected)")
        return 1.0 - x


def test_tile_starts_cover_and_align():
    starts = tile_starts(aligned_size(1000, 8, 1), 201, 17)
    assert starts[0] == 0 and starts[-1] + 201 == aligned_size(1000, 8, 1)
    assert all(s % 8 == 0 for s in starts)
    assert all(b - a <= 201 - 17 for a, b in zip(starts, starts[1:]))
    assert tile_starts(100, 200, 16) == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 16, 16)


def test_aligned_size():
    assert [aligned_size(n, 16, 1) for n in (1, 2, 17, 18, 481)] == [1, 17, 17, 33, 481]
    assert aligned_size(100, 16) == 112


def test_ramp_is_zero_at_shared_edges_and_one_inside():
    w = ramp(100, 40, True, True)
    assert w[0] == 0 and w[-1] == 0 and w[50] == 1
    assert np.all(np.diff(w[:40]) >= 0)
    assert np.all(ramp(100, 40, False, False) == 1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_tiled_pointwise_network_is_exact(dtype):
    base = rainy_picture(123, 157)
    image = {np.uint8: base, np.uint16: base.astype(np.uint16) * 257, np.float32: base.astype(np.float32) / 255}[dtype]
    model = Invert()
    out = InferenceEngine(model, SPEC, "cpu", tile=48).run(image)["image"]
    assert out.dtype == image.dtype and out.shape == image.shape
    peak = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    assert np.allclose(out.astype(np.float64), peak - image.astype(np.float64), atol=1e-5 * peak)
    assert len(model.tiles) > 4
    assert all((h - 1) % 8 == 0 and (w - 1) % 8 == 0 for h, w, _ in model.tiles)


def test_out_of_memory_halves_the_tile():
    model = Invert(oom_above=100)
    notices = []
    image = rainy_picture(300, 300)
    out = InferenceEngine(model, SPEC, "cpu", tile=400, log=notices.append).run(image)["image"]
    assert np.array_equal(out, 255 - image)
    assert any("retrying with" in n for n in notices)
    assert max(max(h, w) for h, w, _ in model.tiles[-4:]) <= 100


def test_out_of_memory_on_an_accelerator_falls_back_to_cpu():
    # The meta device stands in for a GPU: every tile there runs out of memory.
    model = Invert(oom_off_cpu=True)
    notices = []
    engine = InferenceEngine(model, SPEC, torch.device("meta"), precision="fp32", tile=256, log=notices.append)
    image = rainy_picture(90, 90)
    out = engine.run(image)["image"]
    assert np.array_equal(out, 255 - image)
    assert engine.device.type == "cpu"
    assert any("falling back to the CPU" in n for n in notices)
    assert model.tiles[0][2] == "meta" and model.tiles[-1][2] == "cpu"


def test_out_of_memory_on_cpu_at_the_smallest_tile_is_an_image_error():
    engine = InferenceEngine(Invert(oom_above=1), SPEC, "cpu", tile=256)
    with pytest.raises(ImageError, match="out of memory on the CPU"):
        engine.run(rainy_picture(64, 64))


def test_bad_arrays_are_value_errors():
    engine = InferenceEngine(Invert(), SPEC, "cpu")
    with pytest.raises(ValueError, match="RGB"):
        engine.run(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        engine.run(np.zeros((10, 10, 3), np.int32))


def test_device_and_precision_choice():
    assert pick_device("auto").type in ("cuda", "mps", "cpu")
    assert pick_dtype("auto", torch.device("cpu"), True) == torch.float32
    assert pick_dtype("auto", torch.device("cuda"), True) == torch.float16
    assert pick_dtype("auto", torch.device("cuda"), False) == torch.float32
    assert pick_dtype("bf16", torch.device("cpu"), False) == torch.bfloat16
    with pytest.raises(UsageError, match="GPU only"):
        pick_dtype("fp16", torch.device("cpu"), True)
    with pytest.raises(UsageError):
        pick_dtype("fp8", torch.device("cpu"), True)
