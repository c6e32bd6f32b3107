"""Tile layout and seam blending, in plain numpy (no torch).

A picture is cut into tiles of ``tile`` pixels that overlap by ``overlap`` pixels; tile
origins are multiples of the method's ``size_multiple`` so every tile sees the same pyramid
phase as the whole image would. Overlapping outputs are blended with weights that ramp
across the overlap, so seams vanish. Rows are finished strip by strip: only two
float strips of the output exist at any time, never a whole-image float copy.
"""

from __future__ import annotations

import numpy as np


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def aligned_size(value: int, multiple: int, offset: int = 0) -> int:
    """Smallest size >= value of the form ``multiple * k + offset``."""
    return round_up(max(value - offset, 0), multiple) + offset


def tile_overlap(spec) -> int:
    """The overlap tiles of ``spec`` (a MethodSpec) get: its own, aligned so that ``tile -
    overlap`` is a multiple of its size_multiple (tiles are sized k * m + offset)."""
    return round_up(spec.overlap, spec.size_multiple) + spec.size_offset


def smallest_tile(spec) -> int:
    """The smallest useful tile of ``spec``: twice its overlap, aligned (smaller tiles would
    mostly recompute their neighbours' context; out-of-memory retries stop here too)."""
    return aligned_size(2 * tile_overlap(spec), spec.size_multiple, spec.size_offset)


def check_tile(spec, tile: int | None) -> None:
    """UsageError unless ``tile`` is None (the method's default), 0 (whole pictures) or at
    least ``smallest_tile(spec)``; any size goes for a method that is never tiled."""
    from derain_cli.errors import UsageError

    if tile is None or tile == 0 or (tile > 0 and not spec.tileable):
        return
    smallest = smallest_tile(spec)
    if tile < smallest:
        raise UsageError(
            f"--tile {tile}: {spec.name} needs tiles of at least {smallest} px (twice its {spec.overlap} px overlap), "
            f"or 0 for whole pictures; its default is {spec.tile}"
        )


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Origins of tiles of size ``tile`` covering ``[0, length)`` with at least ``overlap``.

    ``length - tile`` and ``tile - overlap`` are expected to be multiples of the alignment,
    so every origin is too. The last tile ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    if tile <= overlap:
        raise ValueError(f"tile ({tile}) must be larger than the overlap ({overlap})")
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def balanced_tile(length: int, tile: int, overlap: int, multiple: int, offset: int = 0) -> int:
    """The smallest aligned tile covering ``length`` with as few tiles as ``tile`` needs.

    A 3009 px side in 2049 px tiles needs two; two tiles of 1553 px cover it too, with a
    97 px overlap instead of 1089 px of recomputed pixels.
    """
    if length <= tile:
        return length
    count = -(-(length - overlap) // (tile - overlap))
    return min(tile, aligned_size(-(-(length - overlap) // count) + overlap, multiple, offset))


def ramp(size: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """1-D blend weight of a tile, on sides that have a neighbour.

    The outer quarter of the overlap gets weight 0 (there the tile sees the padding of its
    own border, not the picture), the middle half ramps linearly to 1. Measured on LPNet:
    a plain ramp over the whole overlap left seams of 2/255, this one 0.1/255.
    """
    w = np.ones(size, dtype=np.float32)
    n = min(overlap, size)
    if n > 0:
        margin = n // 4
        width = max(n - 2 * margin, 1)
        up = np.clip((np.arange(n, dtype=np.float32) - margin + 0.5) / width, 0.0, 1.0)
        if ramp_start:
            w[:n] = np.minimum(w[:n], up)
        if ramp_end:
            w[size - n :] = np.minimum(w[size - n :], up[::-1])
    return w


def read_padded(image: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """The (h, w) window of ``image`` at (y0, x0), reflect-padded where it passes the bottom
    or right edge (the same pixels a whole-image reflect pad would give)."""
    height, width = image.shape[:2]
    window = image[y0 : min(y0 + h, height), x0 : min(x0 + w, width)]
    pad_y, pad_x = h - window.shape[0], w - window.shape[1]
    if pad_y or pad_x:
        mode = "reflect" if min(window.shape[:2]) > 1 else "edge"
        window = np.pad(window, ((0, pad_y), (0, pad_x), (0, 0)), mode=mode)
    return window


def quantize_into(dest: np.ndarray, values: np.ndarray) -> None:
    """Write float values in [0, 1] into ``dest`` in its dtype (rounded for integers)."""
    if np.issubdtype(dest.dtype, np.integer):
        peak = np.iinfo(dest.dtype).max
        np.multiply(np.clip(values, 0.0, 1.0), peak, out=values)
        np.rint(values, out=values)
        dest[...] = values
    else:
        dest[...] = values


FINISH_ROWS = 128


class StripBlender:
    """Accumulates weighted tile outputs of one row of tiles and hands finished rows on.

    Call ``add`` for every tile of a tile row, then ``finish(upto)``: rows above ``upto`` are
    final (no later tile touches them) and are written into the destination array.
    """

    def __init__(self, dest: np.ndarray, row_start: int, strip_height: int, padded_width: int) -> None:
        self.dest = dest
        self.channels = dest.shape[2]
        self.row_start = row_start
        self.acc = np.zeros((strip_height, padded_width, self.channels), dtype=np.float32)
        self.weight = np.zeros((strip_height, padded_width, 1), dtype=np.float32)

    def add(self, values: np.ndarray, weight: np.ndarray, y0: int, x0: int) -> None:
        """values (h, w, C) float32 and weight (h, w) for the tile at image origin (y0, x0)."""
        h, w = weight.shape
        r = y0 - self.row_start
        self.acc[r : r + h, x0 : x0 + w] += values * weight[..., None]
        self.weight[r : r + h, x0 : x0 + w, 0] += weight

    def finish(self, upto: int, next_start: int, next_height: int) -> "StripBlender | None":
        """Write rows [row_start, upto) into dest; return the blender for the next tile row
        (starting at ``next_start``) carrying the partial sums of the overlap, or None."""
        height, width = self.dest.shape[:2]
        done = min(upto, height) - self.row_start
        for r in range(0, max(done, 0), FINISH_ROWS):  # in chunks: no strip-sized temporaries
            r1 = min(r + FINISH_ROWS, done)
            block = self.acc[r:r1, :width] / self.weight[r:r1, :width]
            quantize_into(self.dest[self.row_start + r : self.row_start + r1], block)
        if next_height <= 0:
            return None
        if next_height != self.acc.shape[0]:
            following = StripBlender(self.dest, next_start, next_height, self.acc.shape[1])
        else:  # the same buffers, shifted: a second strip would double the blending memory
            following = self
        keep = max(0, self.acc.shape[0] - (next_start - self.row_start))
        for buffer, new in ((self.acc, following.acc), (self.weight, following.weight)):
            if keep > 0:
                new[:keep] = buffer[next_start - self.row_start :].copy()
            new[keep:] = 0
        following.row_start = next_start
        return following
