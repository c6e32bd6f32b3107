"""Makes examples/rainy_scene.jpg, the example picture that ships with derain.

The scene and its rain are drawn here from scratch (no third-party photo), so the file
carries derain's own licence. Run: python examples/make_example.py
"""

from pathlib import Path

import cv2
import numpy as np


def scene(height: int = 427, width: int = 640) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    sky = np.stack([0.55 + 0.3 * y / height, 0.65 + 0.2 * y / height, 0.85 - 0.1 * y / height], axis=2)
    ridge = 0.45 * height + 40 * np.sin(x / 70.0) + 18 * np.sin(x / 23.0 + 1.0)
    hill = (y > ridge)[..., None]
    grass = np.stack([0.25 + 0.1 * np.sin(x / 9.0), 0.45 + 0.08 * np.cos(y / 7.0), 0.2 + 0 * x], axis=2)
    image = np.where(hill, grass, sky)
    house = (np.abs(x - 420) < 60) & (y > 250) & (y < 340)
    roof = (y > 200) & (y <= 250) & (np.abs(x - 420) < (y - 200) * 1.4)
    image[house] = (0.75, 0.7, 0.6)
    image[roof] = (0.55, 0.2, 0.15)
    image[(np.abs(x - 400) < 12) & (y > 300) & (y < 340)] = (0.3, 0.2, 0.1)
    rng = np.random.default_rng(7)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def rain(height: int, width: int, seed: int = 3, angle_deg: float = 75.0, length: int = 21) -> np.ndarray:
    rng = np.random.default_rng(seed)
    drops = (rng.random((height, width)) > 0.985).astype(np.float32) * rng.uniform(0.5, 1.0, (height, width))
    kernel = np.zeros((length, length), np.float32)
    c = length // 2
    dx, dy = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    for t in np.linspace(-c, c, 4 * length):
        kernel[int(round(c + t * dy)), int(round(c + t * dx))] = 1.0
    streaks = cv2.filter2D(drops, -1, kernel / kernel.sum() * 6)
    return np.clip(cv2.GaussianBlur(streaks, (3, 3), 0), 0, 1)[..., None]


if __name__ == "__main__":
    clean = scene()
    rainy = np.clip(clean + 0.6 * rain(*clean.shape[:2]), 0, 1)
    out = Path(__file__).with_name("rainy_scene.jpg")
    cv2.imwrite(str(out), (rainy[..., ::-1] * 255).round().astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
    print(f"wrote {out}")
