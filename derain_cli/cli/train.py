"""`derain train`: supervised training on paired rainy/clean data, or unpaired training
(``--rainy DIR --clean DIR``) for the methods that learn without pairs (LIR)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import console, exit_codes, say


def train(
    data: Annotated[Path | None, typer.Argument(help="Paired training folder: rain/ + norain/, input/ + target/, or rain-N / norain-N files. Not given with --rainy/--clean.")] = None,
    method: Annotated[str, typer.Option("-m", "--method", help="Method to train.")] = "lpnet",
    out: Annotated[Path, typer.Option("-o", "--out", help="Run folder: checkpoints, log.jsonl, exported weights.")] = Path("runs/train"),
    val: Annotated[Path | None, typer.Option(help="Paired validation folder (default: hold out --val-split of the data).")] = None,
    val_split: Annotated[float, typer.Option(min=0.0, max=0.5, help="Fraction of pairs held out for validation when --val is not given (0 to 0.5).")] = 0.05,
    iterations: Annotated[int | None, typer.Option(min=1, help="Training iterations. Default: the paper's.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Patches per iteration (split over torchrun processes). Default: the paper's.")] = None,
    patch_size: Annotated[int | None, typer.Option(min=1, help="Square patch side in pixels. Default: the paper's.")] = None,
    lr: Annotated[float | None, typer.Option(callback=lambda v: positive("--lr", v), help="Adam learning rate. Default: the paper's.")] = None,
    weight_decay: Annotated[float | None, typer.Option(min=0.0, help="Adam weight decay. Default: the paper's.")] = None,
    schedule: Annotated[str, typer.Option(help="Learning-rate schedule: constant (the paper's), cosine (to zero), steps (x0.1 after 1/3 and 2/3 of the run) or multistep:F1,F2,...:FACTOR (x FACTOR at those fractions of the run, e.g. PReNet's multistep:0.3,0.5,0.8:0.2).")] = "constant",
    val_every: Annotated[int, typer.Option(min=1, help="Validate (Y-PSNR/SSIM) and log every N iterations.")] = 1000,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write the resumable checkpoint every N iterations.")] = 1000,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")] = False,
    tag: Annotated[str, typer.Option(help="Name of the result: saved as your model METHOD.TAG (use it with -m METHOD.TAG; a shipped name is not saved), and the manifest entry's tag.")] = "custom",
    init: Annotated[str | None, typer.Option(help="Start from these weights (file, hf:// URL or method.tag, e.g. lpnet.rain100l) instead of random initialisation.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and patch sampling.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps (torchrun processes take their local GPU).")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast on CUDA, and on CPUs with native bf16, for methods measured safe; else fp32), fp32, bf16 or fp16 (CUDA, loss-scaled).")] = "auto",
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the training step (the first steps pay for compiling).")] = False,
    minutes: Annotated[float | None, typer.Option(callback=lambda v: positive("--minutes", v), help="Stop (checkpoint written, --resume continues) after this many minutes.")] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    rainy: Annotated[Path | None, typer.Option(help="Unpaired training (lir, lir-small): folder of rainy photos.")] = None,
    clean: Annotated[Path | None, typer.Option(help="Unpaired training: folder of clean photos of similar scenes (no pairs needed).")] = None,
    semantic: Annotated[bool, typer.Option("--semantic/--no-semantic", help="Unpaired training: LIR's semantic (VGG19 perceptual) loss; needs VGG19 ImageNet weights.")] = True,
    vgg: Annotated[Path | None, typer.Option(help="Unpaired training: VGG19 ImageNet state dict (torchvision's or timm's keys) for the semantic loss, instead of the manifest's vgg19.imagenet.")] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download (VGG19 for the semantic loss, --init weights).")] = False,
    split_unpaired: Annotated[bool, typer.Option("--split-unpaired", help="Unpaired training on paired DATA, as unsupervised papers evaluate: the rainy pictures of half the pairs against the clean pictures of the other half (validation held out as usual).")] = False,
    teacher: Annotated[str | None, typer.Option(help="Distillation: a model (METHOD.TAG, e.g. spanet.spa, trained on real rain) whose outputs on --photos the method learns; DATA, if given, adds labelled pairs.")] = None,
    photos: Annotated[Path | None, typer.Option(help="Distillation: folder of unlabeled rainy photos for the --teacher to derain.")] = None,
    pairs_share: Annotated[float, typer.Option(help="Distillation with DATA: the share of each batch cut from DATA's labelled pairs.")] = 0.25,
    max_side: Annotated[int, typer.Option(help="Distillation: photos longer than this are downscaled (area) before the teacher sees them.", min=64)] = 2048,
) -> None:
    """Train a method on paired data (or lir on unpaired --rainy/--clean photos); writes last.pth
    (resumable), best/final.safetensors and a ready weights.toml entry, and saves the result as
    your model METHOD.TAG. Runs under `torchrun --nproc_per_node N -m derain_cli train ...` too.
    Ctrl-C (exit 130) or SIGTERM (exit 143) writes the checkpoint of the step reached; --resume
    continues from it."""
    arguments = dict(locals())
    import os

    with exit_codes(), stop_signals(), interrupt_report(lambda: out / "last.pth", int(os.environ.get("RANK", "0")) == 0):
        _train(**arguments)


def positive(option: str, value: float | None) -> float | None:
    """A typer callback: ``value`` if it is above 0 (or not given); else a usage error (exit 2)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be above 0, got {value:g}", param_hint=f"'{option}'")
    return value


