"""Peak resident memory of `derain remove` on a 50-megapixel photo (target <= 1.5 GB).

Usage: python benchmarks/peak_memory.py [--megapixels 50] [--tile 1024]
Writes a synthetic 50 MP JPEG and a random-weight LPNet checkpoint to a temporary folder,
runs the real command in a child process, and prints its wall time and peak RSS
(getrusage of the child, so the figure covers torch, decoding, tiling and encoding).
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
        Image.fromarray(photo).save(tmp / "big.jpg", quality=90)
        del photo
        torch.manual_seed(0)
        save_file(get_method("lpnet").build().state_dict(), str(tmp / "lpnet.safetensors"))
        command = [sys.executable, "-m", "derain_cli", "remove", str(tmp / "big.jpg"), "-o", str(tmp / "out.jpg"),
                   "-w", str(tmp / "lpnet.safetensors"), "--device", "cpu", "--tile", str(args.tile), "-q"]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"{width}x{height} ({width * height / 1e6:.1f} MP), tile {args.tile}: "
              f"wall {wall:.1f} s ({width * height / 1e6 / wall:.2f} MP/s end to end), peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
