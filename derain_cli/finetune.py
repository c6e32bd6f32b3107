"""``derain finetune-real``: adapt a checkpoint to a user's own real rain, no clean images needed.

Builds the two data streams (the user's photos; labeled synthetic pairs, given or synthesised),
the chosen semi-supervised objective (adaptation.py) and a Trainer, runs it in a run folder of
the user data directory (resumable), and installs the result as the user's model METHOD.TAG.
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from derain_cli.data import PatchSampler, PhotoSampler, find_pairs, find_photos
from derain_cli.errors import UsageError
from derain_cli.methods import MethodSpec, get_method
from derain_cli.weights.manifest import split_name


@dataclass(frozen=True)
class AlgorithmRecipe:
    """An algorithm's published training settings (the command's defaults)."""

    lr: float
    schedule: str
    batch_size: int  # synthetic patches per step; as many real ones
    patch_size: int
    source: str


ALGORITHMS = {
    "sirr": AlgorithmRecipe(
        lr=1e-3, schedule="steps", batch_size=20, patch_size=64,
        source="Wei et al. CVPR 2019 (authors' code): Adam 1e-3 decayed x0.1 after 1/3 and 2/3 of the run, "
        "20 synthetic + 20 real 64x64 patches, lambda = (1, 0.5, 1e-5, 1e-9)",
    ),
    # the control of both: the same synthetic pairs and schedule, the real photos unused
    "supervised": AlgorithmRecipe(
        lr=1e-3, schedule="steps", batch_size=20, patch_size=64,
        source="control: the method's own supervised loss on the synthetic pairs only (SIRR's schedule)",
    ),
    "moments": AlgorithmRecipe(
        lr=5e-4, schedule="constant", batch_size=16, patch_size=64,
        source="Qiu et al. 2022: Adam 5e-4, batch 16 (synthetic) + 16 (real), 64x64 patches, omega = 1",
    ),
}
DEFAULT_ITERATIONS = 2000
PAIR_STYLES = ("light", "heavy")


@dataclass
class FinetuneRequest:
    """Everything ``derain finetune-real`` was asked to do."""

    photos: Path
    method: str = "lpnet"  # METHOD (its default checkpoint) or METHOD.TAG: where adaptation starts
    algorithm: str = "sirr"
    weights: str | None = None  # start from this file / hf:// URL instead of METHOD.TAG's checkpoint
    pairs: Path | None = None
    tag: str | None = None
    iterations: int = DEFAULT_ITERATIONS
    batch_size: int | None = None
    patch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    mixture_weight: float | None = None  # SIRR's lambda2 (default: the authors' 0.5)
    val: Path | None = None
    val_every: int = 500
    checkpoint_every: int = 100
    max_side: int = 1024
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    restart: bool = False


def synthesize_pairs(photos: PhotoSampler, derain: Callable, out: Path, seed: int,
                     log: Callable[[str], None]) -> Path:
    """Labeled pairs without anyone's clean photos: rain of every ``derain synth`` style added
    to the starting model's derained version of each photo. Written once to ``out`` (rain/ +
    norain/, PNG) and reused by a resumed run (``out/.complete`` marks a finished set)."""
    from derain_cli.io import Picture, write_image
    from derain_cli.synth import STYLES, add_rain

    if (out / ".complete").is_file():
        return out
    log(f"synthesising {len(PAIR_STYLES) * len(photos)} labeled pairs from {len(photos)} derained photos in {out}")
    for name, image in zip(photos.names, photos.images):
        clean = derain(image.permute(1, 2, 0).contiguous().numpy())["image"]
        stem = Path(name).stem
        for style in PAIR_STYLES:
            rainy = add_rain(clean, STYLES[style], seed, zlib.crc32(name.encode()), PAIR_STYLES.index(style))
            write_image(Picture(pixels=clean), out / "norain" / f"{stem}_{style}.png")
            write_image(Picture(pixels=rainy), out / "rain" / f"{stem}_{style}.png")
    (out / ".complete").write_text("")
    return out


def build_objective(spec: MethodSpec, algorithm: str, pairs: PatchSampler, photos: PhotoSampler,
                    mixture_weight: float | None = None):
    from derain_cli.adaptation import MomentsObjective, SIRRObjective, SIRRWeights
    from derain_cli.engine.objectives import SupervisedObjective

    if algorithm == "supervised":
        return SupervisedObjective.from_sampler(pairs)
    if algorithm == "sirr":
        weights = SIRRWeights() if mixture_weight is None else SIRRWeights(mixture=mixture_weight)
        return SIRRObjective(pairs, photos, weights=weights)
    return MomentsObjective(pairs, photos, spec.feature_stage)


def run_folder(name: str) -> Path:
    from derain_cli.weights.user import runs_dir

    return runs_dir() / "finetune-real" / name


def finetune_real(request: FinetuneRequest, log: Callable[[str], None] = print, on_trainer=None,
                  warn: Callable[[str], None] | None = None) -> dict:
    """Adapt, install as the user's model, and return the summary (with ``name`` and ``installed``).

    ``log`` gets progress lines, ``warn`` (default: ``log``) the photos left out and why.
    ``on_trainer(trainer)`` (optional) returns the per-step callback (a progress bar, say).
    Raises UsageError (DatasetError) for unusable input before any training starts.
    """
    from derain_cli.api import load
    from derain_cli.engine.training import TrainConfig, Trainer
    from derain_cli.weights.user import install, safe_tag

    if request.algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got '{request.algorithm}'")
    recipe = ALGORITHMS[request.algorithm]
    method, start_tag = split_name(request.method)
    spec = get_method(method)
    if not hasattr(spec.build(), "training_loss"):
        raise UsageError(f"{method} cannot be trained (its network has no training loss)")
    start = request.weights or f"{method}.{start_tag}"
    photo_files = find_photos(request.photos)
    name = f"{method}.{safe_tag(request.tag or request.photos.resolve().name)}"
    out = run_folder(name)
    if (out / "last.pth").exists() and not request.resume:
        if not request.restart:
            raise UsageError(f"{out} already holds a run for {name}; pass --resume to continue it, "
                             "--restart to start again, or choose another --tag")
        shutil.rmtree(out)
    batch_size = request.batch_size or recipe.batch_size
    patch_size = request.patch_size or recipe.patch_size
    photos = PhotoSampler(photo_files, patch_size, batch_size, request.seed, request.max_side,
                          warn=warn or log)

    if request.pairs is not None:
        pair_source = f"`{request.pairs}` (given with --pairs)"
        pair_list = find_pairs(request.pairs)
    else:
        restorer = load(method + "." + start_tag, request.weights, device=request.device)
        folder = synthesize_pairs(photos, restorer.run, out / "pairs", request.seed, log)
        pair_list = find_pairs(folder)
        pair_source = (f"synthesised: `derain synth` styles {' + '.join(PAIR_STYLES)} on {start}'s derained "
                       f"versions of the photos ({len(pair_list)} pairs)")
    pairs = PatchSampler(pair_list, patch_size, batch_size, request.seed)
    objective = build_objective(spec, request.algorithm, pairs, photos, request.mixture_weight)
    skipped = len(photo_files) - len(photos)
    config = TrainConfig(
        method=method, data=str(request.photos), out=str(out), iterations=request.iterations,
        batch_size=batch_size, patch_size=patch_size, lr=request.lr or recipe.lr, schedule=request.schedule or recipe.schedule,
        val=str(request.val) if request.val else None, val_every=request.val_every,
        checkpoint_every=request.checkpoint_every, seed=request.seed, device=request.device,
        tag=name.split(".", 1)[1], init=start,
        extra={
            "command": f"derain finetune-real --algorithm {request.algorithm}",
            "real photos": (f"{len(photos)} unlabeled photos from `{request.photos}`"
                            f"{f' ({skipped} skipped)' if skipped else ''}, longest side at most {request.max_side}px"),
            "synthetic pairs": pair_source,
            **objective.describe(),
            "settings from": recipe.source,
        },
    )
    val_pairs = find_pairs(request.val) if request.val else []
    trainer = Trainer(spec, config, objective, val_pairs, log=log)
    if request.resume:
        trainer.resume()
    log(f"adapting {start} to {len(photos)} photos of {request.photos} ({request.algorithm}), "
        f"{len(pair_list)} synthetic pairs, on {trainer.device}; run folder {out}")
    summary = trainer.train(on_step=on_trainer(trainer) if on_trainer else None)
    steps, hours = summary["steps"], summary["wall_time_s"] / 3600
    trained = (f"derain finetune-real --algorithm {request.algorithm} from {start} on {len(photos)} photos of "
               f"{request.photos}: {steps} steps, {summary['hardware']}, {hours:.2f} h")
    installed = install(name, Path(summary["checkpoint"]), summary["sha256"], trained,
                        (out / "card.md").read_text(encoding="utf-8"))
    return {**summary, "name": name, "installed": str(installed)}