@contextmanager
def stop_signals() -> Iterator[None]:
    """For a whole training command: SIGTERM stops it as Ctrl-C does (raising Interrupted,
    not ending the process silently). While the Trainer trains, it handles both itself and
    stops at a step boundary with a checkpoint."""
    import signal
    import threading

    from derain_cli.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupt_report(last: Callable[[], Path | None], show: bool = True) -> Iterator[None]:
    """Ctrl-C or SIGTERM during a training command: one line saying what stopped it, where the
    checkpoint to continue from is (``last()``: the run's last.pth, None if unknown yet) and
    that --resume continues; exit 130 (SIGINT) or 143 (SIGTERM)."""
    from derain_cli.errors import EXIT_INTERRUPTED, Interrupted

    try:
        yield
    except KeyboardInterrupt as err:
        what = err.what if isinstance(err, Interrupted) else "interrupted (Ctrl-C)"
        if isinstance(err, Interrupted) and err.checkpoint is not None:
            line = (f"{what} at step {err.step}: checkpoint written to {err.checkpoint}; "
                    "the same command with --resume continues from it")
        else:
            try:
                path = last()
            except Exception:  # noqa: BLE001 - an unusable name is reported by the command itself
                path = None
            if path is not None and path.is_file():
                line = (f"{what}, stopped without a new checkpoint; the last one written, {path}, is kept: "
                        "the same command with --resume continues from it")
            else:
                line = f"{what} before any checkpoint was written: nothing to resume; run the same command again"
        if show:
            say(line, style="yellow")
        raise typer.Exit(getattr(err, "exit_code", EXIT_INTERRUPTED)) from None


