"""Resident memory of `derain remove`: peak on a 50-megapixel photo (target <= 1.5 GB), and
whether it stays flat over a folder of many files.

Usage: python benchmarks/peak_memory.py [--megapixels 50] [--tile 1024] [--jobs 2]
       python benchmarks/peak_memory.py --files 1000 --megapixels 0.02
Writes synthetic JPEGs and a random-weight LPNet checkpoint to a temporary folder, runs the
real command in a child process, and prints its wall time and peak RSS (getrusage of the
child, so the figure covers torch, decoding, tiling and encoding). With --files it also
samples the child's RSS (/proc) as outputs appear and prints it at each quarter of the batch.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

from derain_cli.methods import get_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megapixels", type=float, default=50)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--files", type=int, default=1, help="copies of the photo, in one folder")
    args = parser.parse_args()
    width = int((args.megapixels * 1e6 * 1.5) ** 0.5)
    height = int(args.megapixels * 1e6 / width)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        row = np.linspace(0, 255, width, dtype=np.float32)
        photo = np.empty((height, width, 3), np.uint8)
        for y in range(0, height, 512):  # build it in strips to keep this script small too
            block = row[None, :, None] * 0.6 + rng.normal(60, 25, (min(512, height - y), width, 3))
            photo[y : y + 512] = np.clip(block, 0, 255).astype(np.uint8)
        (tmp / "in").mkdir()
        Image.fromarray(photo).save(tmp / "in/big.jpg", quality=90)
        for k in range(1, args.files):
            (tmp / f"in/big_{k:04d}.jpg").write_bytes((tmp / "in/big.jpg").read_bytes())
        del photo
        torch.manual_seed(0)
        save_file(get_method("lpnet").build().state_dict(), str(tmp / "lpnet.safetensors"))
        source, target = (tmp / "in", tmp / "out") if args.files > 1 else (tmp / "in/big.jpg", tmp / "out.jpg")
        command = [sys.executable, "-m", "derain_cli", "remove", str(source), "-o", str(target),
                   "-w", str(tmp / "lpnet.safetensors"), "--device", "cpu", "--tile", str(args.tile),
                   "--jobs", str(args.jobs), "-q"]
        start = time.perf_counter()
        child = subprocess.Popen(command)
        samples = []  # (outputs written, RSS MB) while the batch runs
        while child.poll() is None:
            if args.files > 1:
                samples.append((len(list(target.glob("*.jpg"))) if target.is_dir() else 0, _rss_mb(child.pid)))
            time.sleep(0.25)
        if child.returncode:
            raise SystemExit(f"derain exited {child.returncode}")
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        megapixels = args.files * width * height / 1e6
        print(f"{args.files} x {width}x{height} ({width * height / 1e6:.2f} MP), tile {args.tile}, --jobs {args.jobs}: "
              f"wall {wall:.1f} s ({megapixels / wall:.2f} MP/s end to end), peak RSS {peak_mb:.0f} MB")
        for quarter in (1, 2, 3, 4):
            done = [rss for written, rss in samples if written <= quarter * args.files // 4 and rss]
            if args.files > 1 and done:
                print(f"  RSS when {quarter * 25}% of the files were written: {done[-1]:.0f} MB")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


if __name__ == "__main__":
    main()
