"""Paired training data: finding rainy/clean pairs, checking them, sampling patches.

Layouts accepted (``find_pairs``), pairing by file stem:
  * ``DIR/rain/NAME`` + ``DIR/norain/NAME`` (the shared Rain100 data)
  * ``DIR/input/NAME`` + ``DIR/target/NAME``
  * one folder with ``rain-N.ext`` + ``norain-N.ext``
Everything is checked before training starts: unpaired names, unreadable files and size
mismatches are DatasetErrors naming the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from derain_cli.errors import DerainError, UsageError
from derain_cli.media.images import IMAGE_EXTENSIONS, read_image

FOLDER_LAYOUTS = (("rain", "norain"), ("input", "target"))


class DatasetError(UsageError):
    """A training or evaluation folder cannot be used as paired data."""


@dataclass(frozen=True)
class Pair:
    rainy: Path
    clean: Path

    @property
    def name(self) -> str:
        return self.rainy.name


def _folder(path: Path) -> Path:
    """``path``, or the folder a link stub points to: where symlinks are not supported, git
    checks a link out as a small text file holding its relative target (the shared data's
    ``rain100h/test/norain`` is one)."""
    if path.is_file() and path.stat().st_size < 1024:
        target = (path.parent / path.read_text(encoding="utf-8", errors="replace").strip()).resolve()
        if target.is_dir():
            return target
    return path


def _images(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def _match(rainy: dict[str, Path], clean: dict[str, Path], root: Path) -> list[Pair]:
    lonely = sorted(set(rainy) ^ set(clean))
    if lonely:
        shown = ", ".join(lonely[:5]) + (f" (+{len(lonely) - 5} more)" if len(lonely) > 5 else "")
        raise DatasetError(f"{root}: {len(lonely)} image(s) without a partner: {shown}")
    if not rainy:
        raise DatasetError(f"{root}: no image pairs found")
    return [Pair(rainy[k], clean[k]) for k in sorted(rainy)]


def find_pairs(root: str | Path) -> list[Pair]:
    """Every (rainy, clean) pair under ``root``, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    for rain_dir, clean_dir in FOLDER_LAYOUTS:
        rainy, clean = _folder(root / rain_dir), _folder(root / clean_dir)
        if rainy.is_dir() and clean.is_dir():
            return _match(_images(rainy), _images(clean), root)
    files = _images(root)
    rainy = {k.removeprefix("rain-"): p for k, p in files.items() if k.startswith("rain-")}
    clean = {k.removeprefix("norain-"): p for k, p in files.items() if k.startswith("norain-")}
    if rainy or clean:
        return _match(rainy, clean, root)
    layouts = ", ".join(f"{a}/ + {b}/" for a, b in FOLDER_LAYOUTS)
    raise DatasetError(f"{root}: no paired layout found (expected {layouts}, or rain-N / norain-N files)")


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """Both images as (H, W, 3) uint8; DatasetError for unreadable files or size mismatch."""
    try:
        rainy, clean = read_image(pair.rainy), read_image(pair.clean)
    except UsageError:
        raise
    except Exception as err:  # ImageError already names the file
        raise DatasetError(str(err)) from None
    a, b = rainy.rgb8, clean.rgb8
    if a.shape != b.shape:
        raise DatasetError(f"{pair.rainy} is {a.shape[1]}x{a.shape[0]} but {pair.clean} is {b.shape[1]}x{b.shape[0]}")
    return a, b


def _random_patch(images: tuple[torch.Tensor, ...], p: int, g: torch.Generator) -> list[torch.Tensor]:
    """The same random crop, flips and 90-degree rotation of each (C, H, W) image."""
    h, w = images[0].shape[1:]
    y = int(torch.randint(h - p + 1, (1,), generator=g))
    x = int(torch.randint(w - p + 1, (1,), generator=g))
    flip_h, flip_v, turns = torch.randint(2, (2,), generator=g).tolist() + [int(torch.randint(4, (1,), generator=g))]
    patches = []
    for source in images:
        patch = source[:, y : y + p, x : x + p]
        if flip_h:
            patch = patch.flip(2)
        if flip_v:
            patch = patch.flip(1)
        patches.append(torch.rot90(patch, turns, dims=(1, 2)))
    return patches


