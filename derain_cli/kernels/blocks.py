"""Cache blocking for CPU inference: run a local stack of layers over a large map in blocks.

A stack of convolutions of receptive radius r, run on a block cut out with r pixels of real
context on every side (none beyond the map's edge, where the layers' own zero padding then
applies exactly as on the whole map), gives the whole map's values inside the block. Block
by block the activations stay in the CPU's caches: on this project's 2-core EPYC a 16-channel
3x3 convolution ran at 166 GFLOP/s on a 513 px map and 63 GFLOP/s on a 1025 px one
(docs/performance.md). Networks use this for their local parts, so the inference engine can
hand them large tiles (little overlap to recompute) without leaving the caches.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch

# 16-channel activations of a (256 + 2 * 11)^2 block take 5 MB: several fit in a 32 MB L3.
# Measured here: LPNet on a 2049 px tile ran fastest with 192-256 px blocks (128 and 320-512
# slower), PReNet (32 channels) on a 769 px picture with 256 (96-192 slower).
CPU_BLOCK = 256
# a map of up to 17 MB ran as fast whole as in blocks (16 channels at 513 x 513; 32 channels
# at 513 x 513 ran at half speed whole): smaller ones are not cut, so no borders are recomputed
CACHED_MAP_BYTES = 17_000_000


_enabled = True


@contextmanager
def plain_paths():
    """Within: no blocks and no fused ops (benchmarks compare against this, tests too)."""
    global _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = True


def blocking_applies(x: torch.Tensor) -> bool:
    """Blocks pay on the CPU; on GPUs whole maps keep the device busy. Never while training,
    nor while tracing or compiling (an export must not bake one size's blocks into its graph)."""
    return (
        _enabled
        and x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not getattr(torch.compiler, "is_exporting", lambda: False)()
    )


def _spans(length: int, block: int) -> list[tuple[int, int]]:
    """``length`` cut into the number of near-equal spans closest to ``length / block``."""
    count = max(1, round(length / block))
    edges = [length * k // count for k in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def run_in_blocks(
    layers: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: tuple[torch.Tensor, ...],
    radius: int,
    channels: int,
    block: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``layers(*inputs)`` computed block by block; equal to the whole-map call.

    ``layers`` must be local with receptive radius at most ``radius`` and keep the spatial
    size; ``inputs`` are (N, C, H, W) with the same N, H and W; ``channels`` is the widest
    activation inside (it decides whether a map stays in the caches). Pictures of a batch
    (video frames) go one at a time. Returns what ``layers`` returns.
    """
    batch, height, width = inputs[0].shape[0], *inputs[0].shape[-2:]
    picture_bytes = height * width * channels * inputs[0].element_size()
    if batch * picture_bytes <= CACHED_MAP_BYTES:
        return layers(*inputs)
    if picture_bytes <= CACHED_MAP_BYTES:
        rows, cols = [(0, height)], [(0, width)]
    else:
        rows, cols = _spans(height, block or CPU_BLOCK), _spans(width, block or CPU_BLOCK)
    outputs: list[torch.Tensor] | None = None
    single = False
    for n in range(batch):
        for y0, y1 in rows:
            top, bottom = max(y0 - radius, 0), min(y1 + radius, height)
            for x0, x1 in cols:
                left, right = max(x0 - radius, 0), min(x1 + radius, width)
                result = layers(*(t[n : n + 1, :, top:bottom, left:right] for t in inputs))
                if isinstance(result, torch.Tensor):
                    result, single = (result,), True
                if outputs is None:
                    outputs = [
                        r.new_empty((batch, r.shape[1], height, width)).contiguous(memory_format=torch.channels_last)
                        for r in result
                    ]
                for out, r in zip(outputs, result):
                    out[n : n + 1, :, y0:y1, x0:x1] = r[..., y0 - top : y1 - top, x0 - left : x1 - left]
    return outputs[0] if single else tuple(outputs)
