"""What each checkpoint does to real rainy photos, which have no clean reference.

Usage:
  python benchmarks/real_harm.py ../shared/data/real/internet -m lpnet.rain100l -m spanet.spa ...
      [--count 24] [--max-side 768] [--mask-from spanet.spa]
(-m also takes METHOD=FILE, a run's weights before they ship.)

Every --count-th photo of the folder (evenly spread, by name) is downscaled to --max-side and
derained by each checkpoint. The rain mask of a photo is where --mask-from (a model trained on
real rain) removed light (derain_cli/evaluation/harm.py), the same mask for every checkpoint, so their
measures compare: tone shift of bright and dark pixels and colour shift outside the rain
(8-bit levels; negative darkens), detail kept outside the rain (1 = every edge kept, below 1
blurs), streak texture left inside the rain (1 = all left, 0 = all removed). The mask model's
own "streaks left" is measured against its own mask and so favours it. "vs mask model" is the
Y-PSNR of each output against the mask model's output (how close a student came to its
teacher). Prints a Markdown table of means over the photos, with the worst photo's bright shift.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from derain_cli.api import load
from derain_cli.data.pairs import find_photos, shrink
from derain_cli.evaluation.harm import measure, removed_light_mask
from derain_cli.media.images import read_image
from derain_cli.evaluation.metrics import psnr


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.round(rgb * 255) / 255).permute(2, 0, 1)[None]


def spread(items: list, count: int) -> list:
    """``count`` items evenly spread over the list (all of them if fewer)."""
    if count >= len(items):
        return items
    return [items[round(k * (len(items) - 1) / (count - 1))] for k in range(count)] if count > 1 else items[:1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("-m", "--model", action="append", required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=768)
    parser.add_argument("--mask-from", default="spanet.spa")
    args = parser.parse_args()
    photos = [shrink(read_image(p).rgb8, args.max_side).astype(np.float32) / 255
              for p in spread(find_photos(args.photos), args.count)]
    masker = load(args.mask_from, device="cpu")
    references = [masker.run(rgb)["image"] for rgb in photos]
    masks = [removed_light_mask(rgb, ref) for rgb, ref in zip(photos, references, strict=True)]
    pixels = sum(rgb.shape[0] * rgb.shape[1] for rgb in photos) / 1e6
    print(f"{len(photos)} photos of {args.photos}, longest side {args.max_side} px ({pixels:.1f} MP); "
          f"rain mask from {args.mask_from}: {np.mean([m.mean() for m in masks]):.1%} of the pixels\n")
    print("| checkpoint | bright shift | worst bright | dark shift | colour shift | detail kept | streaks left "
          f"| Y-PSNR vs {args.mask_from} | s/MP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.model:
        method, _, weights = name.partition("=")  # METHOD=FILE: a run's weights before they ship
        model = load(method, weights=weights or None, device="cpu")
        start = time.perf_counter()
        outputs = [model.run(rgb)["image"] for rgb in photos]
        seconds = time.perf_counter() - start
        harms = [measure(rgb, out, mask) for rgb, out, mask in zip(photos, outputs, masks, strict=True)]
        closeness = np.mean([float(psnr(_tensor(out), _tensor(ref))) for out, ref in zip(outputs, references, strict=True)])

        def mean(field: str) -> float:
            return float(np.nanmean([getattr(h, field) for h in harms]))

        worst = float(np.nanmin([h.bright_shift for h in harms]))
        print(f"| {name} | {mean('bright_shift'):+.1f} | {worst:+.1f} | {mean('dark_shift'):+.1f} | "
              f"{mean('colour_shift'):.1f} | {mean('detail_kept'):.2f} | {mean('streaks_left'):.2f} | "
              f"{closeness:.2f} | {seconds / pixels:.1f} |", flush=True)


if __name__ == "__main__":
    main()
