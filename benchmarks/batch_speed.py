"""Whole-process `derain remove` over a folder: the decode/encode pipeline, bf16, start-up.

Usage: python benchmarks/batch_speed.py [--files 12] [--size 1024x768] [--jobs 0 2] [--bf16]
Runs the real command in child processes (decode + derain + encode, imports included) and
prints wall time, MP/s and ratios measured in this one run. Record them in docs/performance.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pictures(folder: Path, count: int, width: int, height: int) -> float:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    for k in range(count):
        base = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin((x + 13 * k) / 40)], axis=2) * 200
        array = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"{k:03d}.jpg", quality=92)
    return count * width * height / 1e6


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def derain(*args: str) -> list[str]:
    return [sys.executable, "-m", "derain_cli", "remove", *args, "--device", "cpu", "-q"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--jobs", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--bf16", action="store_true", help="also time --precision bf16 on one picture")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp, "in")
        folder.mkdir()
        megapixels = pictures(folder, args.files, width, height)
        small = Path(tmp, "small.png")
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(small)

        imports = min(timed([sys.executable, "-c", "import torch"]) for _ in range(3))
        start_up = min(timed(derain(str(small), "-o", str(Path(tmp, f"s{k}.png")))) for k in range(3))
        print(f"start-up: one 32x32 picture {start_up:.2f} s, of which `import torch` alone {imports:.2f} s ({imports / start_up:.0%})")

        times = {}
        for jobs in args.jobs:
            times[jobs] = timed(derain(str(folder), "-o", str(Path(tmp, f"out{jobs}")), "--jobs", str(jobs)))
            print(f"--jobs {jobs}: {args.files} x {width}x{height} in {times[jobs]:.1f} s = {megapixels / times[jobs]:.2f} MP/s")
        base = times[args.jobs[0]]
        for jobs, seconds in times.items():
            print(f"  speed-up of --jobs {jobs} over --jobs {args.jobs[0]}: {base / seconds:.2f}x")

        if args.bf16:
            one = str(folder / "000.jpg")
            fp32 = timed(derain(one, "-o", str(Path(tmp, "fp32.jpg")), "--precision", "fp32"))
            bf16 = timed(derain(one, "-o", str(Path(tmp, "bf16.jpg")), "--precision", "bf16"))
            print(f"one {width}x{height} picture: fp32 {fp32:.1f} s, bf16 {bf16:.1f} s ({bf16 / fp32:.1f}x the fp32 time)")


if __name__ == "__main__":
    main()
