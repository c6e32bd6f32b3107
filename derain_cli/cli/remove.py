"""`derain remove`: derain photos, folders and globs."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import console, error_line, exit_codes, say
from derain_cli.errors import EXIT_OK, EXIT_SOME_FAILED, UsageError


def _default_tiles() -> str:
    """The methods' default tiles for --tile's help, from the registry: 'lpnet 2048, ..., others 512'."""
    from derain_cli.methods import DEFAULT_TILE, list_methods

    own = [f"{spec.name} {spec.tile}" for spec in list_methods() if spec.tile != DEFAULT_TILE]
    return ", ".join([*own, f"others {DEFAULT_TILE}"])


def remove(
    inputs: Annotated[list[str], typer.Argument(help="Image or video files, folders or glob patterns.", show_default=False)],
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Output folder, or output file for a single input. Default: next to each input."),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option("-m", "--method", help="Method, optionally with weights tag: lpnet, lpnet.rain100h. Default: lpnet, or an ONNX --weights file's own.", show_default=False),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option("-w", "--weights", help="Checkpoint file or hf://owner/repo/file@revision instead of the manifest's; or a `derain export` .onnx file (onnxruntime)."),
    ] = None,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Include sub-folders and mirror them in the output.")] = False,
    suffix: Annotated[
        str | None, typer.Option(help="Appended to output names. Default: '_derained' next to inputs, none with -o.")
    ] = None,
    ext: Annotated[str | None, typer.Option(help="Output format by extension (png, jpg, webp, tif). Default: the input's.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs that already exist (inputs are never overwritten).")] = False,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip inputs whose output already exists.")] = False,
    save_mask: Annotated[
        bool, typer.Option("--save-mask", help="Also write the predicted rain-location map as NAME_mask.png (methods that predict one, e.g. jorder).")
    ] = False,
    device: Annotated[str, typer.Option(help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps.")] = "auto",
    precision: Annotated[str, typer.Option(help="auto (fp16 on CUDA where safe, else fp32), fp32, fp16 or bf16.")] = "auto",
    tile: Annotated[int | None, typer.Option(metavar="PIXELS", help=f"Tile size for large images; 0 = whole image at once. Default: the method's own ({_default_tiles()}); at least twice its overlap.", show_default=False)] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG/WebP quality (100 = lossless WebP).")] = 95,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images (decompression-bomb guard).")] = 250_000_000,
    shard: Annotated[
        str | None,
        typer.Option(metavar="K/N", help="Process only worker K's share of N (0-based; split by path hash, no coordination needed)."),
    ] = None,
    jobs: Annotated[int, typer.Option("-j", "--jobs", min=0, help="Decode/encode threads overlapping the network (0: none).")] = 2,
    codec: Annotated[
        str | None, typer.Option(help="Video encoder (FFmpeg name). Default: libx264, or libvpx-vp9 for .webm.")
    ] = None,
    crf: Annotated[int, typer.Option(min=0, max=63, help="Video quality for x264/x265/VP9/AV1: lower is better, 18 ~ visually lossless.")] = 18,
    temporal: Annotated[
        float, typer.Option(min=0.0, max=0.95, help="Video: steady leftover rain flicker where the scene holds still (0: off).")
    ] = 0.7,
    offline: Annotated[bool, typer.Option("--offline", help="Never use the network (also HF_HUB_OFFLINE=1).")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="Print one JSON line per file on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only errors on stderr; no progress bar.")] = False,
) -> None:
    """Remove rain from images and videos. Never overwrites inputs; a bad file is reported and skipped.

    Exit codes: 0 all done, 1 some inputs failed, 2 usage error,
    3 weights unavailable or failed verification, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    with exit_codes():
        code = _remove(**locals())
    raise typer.Exit(code)


