"""Training data packed small enough to travel to a lent GPU machine, and unpacked there.

Only the working tree travels to a device machine (64 MiB in all; ../shared does not), and
Rain100L's training pairs alone are 71 MB. A synthetic rainy picture is its clean picture plus
sparse streaks, so ``stage`` copies each clean file as it is and keeps the rainy picture as
the residual (rainy - clean) mod 256 in lossless WebP: about 3x smaller than the rainy file,
and ``unstage`` rebuilds it bit for bit.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from derain_cli.data.pairs import find_pairs, load_pair
from derain_cli.media.images import read_image

MARKER = "staged.json"


def stage(data_root: Path, folders: list[str], dest: Path) -> int:
    """Pack ``data_root/FOLDER`` (paired folders) into ``dest/FOLDER/{norain,residual}``;
    returns the bytes written."""
    from PIL import Image

    for folder in folders:
        for pair in find_pairs(data_root / folder):
            rainy, clean = load_pair(pair)
            residual = dest / folder / "residual" / f"{pair.rainy.stem}.webp"
            residual.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rainy - clean).save(residual, "WEBP", lossless=True, quality=50, method=4)  # mod 256
            (dest / folder / "norain").mkdir(exist_ok=True)
            shutil.copyfile(pair.clean, dest / folder / "norain" / f"{pair.rainy.stem}{pair.clean.suffix}")
    (dest / MARKER).write_text(json.dumps({"folders": folders}))
    return sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())


def is_staged(root: Path) -> bool:
    return (root / MARKER).is_file()


def unstage(staged: Path, dest: Path) -> Path:
    """Rebuild ``dest/FOLDER/{rain,norain}`` (PNG) from ``stage``'s output; returns ``dest``."""
    from PIL import Image

    for folder in json.loads((staged / MARKER).read_text())["folders"]:
        cleans = {p.stem: p for p in (staged / folder / "norain").iterdir()}
        for residual_path in sorted((staged / folder / "residual").iterdir()):
            clean = read_image(cleans[residual_path.stem]).rgb8
            rainy = clean + np.asarray(Image.open(residual_path).convert("RGB"))  # uint8: mod 256
            for sub, array in (("rain", rainy), ("norain", clean)):
                path = dest / folder / sub / f"{residual_path.stem}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path, compress_level=1)
    shutil.copy(staged / MARKER, dest / MARKER)
    return dest
