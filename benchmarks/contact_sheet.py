"""Before/after contact sheets: one row per photo, one column per checkpoint (the input first).

Usage:
  python benchmarks/contact_sheet.py PHOTOS_DIR -m msdn.rain100l -m msdn.real -o docs/img/sheet.jpg
      (-m also takes METHOD=FILE, a run's weights before they ship)
      [--count 12] [--height 200] [--crop 320]

Each photo is derained whole (tiled as `derain remove` does) at most --max-side pixels on its
longest side, then a centred square of --crop pixels (at that scale) is shown at --height, so
streaks stay visible. Labels name each column. Writes a JPEG.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from derain_cli.api import load
from derain_cli.data.pairs import find_photos, shrink
from derain_cli.media.images import read_image


def _label(name: str) -> str:
    """A column's label: the checkpoint's name, or METHOD (FILE's stem) for METHOD=FILE."""
    method, _, weights = name.partition("=")
    return f"{method} ({Path(weights).stem})" if weights else name


def centre_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    s = min(size, h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return rgb[y : y + s, x : x + s]


def label(tile: np.ndarray, text: str) -> np.ndarray:
    out = tile.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 18), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photos", type=Path)
    parser.add_argument("-m", "--method", action="append", required=True)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--height", type=int, default=200)
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    files = find_photos(args.photos)
    step = max(1, len(files) // args.count)
    chosen = files[::step][: args.count]
    # METHOD=FILE: a run's weights before they ship
    restorers = [load(m.partition("=")[0], m.partition("=")[2] or None, device=args.device) for m in args.method]
    rows = []
    for path in chosen:
        rgb = shrink(read_image(path).rgb8, args.max_side)
        tiles = [("input " + path.name, rgb)] + [(_label(m), r.run(rgb)["image"]) for m, r in zip(args.method, restorers, strict=True)]
        row = []
        for text, image in tiles:
            crop = centre_crop(image, args.crop)
            row.append(label(cv2.resize(crop, (args.height, args.height), interpolation=cv2.INTER_AREA), text))
        rows.append(np.concatenate(row, axis=1))
        print(f"{path.name}: done")
    sheet = np.concatenate(rows, axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


if __name__ == "__main__":
    main()
