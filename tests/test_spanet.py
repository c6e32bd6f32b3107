"""SPANet: the IRNN scan against a plain transcription of the authors' CUDA kernel, the strict
load of their released state dict, and the paper's training mask."""

from __future__ import annotations

import pytest
import torch

from derain_cli.kernels.irnn import DIRECTIONS, irnn_scan
from derain_cli.methods.spanet import SPANet, rain_mask

from conftest import REFERENCE, needs_shared

SPANET_FILE = REFERENCE / "spanet" / "spanet_spa_latest.pt"


def _kernel_transcription(x, weights, biases):
    """IRNN_Forward_cuda.cu's loops, one pixel at a time, as written there."""
    _, channels, height, width = x.shape
    out = {d: torch.empty_like(x) for d in DIRECTIONS}
    relu = lambda v: v if v > 0 else 0.0  # noqa: E731 (the kernel's ternary)
    for b in range(x.shape[0]):
        for c in range(channels):
            for h in range(height):
                for w in range(width):
                    def run(start, indices, direction):
                        value = relu(float(x[b, c, start[0], start[1]]))
                        for i in indices:
                            value = relu(value * float(weights[direction][c]) + float(biases[direction][c])
                                         + float(x[b, c, i[0], i[1]]))
                        out[direction][b, c, h, w] = value
                    run((h, width - 1), [(h, i) for i in range(width - 2, w - 1, -1)], "left")
                    run((h, 0), [(h, i) for i in range(1, w + 1)], "right")
                    run((height - 1, w), [(i, w) for i in range(height - 2, h - 1, -1)], "up")
                    run((0, w), [(i, w) for i in range(1, h + 1)], "down")
    return tuple(out[d] for d in DIRECTIONS)


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "autograd"])
def test_scan_matches_the_authors_kernel(grad):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    # negative weights and biases, and one weight near 1 (the trained model has 0.9975)
    weights = {d: torch.tensor([-0.6, 0.4, 0.9975], dtype=torch.float64) * (1 + 0.1 * k) for k, d in enumerate(DIRECTIONS)}
    biases = {d: torch.randn(3, generator=gen, dtype=torch.float64) * 0.3 for d in DIRECTIONS}
    expected = _kernel_transcription(x, weights, biases)
    with torch.set_grad_enabled(grad):
        got = irnn_scan(x.requires_grad_(grad), weights, biases)
    for direction, mine, theirs in zip(DIRECTIONS, got, expected, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-6, rtol=0), direction
    assert all(torch.equal(g[..., -1], torch.relu(x[..., -1])) for g in got[3:]) and torch.equal(got[1][..., 0], torch.relu(x[..., 0]))


def test_scan_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    w = {d: torch.tensor([0.7, -0.3], dtype=torch.float64, requires_grad=True) for d in DIRECTIONS}
    b = {d: torch.tensor([0.1, 0.2], dtype=torch.float64, requires_grad=True) for d in DIRECTIONS}
    assert torch.autograd.gradcheck(lambda x, *p: torch.stack(irnn_scan(x, dict(zip(DIRECTIONS, p[:4])), dict(zip(DIRECTIONS, p[4:])))),
                                    (x, *w.values(), *b.values()))


def test_rain_mask_marks_any_differing_pixel():
    clean = torch.full((1, 3, 2, 2), 0.5)
    rainy = clean.clone()
    rainy[0, 2, 0, 1] += 1 / 255  # one level up in one channel
    rainy[0, 0, 1, 0] -= 1 / 255  # one level down: the authors' uint8 wrap-around counts it too
    assert rain_mask(rainy, clean).tolist() == [[[0.0, 1.0], [1.0, 0.0]]]


def test_direction_attention_is_a_no_op():
    torch.manual_seed(0)
    net = SPANet().eval()
    x = torch.rand(1, 3, 24, 20)
    before = net(x)["image"]
    for stored in net.SAM1.attention_layer.buffers():
        stored.normal_()
    assert torch.equal(before, net(x)["image"])


@needs_shared
def test_authors_state_dict_loads_strictly():
    state = torch.load(SPANET_FILE, map_location="cpu", weights_only=True)["net"]
    net = SPANet()
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.state_dict().values()) == 283_716
