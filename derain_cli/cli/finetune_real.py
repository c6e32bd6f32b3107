"""`derain finetune-real`: adapt a checkpoint to your own rainy photos (no clean images)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import console, exit_codes, say
from derain_cli.cli.train import kept_line, positive


def finetune_real(
    photos: Annotated[Path, typer.Argument(help="Folder of your real rainy photos (no clean versions needed).", show_default=False)],
    method: Annotated[str, typer.Option("-m", "--method", help="Where adaptation starts: METHOD (its default checkpoint) or METHOD.TAG.")] = "lpnet",
    algorithm: Annotated[str, typer.Option("-a", "--algorithm", help="distill (learn --teacher's outputs on your photos; the default), sirr (Wei et al. 2019: rain mixture + TV), moments (Qiu et al. 2022: feature statistics matching), or supervised (the control: synthetic pairs only).")] = "distill",
    teacher: Annotated[str, typer.Option(help="distill: the model whose outputs on your photos are learnt (METHOD.TAG).")] = "spanet.spa",
    tag: Annotated[str | None, typer.Option(help="Name the result METHOD.TAG. Default: the photo folder's name.")] = None,
    pairs: Annotated[Path | None, typer.Option(help="Labeled synthetic pairs (rain/ + norain/). Default: synthesised on the starting model's derained photos.")] = None,
    weights: Annotated[str | None, typer.Option("-w", "--weights", help="Start from this checkpoint file or hf:// URL instead of METHOD.TAG's.")] = None,
    iterations: Annotated[int, typer.Option(min=1, help="Training steps.")] = 2000,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Synthetic patches per step, as many real ones. Default: the algorithm's (sirr 20, moments 16).")] = None,
    patch_size: Annotated[int | None, typer.Option(min=1, help="Square patch side in pixels. Default: 64.")] = None,
    lr: Annotated[float | None, typer.Option(callback=lambda v: positive("--lr", v), help="Adam learning rate. Default: the algorithm's (sirr 1e-3 with x0.1 steps, moments 5e-4).")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant, cosine or steps (x0.1 after 1/3 and 2/3). Default: the algorithm's.")] = None,
    mixture_weight: Annotated[float | None, typer.Option(min=0.0, help="sirr: weight of the mixture NLL term (lambda2). Default: the authors' 0.5.")] = None,
    raw_mixture_nll: Annotated[bool, typer.Option("--raw-mixture-nll", help="sirr: the authors' unscaled mixture term (collapses the network to the identity; see docs/adaptation.md).")] = False,
    val: Annotated[Path | None, typer.Option(help="Paired folder to validate on (keeps the best step); default: none, the last step is kept.")] = None,
    val_every: Annotated[int, typer.Option(min=1, help="Validate and log every N steps.")] = 500,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Write the resumable checkpoint every N steps.")] = 100,
    max_side: Annotated[int, typer.Option(min=1, help="Downscale photos whose longest side exceeds this (memory).")] = 1024,
    resume: Annotated[bool, typer.Option("--resume", help="Continue this METHOD.TAG's interrupted run.")] = False,
    restart: Annotated[bool, typer.Option("--restart", help="Discard this METHOD.TAG's earlier run and start again.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for patch sampling and synthesised rain.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar.")] = False,
    guard: Annotated[bool, typer.Option("--guard/--no-guard", help="Refuse to save a result that darkens, shifts colour or blurs your photos more than its start does (measured on 8 of them).")] = True,
) -> None:
    """Adapt a method to the rain in your own photos (semi-supervised), saved as METHOD.TAG in
    your data directory ($DERAIN_DATA_DIR overrides); then `derain remove -m METHOD.TAG`.
    Ctrl-C (exit 130) or SIGTERM (exit 143) writes the checkpoint of the step reached;
    --resume continues from it."""
    arguments = dict(locals())
    from derain_cli.cli.train import interrupt_report, stop_signals

    with exit_codes(), stop_signals(), interrupt_report(lambda: _run_folder(method, tag, photos) / "last.pth"):
        _finetune_real(**arguments)


def _run_folder(method: str, tag: str | None, photos: Path) -> Path:
    """The run folder finetune-real uses for these options (as derain_cli.training.finetune names it)."""
    from derain_cli.weights.user import run_folder
    from derain_cli.weights.manifest import split_name
    from derain_cli.weights.user import check_installable, safe_tag

    return run_folder(check_installable(f"{split_name(method)[0]}.{safe_tag(tag or photos.resolve().name)}"))


def _finetune_real(photos, method, algorithm, teacher, tag, pairs, weights, iterations, batch_size, patch_size, lr, schedule, mixture_weight, raw_mixture_nll, val,
                   val_every, checkpoint_every, max_side, resume, restart, seed, device, quiet, guard) -> None:
    from derain_cli.cli.train import training_progress
    from derain_cli.errors import UsageError
    from derain_cli.training.finetune import FinetuneRequest, finetune_real as run

    if resume and restart:
        raise UsageError("--resume and --restart exclude each other")
    request = FinetuneRequest(
        photos=photos, method=method, algorithm=algorithm, teacher=teacher, weights=weights, pairs=pairs, tag=tag, iterations=iterations,
        batch_size=batch_size, patch_size=patch_size, lr=lr, schedule=schedule, mixture_weight=mixture_weight, scale_free=not raw_mixture_nll, val=val, val_every=val_every,
        checkpoint_every=checkpoint_every, max_side=max_side, seed=seed, device=device, resume=resume, restart=restart,
        guard=guard,
    )
    log = (lambda message: None) if quiet else say
    bars = []

    def progress(trainer):
        bars.append(training_progress(trainer, iterations, not quiet and console.is_terminal, log, label=algorithm))
        return bars[0]

    try:  # Ctrl-C / SIGTERM: the Trainer writes the checkpoint of the step reached; the caller says where
        summary = run(request, log=log, on_trainer=progress,
                      warn=lambda message: say(f"warning: {message}", style="yellow"))
    finally:
        for bar in bars:
            bar.close()
    say(f"done: {summary['steps']} steps in {summary['wall_time_s'] / 60:.1f} min; saved as {summary['name']} "
        f"({summary['installed']})")
    if summary.get("kept"):
        say(kept_line(summary["name"], summary["kept"]))
    say(f"use it: derain remove PHOTOS -m {summary['name']}")
