"""``derain finetune-real``: adapt a checkpoint to a user's own real rain, no clean images needed.

Builds the two data streams (the user's photos; labeled synthetic pairs, given or synthesised),
the chosen semi-supervised objective (adaptation.py) and a Trainer, runs it in a run folder of
the user data directory (resumable), and installs the result as the user's model METHOD.TAG.
"""

from __future__ import annotations

import hashlib
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from derain_cli.data.pairs import PatchSampler, PhotoSampler, find_pairs, find_photos
from derain_cli.training.objectives.distill import TEACHER_FOLDER, distill_objective
from derain_cli.training.trainer import SCHEDULES
from derain_cli.errors import UsageError
from derain_cli.methods import MethodSpec, get_method
from derain_cli.weights.manifest import split_name
from derain_cli.weights.user import run_folder


@dataclass(frozen=True)
class AlgorithmRecipe:
    """An algorithm's published training settings (the command's defaults)."""

    lr: float
    schedule: str
    batch_size: int  # synthetic patches per step; as many real ones
    patch_size: int
    source: str


ALGORITHMS = {
    # learn a real-rain model's outputs on the user's own photos: the start moves towards the
    # teacher where the photos need it (docs/real_rain.md); SIRR and moments darkened and blurred
    "distill": AlgorithmRecipe(
        lr=5e-4, schedule="cosine", batch_size=10, patch_size=80,
        source="derain (docs/real_rain.md): the method's own loss against the teacher's outputs on the photos, "
        "LPNet's batch and patch, Adam 5e-4 cosine from the start's weights",
    ),
    "sirr": AlgorithmRecipe(
        lr=1e-3, schedule="steps", batch_size=20, patch_size=64,
        source="Wei et al. CVPR 2019 (authors' code): Adam 1e-3 decayed x0.1 after 1/3 and 2/3 of the run, "
        "20 synthetic + 20 real 64x64 patches, lambda = (1, 0.5, 1e-5, 1e-9); the mixture term scaled by the "
        "mixture's variance unless --raw-mixture-nll (unscaled, the network collapses to the identity)",
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
PAIRS_FOLDER = "pairs"  # in the run folder: the synthesised pairs, kept across restarts


@dataclass
class FinetuneRequest:
    """Everything ``derain finetune-real`` was asked to do."""

    photos: Path
    method: str = "lpnet"  # METHOD (its default checkpoint) or METHOD.TAG: where adaptation starts
    algorithm: str = "distill"
    teacher: str = "spanet.spa"  # distill: the model whose outputs on the photos are learnt
    weights: str | None = None  # start from this file / hf:// URL instead of METHOD.TAG's checkpoint
    pairs: Path | None = None
    tag: str | None = None
    iterations: int = DEFAULT_ITERATIONS
    batch_size: int | None = None
    patch_size: int | None = None
    lr: float | None = None
    schedule: str | None = None
    mixture_weight: float | None = None  # SIRR's lambda2 (default: the authors' 0.5)
    scale_free: bool = True  # SIRR's mixture term scaled by the mixture's variance (adaptation.py)
    val: Path | None = None
    val_every: int = 500
    checkpoint_every: int = 100
    max_side: int = 1024
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    restart: bool = False
    guard: bool = True  # refuse a result that harms the photos more than its start (harm.py)


def synthesize_pairs(photos: PhotoSampler, make_derainer: Callable[[], Callable], out: Path, seed: int,
                     signature: str, log: Callable[[str], None]) -> Path:
    """Labeled pairs without anyone's clean photos: rain of every ``derain synth`` style added
    to the starting model's derained version of each photo, written to ``out`` (rain/ +
    norain/, PNG). ``out/.complete`` holds the ``signature`` of the inputs (photos, starting
    weights, seed) that made a finished set; a matching set is reused, any other redone.
    ``make_derainer()`` is called only when pairs have to be made."""
    from derain_cli.media.images import Picture, write_image
    from derain_cli.data.synth import STYLES, add_rain

    marker = out / ".complete"
    if marker.is_file() and marker.read_text(encoding="utf-8") == signature:
        log(f"reusing the labeled pairs synthesised earlier in {out}")
        return out
    shutil.rmtree(out, ignore_errors=True)
    log(f"synthesising {len(PAIR_STYLES) * len(photos)} labeled pairs from {len(photos)} derained photos in {out}")
    derain = make_derainer()
    for name, image in zip(photos.names, photos.images):
        clean = derain(image.permute(1, 2, 0).contiguous().numpy())["image"]
        for k, style in enumerate(PAIR_STYLES):
            rainy = add_rain(clean, STYLES[style], seed, zlib.crc32(name.encode()), k)
            write_image(Picture(pixels=clean), out / "norain" / f"{name}_{style}.png")
            write_image(Picture(pixels=rainy), out / "rain" / f"{name}_{style}.png")
    marker.write_text(signature, encoding="utf-8")
    return out


def build_objective(spec: MethodSpec, algorithm: str, pairs: PatchSampler, photos: PhotoSampler,
                    mixture_weight: float | None = None, scale_free: bool = True):
    from derain_cli.training.objectives.adaptation import MomentsObjective, SIRRObjective, SIRRWeights
    from derain_cli.training.objectives.base import SupervisedObjective

    if algorithm == "supervised":
        return SupervisedObjective(pairs)
    if algorithm == "sirr":
        weights = SIRRWeights() if mixture_weight is None else SIRRWeights(mixture=mixture_weight)
        return SIRRObjective(pairs, photos, weights=weights, scale_free=scale_free)
    return MomentsObjective(pairs, photos, spec.feature_stage)


def _check(request: FinetuneRequest) -> None:
    """Option errors, found before any photo is read."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("finetune-real runs as one process (one device); start it without torchrun")
    if request.algorithm not in ALGORITHMS:
        raise UsageError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, got '{request.algorithm}'")
    if (request.mixture_weight is not None or not request.scale_free) and request.algorithm != "sirr":
        raise UsageError("--mixture-weight and --raw-mixture-nll shape the sirr loss; they do nothing for "
                         + request.algorithm)
    if request.schedule is not None and request.schedule not in SCHEDULES:
        raise UsageError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{request.schedule}'")
    for option, value in (("--iterations", request.iterations), ("--batch-size", request.batch_size),
                          ("--patch-size", request.patch_size), ("--val-every", request.val_every),
                          ("--checkpoint-every", request.checkpoint_every), ("--max-side", request.max_side)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be at least 1, got {value}")
    if request.lr is not None and not request.lr > 0:
        raise UsageError(f"--lr must be positive, got {request.lr}")


def _labelled_pairs(request: FinetuneRequest, start: str, photos: PhotoSampler, out: Path,
                    log: Callable[[str], None]) -> tuple[list, str]:
    """The labelled pairs the semi-supervised algorithms mix in, and where they came from:
    ``--pairs``, or rain synthesised on the start's derained photos (kept in the run folder)."""
    from derain_cli.inference.loading import load_engine
    from derain_cli.weights.resolve import resolve, sha256_of

    if request.pairs is not None:
        return find_pairs(request.pairs), f"`{request.pairs}` (given with --pairs)"
    method, start_tag = split_name(request.method)
    start_sha = sha256_of(resolve(f"{method}.{start_tag}", request.weights).path)
    signature = "\n".join([start, start_sha, str(request.seed), _photos_digest(photos)])
    folder = synthesize_pairs(photos, lambda: load_engine(f"{method}.{start_tag}", request.weights, device=request.device)[0].run,
                              out / PAIRS_FOLDER, request.seed, signature, log)
    pair_list = find_pairs(folder)
    return pair_list, (f"synthesised: `derain synth` styles {' + '.join(PAIR_STYLES)} on {start}'s derained "
                       f"versions of the photos ({len(pair_list)} pairs)")


def _photos_digest(photos: PhotoSampler) -> str:
    """sha256 of the photos as training sees them (names and downscaled pixels)."""
    digest = hashlib.sha256()
    for name, image in zip(photos.names, photos.images):
        digest.update(name.encode() + b"\0" + str(tuple(image.shape)).encode())
        digest.update(image.numpy().tobytes())
    return digest.hexdigest()


def _clear_run_keeping_pairs(out: Path) -> None:
    """Empty a run folder for a new run, but keep synthesised pairs: they are reused only when
    their signature (photos' pixels, starting weights' sha256, seed) matches, and they cost
    minutes to make (a run stopped before its first checkpoint would otherwise redo them)."""
    for entry in out.iterdir():
        if entry.name in (PAIRS_FOLDER, TEACHER_FOLDER) and entry.is_dir():
            continue
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def finetune_real(request: FinetuneRequest, log: Callable[[str], None] = print, on_trainer=None,
                  warn: Callable[[str], None] | None = None) -> dict:
    """Adapt, install as the user's model, and return the summary (with ``name``, ``installed``
    and ``kept``: the name an earlier model of that name was renamed to, or None).

    ``log`` gets progress lines, ``warn`` (default: ``log``) the photos left out and why.
    ``on_trainer(trainer)`` (optional) returns the per-step callback (a progress bar, say).
    Raises UsageError (DatasetError) for unusable input before any training starts.
    """
    from derain_cli.training.trainer import TrainConfig, Trainer
    from derain_cli.weights.user import check_installable, install_keeping, safe_tag

    _check(request)
    recipe = ALGORITHMS[request.algorithm]
    method, start_tag = split_name(request.method)
    spec = get_method(method)
    if request.algorithm == "moments" and spec.feature_stage is None:
        raise UsageError(f"{method} declares no feature stage, so --algorithm moments cannot adapt it; use sirr")
    start = request.weights or f"{method}.{start_tag}"
    name = check_installable(f"{method}.{safe_tag(request.tag or request.photos.resolve().name)}")
    photo_files = find_photos(request.photos)
    val_pairs = find_pairs(request.val) if request.val else []
    out = run_folder(name)
    if out.exists() and not request.resume:
        if (out / "last.pth").exists() and not request.restart:
            raise UsageError(f"{out} already holds a run for {name}; pass --resume to continue it, "
                             "--restart to start again, or choose another --tag")
        _clear_run_keeping_pairs(out)
    batch_size = request.batch_size or recipe.batch_size
    patch_size = request.patch_size or recipe.patch_size
    photos = PhotoSampler(photo_files, patch_size, batch_size, request.seed, request.max_side, warn=warn or log)

    if request.algorithm == "distill":
        objective = distill_objective(
            request.teacher, request.photos, [], batch_size=batch_size, patch_size=patch_size, pairs_share=0.0,
            max_side=request.max_side, seed=request.seed, out=out, device=request.device, log=log)
        pair_list, pair_source = [], f"none: {request.teacher}'s outputs on the photos are the targets"
    else:
        pair_list, pair_source = _labelled_pairs(request, start, photos, out, log)
        pairs = PatchSampler(pair_list, patch_size, batch_size, request.seed)
        objective = build_objective(spec, request.algorithm, pairs, photos, request.mixture_weight, request.scale_free)
    skipped = len(photo_files) - len(photos)
    config = TrainConfig(
        method=method, data=str(request.photos), out=str(out), iterations=request.iterations,
        batch_size=batch_size, patch_size=patch_size, lr=request.lr or recipe.lr,
        schedule=request.schedule or recipe.schedule, val=str(request.val) if request.val else None,
        val_every=request.val_every, checkpoint_every=request.checkpoint_every, seed=request.seed,
        device=request.device, tag=name.split(".", 1)[1], init=start,
        extra={
            "command": f"derain finetune-real --algorithm {request.algorithm}",
            "real photos": (f"{len(photos)} unlabeled photos from `{request.photos}`"
                            f"{f' ({skipped} skipped)' if skipped else ''}, longest side at most {request.max_side}px"),
            "synthetic pairs": pair_source,
            **objective.describe(),
            "settings from": recipe.source,
        },
    )
    trainer = Trainer(spec, config, objective, val_pairs, log=log)
    with trainer.stopping_on_signals():  # from here SIGINT/SIGTERM stop at a step boundary, with a checkpoint
        if request.resume:
            trainer.resume()
        log(f"adapting {start} to {len(photos)} photos of {request.photos} ({request.algorithm}), "
            f"{len(pair_list)} synthetic pairs, on {trainer.device}; run folder {out}")
        summary = trainer.train(on_step=on_trainer(trainer) if on_trainer else None)
    _harm_guard(request, f"{method}.{start_tag}", photos, Path(summary["checkpoint"]), out / "card.md", log)
    steps, hours = summary["steps"], summary["wall_time_s"] / 3600
    trained = (f"derain finetune-real --algorithm {request.algorithm} from {start} on {len(photos)} photos of "
               f"{request.photos}: {steps} steps, {summary['hardware']}, {hours:.2f} h")
    installed, kept = install_keeping(name, Path(summary["checkpoint"]), summary["sha256"], trained,
                                      (out / "card.md").read_text(encoding="utf-8"))
    return {**summary, "name": name, "installed": str(installed), "kept": kept}


GUARD_PHOTOS = 8  # photos the harm guard derains with the start and the result


def _harm_guard(request: FinetuneRequest, start: str, photos: PhotoSampler, checkpoint: Path, card: Path,
                log: Callable[[str], None]) -> None:
    """Compare the result with its start on some of the user's photos (derain_cli/evaluation/harm.py) and
    add the figures to the card; HarmfulResult when it darkens, shifts colour or blurs more
    than the start does (unless ``request.guard`` is off)."""
    from derain_cli.inference.loading import load_engine
    from derain_cli.errors import HarmfulResult
    from derain_cli.evaluation.harm import harm_added, on_photos

    chosen = photos.images[:: max(1, len(photos) // GUARD_PHOTOS)][:GUARD_PHOTOS]
    rgb = [image.permute(1, 2, 0).numpy().astype(np.float32) / 255 for image in chosen]
    before, after = on_photos(rgb, load_engine(start, request.weights, device=request.device, precision="fp32")[0].run,
                              load_engine(start.split(".")[0], str(checkpoint), device=request.device, precision="fp32")[0].run)

    def figures(h) -> str:
        return (f"whites {h.bright_shift:+.1f}, shadows {h.dark_shift:+.1f}, colour {h.colour_shift:.1f} levels; "
                f"detail kept {h.detail_kept:.2f}; streaks left {h.streaks_left:.2f}")

    added = harm_added(before, after)
    verdict = ("no more harm than the start" if not added else
               "MORE HARM than the start: " + ", ".join(added) + ("" if request.guard else " (saved: --no-guard)"))
    with open(card, "a", encoding="utf-8") as f:
        f.write(f"\nHarm check on {len(rgb)} of the photos (derain_cli/evaluation/harm.py, over the start's rain mask):\n"
                f"start {start}: {figures(before)}; result: {figures(after)}; {verdict}.\n")
    log(f"harm check on {len(rgb)} photos: start {figures(before)}; result {figures(after)}")
    if added and request.guard:
        raise HarmfulResult(f"the adapted model harms your photos more than {start} does ({', '.join(added)}): "
                            f"not saved; its weights stay in {checkpoint} (--no-guard saves such a result)")
