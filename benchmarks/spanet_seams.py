"""How far tiled SPANet output is from whole-picture output on real photos (why it is not tiled).

Usage: python benchmarks/spanet_seams.py ../shared/data/real/internet/2.jpg ... [--tile 384] [--overlap 32 64 128]

Each photo's top-left 640x960 (at most) is derained whole and in tiles with each overlap
(the engine's blended tiles, as for every tileable method); prints the largest, 99.9th
percentile and mean difference in 8-bit levels. The IRNN scans run along whole rows and
columns with recurrence weights up to 0.9975 and positive biases, so a scan's value depends
on how far the pixel is from the picture's edge: no overlap reproduces the whole picture.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from derain_cli.api import load
from derain_cli.inference.engine import InferenceEngine
from derain_cli.media.images import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--tile", type=int, default=384)
    parser.add_argument("--overlap", type=int, nargs="+", default=[32, 64, 128])
    args = parser.parse_args()
    restorer = load("spanet.spa", device="cpu", precision="fp32")
    model, spec = restorer.engine.model, replace(restorer.spec, tileable=True)
    for path in args.photos:
        image = read_image(path).rgb8[:640, :960].astype(np.float32) / 255
        whole = InferenceEngine(model, spec, "cpu", precision="fp32", tile=0).run(image)["image"]
        for overlap in args.overlap:
            tiled = InferenceEngine(model, replace(spec, overlap=overlap), "cpu", precision="fp32",
                                    tile=args.tile).run(image)["image"]
            levels = np.abs(tiled - whole) * 255
            print(f"{path.name} {image.shape[1]}x{image.shape[0]}, {args.tile}px tiles, overlap {overlap}: max "
                  f"{levels.max():.1f}, 99.9th percentile {np.percentile(levels, 99.9):.1f}, mean {levels.mean():.2f} levels")


if __name__ == "__main__":
    main()