def _train(data, method, out, val, val_split, iterations, batch_size, patch_size, lr, weight_decay, schedule,
           val_every, checkpoint_every, resume, tag, init, seed, device, precision, compile, minutes, quiet,
           rainy, clean, semantic, vgg, offline, split_unpaired, teacher, photos, pairs_share, max_side) -> None:
    import os
    import time

    started = time.time()

    from derain_cli.data.pairs import find_pairs, find_photos
    from derain_cli.training.objectives.base import SupervisedObjective
    from derain_cli.training.trainer import TrainConfig, Trainer, split_pairs
    from derain_cli.errors import UsageError
    from derain_cli.methods import get_method
    from derain_cli.training.objectives.unpaired import unpaired_halves

    spec = get_method(method)
    recipe = spec.recipe
    mode = _check_data(spec, data, rainy, clean, split_unpaired, teacher, photos)
    unpaired = mode in ("folders", "split")
    if vgg is not None and not unpaired:
        raise UsageError("--vgg is for unpaired training (--rainy/--clean or --split-unpaired)")
    if mode == "folders":
        train_pairs, val_pairs = [], find_pairs(val) if val else []
        unpaired_photos = (find_photos(rainy), find_photos(clean))
        described = f"rainy {rainy}, clean {clean} (unpaired)"
    elif mode == "distill" and data is None:
        train_pairs, val_pairs = [], find_pairs(val) if val else []
        described = f"{photos}, taught by {teacher}"
    else:
        pairs = find_pairs(data)
        train_pairs, val_pairs = (pairs, find_pairs(val)) if val else split_pairs(pairs, val_split)
        unpaired_photos = unpaired_halves(train_pairs)
        described = (f"{data}, --split-unpaired: rainy pictures of {len(unpaired_photos[0])} pairs, clean pictures of "
                     f"{len(unpaired_photos[1])} others (unpaired)" if unpaired else str(data))
        if mode == "distill":
            described = f"{photos}, taught by {teacher}, with the labelled pairs of {data}"
    config = TrainConfig(
        method=spec.name, data=described, out=str(out),
        iterations=iterations or recipe.iterations,
        batch_size=batch_size or recipe.batch_size, patch_size=patch_size or recipe.patch_size,
        lr=lr or recipe.lr, weight_decay=recipe.weight_decay if weight_decay is None else weight_decay,
        schedule=schedule, val=str(val) if val else None, val_split=0.0 if val or not train_pairs else val_split,
        val_every=val_every, checkpoint_every=checkpoint_every, seed=seed, device=device, tag=tag, init=init,
        precision=precision, compile=compile, sampler="device",
    )
    installable = _installable(f"{spec.name}.{tag}")
    if (out / "last.pth").exists() and not resume:
        raise UsageError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    log = say if rank0 and not quiet else (lambda message: None)
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    if unpaired:
        objective = _unpaired_objective(spec, *unpaired_photos, config, semantic, vgg, log)
        what = f"{len(objective.rainy)} rainy + {len(objective.clean)} clean unpaired photos"
    elif mode == "distill":
        from derain_cli.training.objectives.distill import distill_objective

        objective = distill_objective(
            teacher, photos, train_pairs, batch_size=config.batch_size, patch_size=config.patch_size,
            pairs_share=pairs_share, max_side=max_side, seed=config.seed, out=out, device=device, log=log)
        config.extra.update({"command": "derain train --teacher", **objective.describe()})
        what = f"{len(objective.taught)} photos taught by {teacher}" + (f" + {len(train_pairs)} pairs" if train_pairs else "")
    else:
        objective = SupervisedObjective.from_pairs(train_pairs, config.patch_size, config.batch_size, config.seed,
                                                   sampler=config.sampler)
        what = _count(len(train_pairs), "pair")
    trainer = Trainer(spec, config, objective, val_pairs, log=log)
    with trainer.stopping_on_signals():  # from here a signal stops at a step boundary, with a checkpoint
        summary = _run(trainer, spec, config, out, resume, compile, what, val_pairs, rank0, quiet, minutes, started, log)
    if rank0 and summary:
        _report(summary, config, spec, tag, out, installable, log)


def _run(trainer, spec, config, out, resume, compile, what, val_pairs, rank0, quiet, minutes, started, log) -> dict:
    if spec.cpu_size and trainer.device.type == "cpu":
        log(f"warning: {spec.name} is the paper's size, meant for a GPU; {spec.cpu_size} is the CPU size")
    if resume:
        trainer.resume()
    log(f"training {spec.name} on {what} ({_count(len(val_pairs), 'pair')} for validation), "
        f"{trainer.world_size} process(es) on {trainer.device} ({trainer.precision}"
        f"{', compiled' if compile else ''}); run folder {out}")
    show_bar = rank0 and not quiet and console.is_terminal
    progress = training_progress(trainer, config.iterations, show_bar, log)
    try:
        stop_at = started + 60 * minutes if minutes else None
        return trainer.train(on_step=progress, stop_at=stop_at)
    finally:
        progress.close()


def _report(summary, config, spec, tag, out, installable, log) -> None:
    best, last = summary["best"], summary["last_validation"]
    score = (f"; best validation Y-PSNR {best['psnr_y']:.2f} dB at step {best['step']}" if best
             else f"; last validation Y-PSNR {last['psnr_y']:.2f} dB" if last else "")
    if not summary["complete"]:
        log(f"stopped at the time limit; `--resume` continues to {config.iterations} iterations")
    log(f"done: {summary['steps']} iterations in {summary['wall_time_s'] / 60:.1f} min{score}")
    log(f"weights: {summary['checkpoint']} (manifest entry in {out / 'weights_entry.toml'})")
    if installable:
        _install(installable, out, summary, log)
    else:
        log(f"{spec.name}.{tag} is a checkpoint shipped with derain: not saved among your models")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _installable(name: str) -> str | None:
    """METHOD.TAG under which the result joins the user's models; None for a shipped name
    (a run that reproduces a shipped checkpoint). A malformed tag is refused before training."""
    from derain_cli.weights.manifest import load_manifest
    from derain_cli.weights.user import check_installable

    if name in load_manifest():
        return None
    return check_installable(name)


