"""Turning command-line inputs into (input, output) jobs and running them one by one.

Inputs are files, folders (``recursive`` mirrors sub-folders) and glob patterns. Outputs
never overwrite an input; an existing output is an error unless ``overwrite`` or
``skip_existing``. A failing file becomes a failed result and the batch carries on.
"""

from __future__ import annotations

import glob
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from derain_cli.errors import UsageError
from derain_cli.io import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Picture, read_image, write_image

DEFAULT_SUFFIX = "_derained"


@dataclass(frozen=True)
class OutputOptions:
    """Where and how results are written.

    output: a folder, or a file when there is exactly one input file; None writes next to
        each input with ``suffix`` (default ``_derained``).
    suffix: appended to the stem; default ``_derained`` next to inputs, none in a folder.
    ext: output extension (``png``, ``.jpg``...); default: the input's.
    """

    output: Path | None = None
    suffix: str | None = None
    ext: str | None = None
    recursive: bool = False
    overwrite: bool = False
    skip_existing: bool = False
    quality: int = 95
    max_pixels: int = DEFAULT_MAX_PIXELS
    extras: tuple[str, ...] = ()  # extra declared outputs to save, e.g. ("mask",): NAME_mask.png


def extra_path(target: Path, name: str) -> Path:
    """Where an extra output (a one-channel map) of ``target`` goes: a PNG beside it."""
    return target.with_name(f"{target.stem}_{name}.png")


@dataclass
class FileResult:
    input: str
    output: str | None
    status: str  # ok | failed | skipped
    error: str | None = None
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    extras: tuple[tuple[str, Path], ...] = ()

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file the job writes: the picture, then its extra maps."""
        return (self.target, *(path for _, path in self.extras))


def _is_candidate(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def collect_inputs(specs: Iterable[str], recursive: bool = False, exclude: Path | None = None) -> list[tuple[Path, Path]]:
    """(file, path relative to its root folder) pairs, in order, without duplicates.

    A path that does not exist is kept (its job fails with a clear message) so that a
    typo is reported rather than silently dropped. ``exclude`` (the output folder) is
    skipped when it lies inside an input folder.
    """
    found: list[tuple[Path, Path]] = []
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            walker = path.rglob("*") if recursive else path.iterdir()
            files = sorted(f for f in walker if _is_candidate(f))
            if exclude is not None and path.resolve() in exclude.resolve().parents:
                files = [f for f in files if exclude.resolve() not in f.resolve().parents]
            if not files:
                raise UsageError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found" + ("" if recursive else " (use -r for sub-folders)"))
            found.extend((f, f.relative_to(path)) for f in files)
        elif not path.exists() and glob.has_magic(spec):
            matches = sorted(Path(m) for m in glob.glob(spec, recursive=True) if _is_candidate(Path(m)))
            if not matches:
                raise UsageError(f"'{spec}': no image matches this pattern")
            found.extend((m, Path(m.name)) for m in matches)
        else:
            found.append((path, Path(path.name)))
    unique, seen = [], set()
    for source, rel in found:
        key = source.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((source, rel))
    return unique


def _normalise_ext(ext: str | None, fallback: str) -> str:
    if not ext:
        return fallback
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext.lower() not in IMAGE_EXTENSIONS:
        raise UsageError(f"unsupported output extension '{ext}' (choose from {', '.join(IMAGE_EXTENSIONS)})")
    return ext


def plan_jobs(inputs: list[tuple[Path, Path]], options: OutputOptions) -> tuple[list[Job], list[FileResult]]:
    """Decide every output path; inputs whose output would be unsafe become failed results."""
    out = options.output
    single_file = (
        out is not None
        and len(inputs) == 1
        and inputs[0][1] == Path(inputs[0][0].name)
        and out.suffix.lower() in IMAGE_EXTENSIONS
        and not out.is_dir()
    )
    input_keys = {source.resolve() for source, _ in inputs}
    jobs, failures, claimed = [], [], set()
    for source, rel in inputs:
        ext = _normalise_ext(options.ext, source.suffix)
        if single_file:
            target = out
        else:
            suffix = options.suffix if options.suffix is not None else ("" if out is not None else DEFAULT_SUFFIX)
            folder = out / rel.parent if out is not None else source.parent
            target = folder / f"{source.stem}{suffix}{ext}"
        job = Job(source, target, tuple((name, extra_path(target, name)) for name in options.extras))
        reason = None
        for path in job.outputs:
            key = path.resolve()
            if key in input_keys:
                reason = f"output {path} would overwrite an input; choose another -o, --suffix or --ext"
            elif key in claimed:
                reason = f"output {path} is already the output of another input"
            if reason:
                break
        if reason:
            failures.append(FileResult(str(source), str(target), "failed", reason))
            continue
        claimed.update(path.resolve() for path in job.outputs)
        jobs.append(job)
    return jobs, failures


def run_job(job: Job, derain: Callable, options: OutputOptions) -> FileResult:
    """Read, derain and write one file; every failure becomes a failed FileResult."""
    start = time.perf_counter()
    result = FileResult(str(job.source), str(job.target), "ok")
    try:
        if job.target.exists():
            if options.skip_existing:
                result.status = "skipped"
                return result
        for path in job.outputs:
            if path.exists() and not options.overwrite:
                raise UsageError(f"{path}: output exists (use --overwrite or --skip-existing)")
        picture = read_image(job.source, options.max_pixels)
        result.height, result.width = picture.pixels.shape[:2]
        outputs = derain(picture.rgb)
        write_image(picture.with_rgb(outputs["image"]), job.target, options.quality)
        for name, path in job.extras:  # one-channel maps (a rain mask) as grayscale PNG
            write_image(Picture(np.ascontiguousarray(outputs[name])), path)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - one bad file must never abort the batch
        message = str(err)
        if str(job.source) not in message and str(job.target) not in message:
            message = f"{job.source}: {type(err).__name__}: {message}"
        result.status, result.error = "failed", message
    result.seconds = round(time.perf_counter() - start, 4)
    return result
