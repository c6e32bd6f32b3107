"""How close is synthetic rain to a real paired set? Residual statistics, side by side.

    python benchmarks/synth_stats.py ../shared/data/rain100h/test runs/synth_heavy

For each paired folder (first N pairs): mean of the residual O - B (mean over channels),
the standard deviation of its high frequencies (streaks), the fraction of pixels changed
by more than 0.02, and a least-squares fit O ~ slope * B + offset on luma (haze lowers
the slope and raises the offset). Used to tune ``derain synth --style heavy``.
"""

from __future__ import annotations

import argparse

import cv2
import numpy as np

from derain_cli.data.pairs import find_pairs, load_pair


def residual_statistics(root: str, limit: int) -> dict[str, float]:
    rows = []
    for pair in find_pairs(root)[:limit]:
        rainy, clean = (x.astype(np.float32) / 255 for x in load_pair(pair))
        residual = (rainy - clean).mean(axis=2)
        high = residual - cv2.GaussianBlur(residual, (0, 0), 8)
        slope, offset = np.polyfit(clean.mean(axis=2).ravel(), rainy.mean(axis=2).ravel(), 1)
        rows.append([residual.mean(), high.std(), (residual > 0.02).mean(), slope, offset])
    names = ("residual_mean", "streak_std", "changed_fraction", "slope", "offset")
    return dict(zip(names, np.mean(rows, axis=0).tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="paired folders (rain/ + norain/ or another derain layout)")
    parser.add_argument("--limit", type=int, default=25, help="pairs per folder")
    args = parser.parse_args()
    print(f"| folder | residual mean | streak std | changed > 0.02 | slope | offset |\n|---|---|---|---|---|---|")
    for folder in args.folders:
        s = residual_statistics(folder, args.limit)
        print(f"| {folder} | {s['residual_mean']:.3f} | {s['streak_std']:.3f} | {s['changed_fraction']:.3f} "
              f"| {s['slope']:.3f} | {s['offset']:.3f} |")


if __name__ == "__main__":
    main()
