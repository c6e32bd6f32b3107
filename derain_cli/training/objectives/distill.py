"""Distillation: a student learns what a frozen teacher makes of unlabeled photos.

The teacher (any ``METHOD.TAG``, e.g. ``spanet.spa``, trained on real rain) derains each photo
once, whole (its output at the size the student will see it); the (photo, teacher output)
pairs are kept in the run folder and the student trains on crops of them with its own paper
loss, optionally mixed with labelled pairs so that it keeps what they teach (light rain,
say). The teacher's outputs are cached per photo and reused only when the photos, the
teacher's sha256 and the size limit match, so a stopped run never pays for them twice.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from derain_cli.data.pairs import Pair, PatchSampler, find_photos, shrink
from derain_cli.training.objectives.base import Objective
from derain_cli.errors import DerainError, UsageError

TEACHER_FOLDER = "teacher"  # in the run folder: rain/ (the photos as trained on) + norain/ (the teacher's)


@dataclass(frozen=True)
class Teacher:
    name: str  # METHOD.TAG
    sha256: str


def teacher_pairs(photos: list[Path], teacher: Teacher, derain: Callable[[], Callable], out: Path, max_side: int,
                  log: Callable[[str], None], warn: Callable[[str], None]) -> list[Pair]:
    """(photo, teacher's derained photo) pairs in ``out`` (rain/ + norain/, PNG), made where
    missing. ``derain()`` returns the teacher's ``run`` (called only if a photo needs it).
    Photos longer than ``max_side`` are downscaled first; unreadable ones are skipped."""
    from derain_cli.media.images import Picture, read_image, write_image

    signature = f"{teacher.name}\n{teacher.sha256}\n{max_side}\n"
    marker = out / ".teacher"
    if not (marker.is_file() and marker.read_text(encoding="utf-8") == signature):
        for stale in (*out.glob("rain/*.png"), *out.glob("norain/*.png")):
            stale.unlink()
        out.mkdir(parents=True, exist_ok=True)
        marker.write_text(signature, encoding="utf-8")
    run, pairs = None, []
    for k, path in enumerate(photos, 1):
        name = f"{path.stem}_{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}.png"
        pair = Pair(out / "rain" / name, out / "norain" / name)
        if pair.clean.is_file():
            pairs.append(pair)
            continue
        try:
            rgb = shrink(read_image(path).rgb8, max_side)
        except DerainError as err:
            warn(f"skipping {err}")
            continue
        run = run or derain()
        log(f"teacher {teacher.name}: photo {k}/{len(photos)} {path.name} ({rgb.shape[1]}x{rgb.shape[0]})")
        write_image(Picture(pixels=rgb), pair.rainy)
        write_image(Picture(pixels=run(rgb)["image"]), pair.clean)  # written last: marks it done
        pairs.append(pair)
    if not pairs:
        raise UsageError(f"none of the {len(photos)} photos could be read")
    return pairs


def _list_file(folder: Path) -> Path:
    # one list per launch: torchrun gives every process of a launch the same run id
    return folder / f".pairs-{os.environ.get('TORCHELASTIC_RUN_ID', 'single')}"


def _announce(folder: Path, pairs: list[Pair]) -> None:
    temp = folder / ".pairs.tmp"
    temp.write_text("\n".join(p.rainy.name for p in pairs), encoding="utf-8")
    os.replace(temp, _list_file(folder))


def _announced(folder: Path, timeout_s: float = 6 * 3600) -> list[Pair]:
    """The pairs process 0 made, once it lists them (it may take an hour of deraining)."""
    listed = _list_file(folder)
    waited = 0.0
    while not listed.is_file():
        if waited > timeout_s:
            raise UsageError(f"waited {timeout_s / 3600:.0f} h for the teacher's outputs in {folder}: process 0 made none")
        time.sleep(2.0)
        waited += 2.0
    names = listed.read_text(encoding="utf-8").split("\n")
    return [Pair(folder / "rain" / n, folder / "norain" / n) for n in names]


class DistillObjective(Objective):
    """The student's own loss against the teacher's output on photo crops, plus (optionally)
    against the clean side of labelled pairs; the batch is the two concatenated."""

    name = "distill"
    pick_best = False  # the last weights: validation pairs only watch that labelled rain is kept

    def __init__(self, taught: PatchSampler, teacher: Teacher, labelled: PatchSampler | None = None) -> None:
        self.taught, self.labelled, self.teacher = taught, labelled, teacher

    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(s.batch_size for s in (self.taught, self.labelled) if s is not None)

    def batch(self, step: int, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
        parts = [s.batch(step, rank, world_size) for s in (self.taught, self.labelled) if s is not None]
        return {"rainy": torch.cat([p[0] for p in parts]), "clean": torch.cat([p[1] for p in parts])}

    def losses(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return net.training_loss(batch["rainy"], batch["clean"])

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.name, "teacher_sha256": self.teacher.sha256}

    def load_state_dict(self, state: dict) -> None:
        if state.get("teacher_sha256") != self.teacher.sha256:
            raise UsageError(f"this run was distilled from {state.get('teacher')} (sha256 "
                             f"{str(state.get('teacher_sha256'))[:12]}…), not {self.teacher.name} "
                             f"({self.teacher.sha256[:12]}…): resume with the same --teacher")

    def describe(self) -> dict[str, str]:
        rows = {
            "objective": "distillation: the student's own loss against the teacher's output",
            "teacher": f"{self.teacher.name} (sha256 {self.teacher.sha256})",
            "taught photos": f"{len(self.taught)} photos, {self.taught.batch_size} crops per step",
        }
        if self.labelled is not None:
            rows["labelled pairs"] = f"{len(self.labelled)} pairs, {self.labelled.batch_size} crops per step"
        return rows


def distill_objective(teacher_name: str, photos_dir: Path, labelled: list[Pair], *, batch_size: int, patch_size: int,
                      pairs_share: float, max_side: int, seed: int, out: Path, device: str,
                      log: Callable[[str], None]) -> DistillObjective:
    """The objective of ``derain train --teacher NAME --photos DIR [DATA]``; the teacher's
    outputs go to ``out/teacher``."""
    from derain_cli.inference.loading import load_engine
    from derain_cli.weights.resolve import resolve, sha256_of

    if not 0 <= pairs_share < 1:
        raise UsageError(f"--pairs-share must be in [0, 1), got {pairs_share}")
    paired = round(batch_size * pairs_share) if labelled else 0
    if labelled and not paired:
        raise UsageError(f"--pairs-share {pairs_share} of a batch of {batch_size} leaves no crop for DATA's pairs")
    resolved = resolve(teacher_name)
    teacher = Teacher(teacher_name, sha256_of(resolved.path))
    folder = out / TEACHER_FOLDER
    if int(os.environ.get("RANK", "0")) == 0:
        pairs = teacher_pairs(find_photos(photos_dir), teacher, lambda: load_engine(teacher_name, device=device)[0].run,
                              folder, max_side, log, warn=lambda m: log(f"warning: {m}"))
        _announce(folder, pairs)
    else:  # under torchrun one process derains the photos; the others wait for its list
        pairs = _announced(folder)
    taught = PatchSampler(pairs, patch_size, batch_size - paired, seed)
    # a stream of its own for the labelled crops: never the seed of the taught ones
    extra = PatchSampler(labelled, patch_size, paired, seed + 7919) if paired else None
    return DistillObjective(taught, teacher, extra)