def _remove(inputs, output, method, weights, recursive, suffix, ext, overwrite, skip_existing, save_mask, device,
            precision, tile, quality, max_pixels, shard, jobs, codec, crf, temporal, offline, json_lines, quiet) -> int:
    from derain_cli.api import load, method_spec
    from derain_cli.inference.tiling import check_tile
    from derain_cli.media.batch import OutputOptions, Shard, collect_inputs, plan_jobs, run_jobs, run_videos
    from derain_cli.media.video import VideoOptions, check_codec, frame_count, is_video

    if overwrite and skip_existing:
        raise UsageError("--overwrite and --skip-existing exclude each other")
    extras = ("mask",) if save_mask else ()
    spec = method_spec(method, weights)  # an unknown name is its own error, before any weights load
    check_tile(spec, tile)
    try:
        spec.require_outputs(extras)
    except UsageError as err:
        raise UsageError(f"--save-mask: {err}") from None
    options = OutputOptions(
        output=output, suffix=suffix, ext=ext, recursive=recursive, overwrite=overwrite,
        skip_existing=skip_existing, quality=quality, max_pixels=max_pixels, extras=extras,
    )
    worker = Shard.parse(shard) if shard else Shard()
    found = collect_inputs(inputs, recursive, exclude=output, suffix=suffix)
    planned, refused = plan_jobs(found.files, options)  # planned over all inputs: every worker decides alike
    early = [r for r in found.skipped + refused if worker.owns(r.input)]
    work = [job for job in planned if worker.owns(job.source)]
    elsewhere = len(found.skipped) + len(refused) + len(planned) - len(early) - len(work)
    videos = [job for job in work if is_video(job.source)]
    pictures = [job for job in work if not is_video(job.source)]
    if videos and codec:
        check_codec(codec)
    notice = (lambda message: None) if quiet else (lambda message: say(message, style="yellow"))
    restorer = load(method, weights, device=device, precision=precision, tile=tile, offline=offline, log=notice)
    if not quiet:
        say(f"derain: {restorer.weights.label} ({restorer.weights.source}) on {restorer.engine.describe()}"
            + (f", shard {worker.index}/{worker.count}: {len(work)} of {len(planned)} files" if worker.count > 1 else ""))

    results = list(early)
    for result in early:
        _report(result, json_lines, quiet)
    show_progress = not quiet and console.is_terminal
    with _progress(show_progress and len(pictures) > 1, len(pictures), "images") as advance:
        for result in run_jobs(pictures, restorer.run, options, jobs):
            results.append(result)
            _report(result, json_lines, quiet)
            advance(1)
    for video in videos:  # one frame bar per video
        with _progress(show_progress, frame_count(video.source), video.source.name) as advance:
            for result in run_videos([video], restorer.engine.run_batch, options, VideoOptions(codec, crf, temporal=temporal), lambda job, n: advance(n)):
                results.append(result)
                _report(result, json_lines, quiet)
    return _summarise(results, elsewhere, quiet)


def _report(result, json_lines: bool, quiet: bool) -> None:
    if json_lines:
        sys.stdout.write(json.dumps(result.as_dict()) + "\n")
        sys.stdout.flush()
    if result.status == "failed":
        error_line(result.error)
    elif not quiet and not json_lines and not console.is_terminal:
        detail = f" ({result.reason})" if result.reason else ""
        say(f"{result.status}{detail}: {result.input}" + (f" -> {result.output}" if result.output else ""))


def _summarise(results, elsewhere: int, quiet: bool) -> int:
    """One line that accounts for every entry: derained, skipped (by reason), failed."""
    failed = [r for r in results if r.status == "failed"]
    if not quiet:
        reasons = Counter(r.reason for r in results if r.status == "skipped")
        skipped = sum(reasons.values())
        why = f" ({', '.join(f'{n} {reason}' for reason, n in reasons.most_common())})" if skipped else ""
        line = f"{sum(r.status == 'ok' for r in results)} derained, {skipped} skipped{why}, {len(failed)} failed"
        say(line + (f"; {elsewhere} left to other shards" if elsewhere else ""))
        for r in failed:
            say(f"  failed: {r.input}", style="red")
    return EXIT_SOME_FAILED if failed else EXIT_OK


class _progress:
    """A rich progress bar on stderr when wanted, else a no-op; yields an advance(n).

    total None (a video whose frame count is unknown) shows a running count without ETA.
    """

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled, self.total, self.label, self.bar = enabled, total, label, None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(f"derain {self.label}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total)
        return lambda n: self.bar.advance(task, n)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
