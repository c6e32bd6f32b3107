"""Measures of what a derainer does to a real photo that has no clean reference.

Real rainy photos have no ground truth, so PSNR cannot say whether a model helps. These
measures compare the output with its own input instead, each over a rain mask: the pixels
where rain is (given, or estimated as where a trusted model removed light). Outside the mask
a good derainer changes nothing; inside it, it removes the streaks' light and texture.

- ``tone_shift``: mean luma change (output − input, 8-bit levels) outside the mask over the
  input's bright pixels and over its dark ones; darkened whites read negative. Plus the mean
  absolute chroma change (Cb, Cr) there: a colour cast.
- ``detail_kept``: gradient energy of the output over that of the input outside the mask; 1
  keeps every edge, a blur reads below 1.
- ``streaks_left``: high-frequency energy of the output over the input's inside the mask;
  0 removed all streak texture, 1 left it.

Arrays are (H, W, 3) float32 RGB in [0, 1]; masks (H, W) bool. Luma and chroma follow
BT.601 (the benchmark's Y channel), on [0, 255].
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

BRIGHT, DARK = 0.75, 0.25  # input luma (of 1) above / below which a pixel counts as bright / dark
RAIN_LEVELS = 8.0  # luma removed (8-bit levels) above which a pixel counts as rain
MASK_GROWTH = 1  # pixels: the mask is dilated so a streak's soft edge counts as rain too
_BT601 = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)


def _ycc(rgb: np.ndarray) -> np.ndarray:
    return (rgb @ _BT601.T) * 255.0


def removed_light_mask(rainy: np.ndarray, derained: np.ndarray, levels: float = RAIN_LEVELS) -> np.ndarray:
    """Where ``derained`` is darker than ``rainy`` by more than ``levels`` of luma (rain adds
    light), grown by MASK_GROWTH pixels: an estimate of where the rain is."""
    removed = _ycc(rainy)[..., 0] - _ycc(derained)[..., 0]
    mask = (removed > levels).astype(np.uint8)
    kernel = np.ones((2 * MASK_GROWTH + 1,) * 2, np.uint8)
    return cv2.dilate(mask, kernel).astype(bool)


@dataclass(frozen=True)
class Harm:
    bright_shift: float  # luma levels, outside rain, over the input's bright pixels (nan if none)
    dark_shift: float  # same over its dark pixels
    colour_shift: float  # mean |dCb| + |dCr| levels outside rain
    detail_kept: float  # gradient energy ratio outside rain
    streaks_left: float  # high-frequency energy ratio inside rain (nan if no rain)


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else float("nan")


def _gradient_energy(luma: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(luma, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(luma, cv2.CV_32F, 0, 1, ksize=3)
    return gx * gx + gy * gy


def _high_pass(luma: np.ndarray) -> np.ndarray:
    return luma - cv2.GaussianBlur(luma, (0, 0), 2.0)


def measure(rainy: np.ndarray, derained: np.ndarray, rain: np.ndarray) -> Harm:
    """The harm and rain-removal measures of ``derained`` against its input, ``rain`` the mask."""
    if rainy.shape != derained.shape or rain.shape != rainy.shape[:2]:
        raise ValueError(f"shapes differ: {rainy.shape}, {derained.shape}, mask {rain.shape}")
    before, after = _ycc(rainy.astype(np.float32)), _ycc(derained.astype(np.float32))
    clear = ~rain
    shift = after[..., 0] - before[..., 0]
    chroma = np.abs(after[..., 1:] - before[..., 1:]).sum(axis=-1)
    edges_before, edges_after = _gradient_energy(before[..., 0]), _gradient_energy(after[..., 0])
    texture_before, texture_after = np.abs(_high_pass(before[..., 0])), np.abs(_high_pass(after[..., 0]))
    luma = before[..., 0] / 255.0
    return Harm(
        bright_shift=_mean(shift, clear & (luma > BRIGHT)),
        dark_shift=_mean(shift, clear & (luma < DARK)),
        colour_shift=_mean(chroma, clear),
        detail_kept=_mean(edges_after, clear) / max(_mean(edges_before, clear), 1e-12),
        streaks_left=_mean(texture_after, rain) / max(_mean(texture_before, rain), 1e-12) if rain.any() else float("nan"),
    )


# An adaptation may remove more rain than its start, but not at these costs on the same photos:
DARKER_LEVELS = 3.0  # bright or dark pixels outside the rain darker by this many more levels
COLOUR_LEVELS = 2.0  # more colour shift outside the rain
DETAIL_LOSS = 0.10  # relative loss of detail kept outside the rain


def mean_harm(harms: list[Harm]) -> Harm:
    """Field-wise mean over photos (photos without bright, dark or rain pixels left out)."""
    return Harm(**{f: float(np.nanmean([getattr(h, f) for h in harms])) for f in Harm.__dataclass_fields__})


def on_photos(photos: list[np.ndarray], start, candidate) -> tuple[Harm, Harm]:
    """Mean harm of ``start`` and of ``candidate`` (``run``-like callables: float RGB in [0, 1]
    -> {"image": ...}) on ``photos``, both over the rain mask of the start's output."""
    starts, candidates = [], []
    for rgb in photos:
        before = start(rgb)["image"]
        rain = removed_light_mask(rgb, before)
        starts.append(measure(rgb, before, rain))
        candidates.append(measure(rgb, candidate(rgb)["image"], rain))
    return mean_harm(starts), mean_harm(candidates)


def harm_added(start: Harm, candidate: Harm) -> list[str]:
    """What ``candidate`` does worse than ``start`` beyond the tolerances above, in words."""
    found = []
    for field, label in (("bright_shift", "whites"), ("dark_shift", "shadows")):
        darker = getattr(start, field) - getattr(candidate, field)
        if darker > DARKER_LEVELS:
            found.append(f"{label} {darker:.1f} levels darker")
    if candidate.colour_shift - start.colour_shift > COLOUR_LEVELS:
        found.append(f"colour shifted {candidate.colour_shift - start.colour_shift:.1f} levels more")
    if candidate.detail_kept < start.detail_kept * (1 - DETAIL_LOSS):
        found.append(f"{1 - candidate.detail_kept / start.detail_kept:.0%} less detail outside the rain")
    return found