def _install(name: str, out: Path, summary: dict, log) -> None:
    """Save the run's weights as the user's model ``name`` (``-m name`` then finds it)."""
    import tomllib

    from derain_cli.weights.user import install_keeping

    entry = tomllib.loads((out / "weights_entry.toml").read_text())
    table = next(iter(next(iter(entry.values())).values()))
    folder, kept = install_keeping(name, Path(summary["checkpoint"]), summary["sha256"], table["trained"],
                                   (out / "card.md").read_text())
    log(f"saved as your model {name} ({folder}); use it with -m {name}")
    if kept:  # said even with --quiet: a model of that name was there before
        say(kept_line(name, kept))


def kept_line(name: str, kept: str) -> str:
    """The one line saying where the model a new one of the same name replaced is."""
    return (f"your earlier {name} is kept as {kept} (-m {kept}; `derain models remove {kept}` deletes it)")


def _check_data(spec, data, rainy, clean, split_unpaired, teacher, photos) -> str:
    """"paired", "folders" (--rainy/--clean), "split" (--split-unpaired) or "distill"
    (--teacher/--photos, DATA optional); a clear error for a mix that cannot work."""
    from derain_cli.errors import UsageError

    if teacher is not None or photos is not None:
        if teacher is None or photos is None:
            raise UsageError("distillation needs both --teacher METHOD.TAG and --photos DIR")
        if spec.training != "paired" or rainy is not None or clean is not None or split_unpaired:
            raise UsageError(f"distillation trains a paired method on the teacher's outputs; {spec.name} with "
                             "--rainy/--clean/--split-unpaired cannot be distilled")
        return "distill"

    unpaired_methods = "lir, lir-small"
    if (rainy is not None or clean is not None or split_unpaired) and spec.training != "unpaired":
        raise UsageError(f"{spec.name} trains on pairs: give DATA (rain/ + norain/); --rainy/--clean and "
                         f"--split-unpaired are for the unpaired methods ({unpaired_methods})")
    if rainy is not None or clean is not None:
        if rainy is None or clean is None:
            raise UsageError("unpaired training needs both --rainy DIR and --clean DIR")
        if data is not None or split_unpaired:
            raise UsageError("give either DATA or --rainy/--clean, not both")
        return "folders"
    if data is None:
        hint = " or --rainy DIR --clean DIR (unpaired)" if spec.training == "unpaired" else ""
        raise UsageError(f"no training data: give a paired folder DATA{hint}")
    return "split" if split_unpaired else "paired"  # lir on plain pairs: L1 fine-tuning


def _unpaired_objective(spec, rainy: list, clean: list, config, semantic, vgg, log):
    from derain_cli.training.objectives.unpaired import UnpairedObjective, semantic_network

    import torch

    network = None
    source = "off"
    if semantic:
        network, source = semantic_network(vgg)
    net = spec.build()
    torch.manual_seed(config.seed)  # the objective's networks start from --seed too
    # the discriminators halve their rates at each third of the run, as the paper's 100k of 300k
    objective = UnpairedObjective.from_photos(
        rainy, clean, net.dim, net.n_res, patch_size=config.patch_size, batch_size=config.batch_size,
        seed=config.seed, vgg=network, warn=lambda m: log(f"warning: {m}"), lr=config.lr,
        weight_decay=config.weight_decay, lr_step=max(1, config.iterations // 3))
    objective.vgg_source = source
    config.extra["command"] = "derain train (unpaired, LIR)"
    return objective


def _terms(record: dict) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("step", "lr", "elapsed_s"))


def training_progress(trainer, total: int, show_bar: bool, log, label: str = "train"):
    """A per-step callback: a rich bar with every loss term on a terminal, else one log line
    per validation / log point. ``on_step.close()`` stops the bar (also after Ctrl-C)."""
    if not show_bar:
        def on_step(step, record):
            if "elapsed_s" in record:
                log(f"step {step}/{total} {_terms(record)}")
        on_step.close = lambda: None
        return on_step

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeRemainingColumn(),
                   TextColumn("{task.fields[terms]}  val Y-PSNR {task.fields[psnr]}"), console=console)
    task = bar.add_task(label, total=total, completed=trainer.step, terms="", psnr="-")
    bar.start()

    def on_step(step, record):
        fields = {"terms": _terms(record)} if record else {}
        if "psnr_y" in record:
            fields["psnr"] = f"{record['psnr_y']:.2f}"
        bar.update(task, completed=step, **fields)
        if step >= total:
            bar.stop()
    on_step.close = bar.stop
    return on_step
