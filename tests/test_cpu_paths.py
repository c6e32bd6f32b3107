"""CPU inference paths: cache blocking, balanced tiles, fused convolutions; all equal the plain ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from derain_cli.kernels import blocks, fused
from derain_cli.kernels.blocks import blocking_applies, run_in_blocks
from derain_cli.kernels.fused import conv_act, fusion_applies
from derain_cli.inference.engine import InferenceEngine
from derain_cli.inference.tiling import balanced_tile, tile_starts
from derain_cli.methods import get_method


class TwoInTwoOut(nn.Module):
    """A local stack of receptive radius 3 (three 3x3 convs) with two inputs and outputs."""

    radius = 3

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(5, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x, y):
        h = self.c(F.relu(self.b(F.relu(self.a(torch.cat((x, y), 1))))))
        return h[:, :3] + x, h[:, 3:]


@torch.no_grad()
def test_blocks_equal_the_whole_map(monkeypatch):
    monkeypatch.setattr(blocks, "CACHED_MAP_BYTES", 0)
    torch.manual_seed(0)
    net = TwoInTwoOut()
    x, y = torch.rand(2, 3, 61, 47), torch.rand(2, 2, 61, 47)
    whole = net(x, y)
    seen = []
    counted = lambda *t: seen.append(t[0].shape[-2:]) or net(*t)  # noqa: E731
    blocked = run_in_blocks(counted, (x, y), net.radius, 8, block=16)
    assert len(seen) == 2 * 4 * 3  # each of 2 pictures: 61 rows in 4 spans, 47 columns in 3
    for a, b in zip(whole, blocked):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # too little context: the blocks' borders show (the test can tell)
    short = run_in_blocks(net, (x, y), 1, 8, block=16)
    assert (short[0] - whole[0]).abs().max() > 1e-3


def test_maps_that_fit_the_caches_run_whole():
    seen = []
    x = torch.zeros(1, 3, 64, 64)
    run_in_blocks(lambda t: seen.append(t.shape) or t, (x,), 3, 16, block=16)
    assert seen == [x.shape]  # 64 x 64 x 16 channels x 4 bytes: far below the cache bound


def test_a_batch_that_overflows_the_caches_goes_picture_by_picture(monkeypatch):
    monkeypatch.setattr(blocks, "CACHED_MAP_BYTES", 64 * 64 * 16 * 4)  # one picture fits, two do not
    seen = []
    x = torch.rand(3, 3, 64, 64)
    out = run_in_blocks(lambda t: seen.append(t.shape) or 2 * t, (x,), 3, 16, block=16)
    assert seen == [torch.Size([1, 3, 64, 64])] * 3  # whole pictures, one at a time: no blocks
    torch.testing.assert_close(out, 2 * x)


def test_blocking_only_in_cpu_inference():
    x = torch.zeros(1, 3, 8, 8)
    with torch.no_grad():
        assert blocking_applies(x)
    assert not blocking_applies(x)  # gradients enabled: training


def test_balanced_tiles_cover_with_the_fewest_and_least_overlap():
    # 3009 px in 2049 px tiles (overlap 97, 16k + 1 sizes): two tiles of 1553, not 2049
    tile = balanced_tile(3009, 2049, 97, 16, 1)
    assert tile == 1553 and (tile - 1) % 16 == 0
    starts = tile_starts(3009, tile, 97)
    assert starts == [0, 1456] and starts[-1] + tile == 3009
    assert balanced_tile(500, 2049, 97, 16, 1) == 500  # fits: one tile, the picture's size
    assert len(tile_starts(3009, 2049, 97)) == 2  # as many tiles as the requested size needs


@pytest.mark.skipif(fused._CONV_POINTWISE is None, reason="this torch build has no oneDNN fused convolution")
def test_fused_convolutions_equal_the_plain_ops():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = torch.randn(1, 16, 40, 33).to(memory_format=torch.channels_last)
    with torch.no_grad():
        assert fusion_applies(x)
        out = conv_act(conv, x, "leaky_relu", 0.2)
        plain = F.leaky_relu(conv(x), 0.2)
        other_slope = conv_act(conv, x, "leaky_relu", 0.05)
        other_plain = F.leaky_relu(conv(x), 0.05)
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(other_slope, other_plain, atol=1e-5, rtol=1e-5)
    assert (other_slope - out).abs().max() > 1e-3  # the slope reaches the op
    for act, plain_act in (("relu", torch.relu), ("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        with torch.no_grad():
            torch.testing.assert_close(conv_act(conv, x, act), plain_act(conv(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method, block, size", [("lpnet", 48, (161, 129)), ("prenet", 40, (97, 83))])
@torch.no_grad()
def test_cpu_paths_equal_the_training_path(monkeypatch, method, block, size):
    """A network in blocks with fused activations (inference) = the network as trained."""
    monkeypatch.setattr(blocks, "CACHED_MAP_BYTES", 0)
    monkeypatch.setattr(blocks, "CPU_BLOCK", block)
    cuts = []
    spans = blocks._spans
    monkeypatch.setattr(blocks, "_spans", lambda length, b: cuts.append(length) or spans(length, b))
    torch.manual_seed(0)
    net = get_method(method).build().eval()
    x = torch.rand(1, 3, *size)
    fast = net(x)
    assert cuts  # the blocks really ran
    with torch.enable_grad():
        reference = net(x).detach()
    torch.testing.assert_close(fast, reference, atol=2e-6, rtol=0)


def test_large_tiles_reuse_one_blending_strip():
    """A picture several tile rows high comes out as the whole-image result (strip reuse)."""
    spec = get_method("lpnet")
    torch.manual_seed(0)
    net = spec.build()
    rng = np.random.default_rng(0)
    image = (rng.random((300, 90, 3)) * 255).astype(np.uint8)
    whole = InferenceEngine(net, spec, "cpu", precision="fp32", tile=0).run(image)["image"]
    tiled = InferenceEngine(net, spec, "cpu", precision="fp32", tile=113).run(image)["image"]
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
