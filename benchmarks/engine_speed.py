"""LPNet inference speed on this machine: MP/s whole-image and tiled, and bf16 vs fp32.

Usage: python benchmarks/engine_speed.py [--size 2048] [--tile 512] [--repeat 3]
Prints measured figures; record them in docs/performance.md with the command.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from derain_cli.inference.engine import InferenceEngine
from derain_cli.methods import get_method


def picture(size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([x, y, 0.5 + 0.4 * np.sin(20 * x * y)], axis=2) * 200
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def best_time(engine: InferenceEngine, image: np.ndarray, repeat: int) -> tuple[float, np.ndarray]:
    engine.run(image[:256, :256])  # warm-up
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = engine.run(image)["image"]
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    spec = get_method("lpnet")
    torch.manual_seed(0)
    model = spec.build()
    image = picture(args.size)
    megapixels = image.shape[0] * image.shape[1] / 1e6
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"image {args.size}x{args.size} ({megapixels:.1f} MP)")
    whole_s, whole = best_time(InferenceEngine(model, spec, "cpu", tile=0), image, args.repeat)
    tiled_s, tiled = best_time(InferenceEngine(model, spec, "cpu", tile=args.tile), image, args.repeat)
    print(f"fp32 whole image : {whole_s:7.3f} s  {megapixels / whole_s:6.2f} MP/s")
    print(f"fp32 {args.tile}px tiles: {tiled_s:7.3f} s  {megapixels / tiled_s:6.2f} MP/s")
    print(f"tiled / whole time ratio: {tiled_s / whole_s:.2f}; max |tiled - whole| = "
          f"{np.abs(tiled.astype(int) - whole.astype(int)).max()} / 255")
    bf16_s, bf16 = best_time(InferenceEngine(model, spec, "cpu", precision="bf16", tile=args.tile), image, args.repeat)
    diff = np.abs(bf16.astype(int) - tiled.astype(int))
    print(f"bf16 {args.tile}px tiles: {bf16_s:7.3f} s  {megapixels / bf16_s:6.2f} MP/s "
          f"(x{tiled_s / bf16_s:.2f} vs fp32); |bf16 - fp32| mean {diff.mean():.2f}, max {diff.max()} / 255")


if __name__ == "__main__":
    main()
