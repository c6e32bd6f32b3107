"""Rain synthesis: clean pictures -> (rainy, clean) training pairs.

Streaks are sparse random drops smeared by a line kernel (motion blur along the fall
direction), softened to a width, and added to the background:

  light (Rain100L-like): one streak layer, O = B + S.
  heavy (Rain100H-like): several layers in up to five directions with varied length, width
      and density, plus rain accumulation / haze by atmospheric scattering,
      O = a * (B + sum_i S_i) + (1 - a) * A   (a: transmission, A: atmospheric light).

Every picture's randomness comes from the seed and a key (``derain synth`` uses the file's
name and the copy number), so a dataset is reproducible and any single pair can be
regenerated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RainStyle:
    """Ranges (low, high) drawn uniformly for each picture / layer."""

    layers: tuple[int, int]
    directions: int  # at most this many distinct fall directions among the layers
    angle: tuple[float, float]  # the picture's main fall direction, degrees from vertical
    spread: float  # each direction deviates from the main one by up to this many degrees
    length: tuple[float, float]  # pixels
    width: tuple[float, float]  # Gaussian sigma across the streak, pixels
    density: tuple[float, float]  # drops per pixel
    intensity: tuple[float, float]
    transmission: tuple[float, float] | None  # None: no haze
    airlight: tuple[float, float] = (0.8, 1.0)


STYLES = {
    "light": RainStyle(layers=(1, 1), directions=1, angle=(-20, 20), spread=0, length=(12, 35), width=(0.4, 0.8),
                       density=(0.0008, 0.002), intensity=(0.55, 0.9), transmission=None),
    "heavy": RainStyle(layers=(3, 5), directions=5, angle=(-25, 25), spread=12, length=(25, 80), width=(0.5, 1.5),
                       density=(0.0008, 0.0022), intensity=(0.45, 0.85), transmission=(0.88, 1.0)),
}


def _line_kernel(length: float, angle_deg: float) -> np.ndarray:
    size = int(np.ceil(length)) | 1
    kernel = np.zeros((size, size), np.float32)
    c = size // 2
    theta = np.radians(angle_deg)
    dx, dy = np.sin(theta), np.cos(theta)  # angle measured from vertical
    for t in np.linspace(-c, c, 3 * size):
        kernel[int(round(c + t * dy)), int(round(c + t * dx))] = 1.0
    return kernel


def streak_layer(height: int, width: int, rng: np.random.Generator, *, density: float, length: float,
                 angle: float, sigma: float, intensity: float) -> np.ndarray:
    """One (H, W) streak layer in [0, 1]."""
    drops = (rng.random((height, width)) < density).astype(np.float32) * rng.uniform(0.6, 1.0, (height, width)).astype(np.float32)
    streaks = cv2.filter2D(drops, -1, _line_kernel(length, angle), borderType=cv2.BORDER_CONSTANT)
    streaks = cv2.GaussianBlur(streaks, (0, 0), sigmaX=sigma)
    peak = 1.0 / (np.sqrt(2 * np.pi) * sigma) if sigma > 0.5 else 1.0  # undo the blur's dimming
    return np.clip(streaks / max(peak, 1e-6) * intensity * 0.5, 0.0, 1.0)


def add_rain(clean: np.ndarray, style: RainStyle, seed: int, *key: int) -> np.ndarray:
    """(H, W, 3) uint8 clean picture -> rainy uint8 picture, determined by (seed, *key)."""
    rng = np.random.default_rng([seed, *key])
    background = clean.astype(np.float32) / 255
    h, w = background.shape[:2]
    n_layers = int(rng.integers(style.layers[0], style.layers[1] + 1))
    main = rng.uniform(*style.angle)
    directions = main + rng.uniform(-style.spread, style.spread, size=min(style.directions, n_layers))
    rain = np.zeros((h, w), np.float32)
    for i in range(n_layers):
        rain += streak_layer(
            h, w, rng, density=rng.uniform(*style.density), length=rng.uniform(*style.length),
            angle=float(directions[i % len(directions)]), sigma=rng.uniform(*style.width),
            intensity=rng.uniform(*style.intensity),
        )
    rainy = background + rain[..., None]
    if style.transmission is not None:
        a = rng.uniform(*style.transmission)
        airlight = rng.uniform(*style.airlight) * np.ones(3, np.float32)
        rainy = a * rainy + (1 - a) * airlight
    return (np.clip(rainy, 0, 1) * 255 + 0.5).astype(np.uint8)