def _rank_slice(patches: list[torch.Tensor], batch_size: int, rank: int, world_size: int) -> torch.Tensor:
    share = batch_size // world_size
    return torch.stack(patches[rank * share : (rank + 1) * share]).float().div_(255)


def _as_chw(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(array).permute(2, 0, 1).contiguous()


class PatchSampler:
    """Random training patches, a pure function of (seed, step): resuming needs no RNG state.

    Every step draws the global batch (``batch_size`` patches with random crop, flips and a
    90-degree rotation); a distributed rank takes its slice, so N processes see exactly the
    patches one process would.
    """

    def __init__(self, pairs: list[Pair], patch_size: int, batch_size: int, seed: int = 0) -> None:
        loaded = [load_pair(p) for p in pairs]
        small = [p.name for p, (a, _) in zip(pairs, loaded) if min(a.shape[:2]) < patch_size]
        if small:
            raise DatasetError(f"images smaller than the {patch_size}px patch: {', '.join(small[:5])}")
        self.rainy = [_as_chw(a) for a, _ in loaded]
        self.clean = [_as_chw(b) for _, b in loaded]
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed

    def __len__(self) -> int:
        return len(self.rainy)

    def to(self, device) -> None:
        """Nothing to move: batches are built on the CPU and the Trainer moves them."""

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """(rainy, clean) float tensors (b, 3, P, P) in [0, 1] for this rank at ``step``."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        rainy, clean = [], []
        for _ in range(self.batch_size):
            i = int(torch.randint(len(self.rainy), (1,), generator=g))
            a, b = _random_patch((self.rainy[i], self.clean[i]), self.patch_size, g)
            rainy.append(a)
            clean.append(b)
        return (_rank_slice(rainy, self.batch_size, rank, world_size),
                _rank_slice(clean, self.batch_size, rank, world_size))


def find_photos(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (sorted); DatasetError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not photos:
        raise DatasetError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    return photos


def shrink(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """(H, W, 3) uint8 downscaled (area) so its longest side is at most max_side."""
    scale = max_side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    import cv2

    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _reasons(why: list[str]) -> str:
    return f" ({', '.join(why)})" if why else ""


class PhotoSampler:
    """Random patches of unlabeled photos (a user's real rain), a pure function of (seed, step).

    Photos larger than ``max_side`` are downscaled (area interpolation) so that a folder of
    camera pictures fits in memory. Unreadable photos and photos smaller than a patch are
    reported through ``warn`` and left out. Each batch takes its patches from ``batch_size``
    different photos, or from every photo in turn (several patches each) when there are fewer.
    """

    def __init__(self, photos: list[Path], patch_size: int, batch_size: int, seed: int = 0,
                 max_side: int = 1024, warn=print) -> None:
        self.names: list[str] = []
        self.images: list[torch.Tensor] = []
        unreadable = small = 0
        for path in photos:
            try:
                rgb = shrink(read_image(path).rgb8, max_side)
            except DerainError as err:  # ImageError names the file and the reason
                warn(f"skipping {err}")
                unreadable += 1
                continue
            if min(rgb.shape[:2]) < patch_size:
                warn(f"skipping {path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than the {patch_size}px patch")
                small += 1
                continue
            self.names.append(path.name)
            self.images.append(_as_chw(rgb))
        where = photos[0].parent if photos else "the folder"
        if not self.images:
            why = [f"{unreadable} unreadable"] * bool(unreadable) + [f"{small} smaller than the {patch_size}px patch"] * bool(small)
            raise DatasetError(f"{where}: no usable photo of {len(photos)}{_reasons(why)}")
        self.patch_size, self.batch_size, self.seed = patch_size, batch_size, seed

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Float tensor (b, 3, P, P) in [0, 1] for this rank at ``step``."""
        # a stream of its own: never the seed PatchSampler uses at any step
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + step) ^ (1 << 48))
        order = torch.randperm(len(self.images), generator=g).tolist()
        chosen = [order[k % len(order)] for k in range(self.batch_size)]  # each photo once, unless too few
        patches = [_random_patch((self.images[i],), self.patch_size, g)[0] for i in chosen]
        return _rank_slice(patches, self.batch_size, rank, world_size)
