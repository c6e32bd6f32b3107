"""Turning command-line inputs into (input, output) jobs and running them one by one.

Inputs are files, folders (``recursive`` mirrors sub-folders) and glob patterns. Outputs
never overwrite an input; an existing output is an error unless ``overwrite`` or
``skip_existing``. A failing file becomes a failed result and the batch carries on.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from derain_cli.errors import DerainError, UsageError
from derain_cli.media.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, Picture, read_image, remove_stale_temporaries, write_image
from derain_cli.media.video import VIDEO_EXTENSIONS, VideoOptions, derain_video, is_video

MEDIA_EXTENSIONS = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS

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
    reason: str | None = None  # why it was skipped: exists, unsupported format, broken link, ...
    frames: int | None = None  # videos: frames derained

    def as_dict(self) -> dict:
        return asdict(self)


def skipped(source: Path, reason: str, output: Path | None = None) -> FileResult:
    return FileResult(str(source), None if output is None else str(output), "skipped", reason=reason)


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    extras: tuple[tuple[str, Path], ...] = ()

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file the job writes: the picture, then its extra maps."""
        return (self.target, *(path for _, path in self.extras))


@dataclass
class Inputs:
    """What the command line named: files to process, and folder or pattern entries that are not."""

    files: list[tuple[Path, Path]]  # (file, path relative to its root folder)
    skipped: list[FileResult]


def why_not_a_picture(path: Path, recursive: bool = False) -> str | None:
    """Why an entry found in a folder or by a pattern is not derained; None for a picture."""
    if path.name.startswith("."):
        return "hidden"
    if path.is_symlink() and not path.exists():
        return "broken link"
    if path.is_dir():
        if recursive and path.is_symlink():
            return "linked folder (not followed)"
        return "folder" if recursive else "folder (use -r)"
    if not path.is_file():
        return "not a file"
    if path.suffix.lower() not in MEDIA_EXTENSIONS:
        return "unsupported format"
    return None


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry below ``folder``; hidden folders are yielded but not entered."""
    for root, folders, files in os.walk(folder):
        for name in folders:
            if name.startswith(".") or Path(root, name).is_symlink():
                yield Path(root, name)  # reported (hidden; a linked folder is not followed)
        folders[:] = sorted(n for n in folders if not n.startswith(".") and not Path(root, n).is_symlink())
        yield from (Path(root, name) for name in files)


def collect_inputs(
    specs: Iterable[str], recursive: bool = False, exclude: Path | None = None, suffix: str | None = None
) -> Inputs:
    """Expand files, folders and glob patterns, in order, without duplicates.

    A path named on the command line is always kept, even when it does not exist (its job
    then fails with a clear message), so that a typo is reported rather than dropped.
    Entries of folders and patterns that are not pictures become skipped results with the
    reason, as do derain's own outputs found beside their inputs (``own_outputs``: the
    ``_derained`` ones, and those of ``suffix``, the command's ``--suffix``). ``exclude``
    (the output folder) is left out when it lies inside an input folder.
    """
    found: list[tuple[Path, Path]] = []
    skips: list[FileResult] = []

    def sort_out(entries: Iterable[Path], relative_to: Path | None) -> list[Path]:
        pictures = []
        for entry in sorted(entries):
            reason = why_not_a_picture(entry, recursive)
            if reason is None:
                pictures.append(entry)
            elif not (recursive and reason == "folder"):  # -r walks into folders: nothing skipped
                skips.append(skipped(entry, reason))
        outputs = own_outputs(pictures, (DEFAULT_SUFFIX, suffix))
        skips.extend(skipped(entry, OWN_OUTPUT) for entry in pictures if entry in outputs)
        pictures = [entry for entry in pictures if entry not in outputs]
        found.extend((f, f.relative_to(relative_to) if relative_to else Path(f.name)) for f in pictures)
        return pictures

    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            entries = _walk(path) if recursive else path.iterdir()
            if exclude is not None and path.resolve() in exclude.resolve().parents:
                out = exclude.resolve()
                entries = [e for e in entries if e.resolve() != out and out not in e.resolve().parents]
            if not sort_out(entries, path):
                raise UsageError(f"{path}: no images or videos ({', '.join(MEDIA_EXTENSIONS)}) found" + ("" if recursive else " (use -r for sub-folders)"))
        elif not path.exists() and not path.is_symlink() and glob.has_magic(spec):
            if not sort_out((Path(m) for m in glob.glob(spec, recursive=True)), None):
                raise UsageError(f"'{spec}': no image matches this pattern")
        else:
            found.append((path, Path(path.name)))
    unique, seen = [], set()
    for source, rel in found:
        key = source.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((source, rel))
    return Inputs(unique, skips)


OWN_OUTPUT = "derain output"  # the skip reason of an earlier run's output found beside its input


def own_outputs(pictures: list[Path], suffixes: Iterable[str | None] = (DEFAULT_SUFFIX,)) -> set[Path]:
    """The entries that are derain's outputs of another entry in the same folder.

    ``a_derained.EXT`` (any picture or video extension: ``--ext`` may have changed it) and its
    mask ``a_derained_mask.png`` are outputs when ``a.*`` is there too, for each suffix in
    ``suffixes`` (empty ones ignored); a file that merely ends in ``_derained`` with no source
    beside it is not, and is derained like any other picture.
    """
    stems: dict[tuple[Path, str], list[Path]] = {}
    for entry in pictures:
        stems.setdefault((entry.parent, entry.stem), []).append(entry)
    outputs = set()
    for source in pictures:
        for suffix in filter(None, set(suffixes)):
            outputs.update(stems.get((source.parent, source.stem + suffix), ()))
            masks = stems.get((source.parent, f"{source.stem}{suffix}_mask"), ())
            outputs.update(mask for mask in masks if mask.suffix.lower() == ".png")
    return outputs


def _output_ext(ext: str | None, source: Path) -> str:
    """The output's extension: ``--ext`` for pictures (a video keeps its own container
    unless ``--ext`` names a video one), else the input's."""
    if not ext:
        return source.suffix
    ext = ext if ext.startswith(".") else f".{ext}"
    if ext.lower() not in MEDIA_EXTENSIONS:
        raise UsageError(f"unsupported output extension '{ext}' (choose from {', '.join(MEDIA_EXTENSIONS)})")
    if is_video(source) != (ext.lower() in VIDEO_EXTENSIONS):
        return source.suffix
    return ext


def plan_jobs(inputs: list[tuple[Path, Path]], options: OutputOptions) -> tuple[list[Job], list[FileResult]]:
    """Decide every output path; inputs whose output would be unsafe become failed results."""
    out = options.output
    single_file = (
        out is not None
        and len(inputs) == 1
        and inputs[0][1] == Path(inputs[0][0].name)
        and out.suffix.lower() in MEDIA_EXTENSIONS
        and not out.is_dir()
    )
    input_keys = {source.resolve() for source, _ in inputs}
    jobs, failures, claimed, folders = [], [], set(), {}
    for source, rel in inputs:
        ext = _output_ext(options.ext, source)
        if single_file:
            target = out
        else:
            suffix = options.suffix if options.suffix is not None else ("" if out is not None else DEFAULT_SUFFIX)
            folder = out / rel.parent if out is not None else source.parent
            target = folder / f"{source.stem}{suffix}{ext}"
        job = Job(source, target, tuple((name, extra_path(target, name)) for name in options.extras))
        reason = None
        if is_video(source) != is_video(target):
            reason = f"output {target}: a {'video' if is_video(source) else 'picture'} must be written as one"
        elif is_video(source) and job.extras:
            reason = "--save-mask is for pictures; videos get no mask"
        for path in () if reason else job.outputs:
            key = path.resolve()
            if key in input_keys:
                reason = f"output {path} would overwrite an input; choose another -o, --suffix or --ext"
            elif key in claimed:
                reason = f"output {path} is already the output of another input"
            if reason:
                break
        if not reason and not (options.skip_existing and target.exists()):
            reason = _unwritable(target, folders)
        if reason:
            failures.append(FileResult(str(source), str(target), "failed", reason))
            continue
        claimed.update(path.resolve() for path in job.outputs)
        jobs.append(job)
    return jobs, failures


def _unwritable(target: Path, folders: dict[Path, Path | None]) -> str | None:
    """Why ``target`` cannot be written (its folder, or the existing one it would be made in,
    refuses writes), checked once per folder before any picture runs; None when it can."""
    folder = target.parent
    if folder not in folders:
        existing = next((f for f in (folder, *folder.parents) if f.exists()), folder)
        writable = existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)
        folders[folder] = None if writable else existing
    blocked = folders[folder]
    return None if blocked is None else f"output {target}: cannot write in {blocked} (not a writable folder)"


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` (0-based, as Slurm arrays and Kubernetes indexed Jobs count).

    An input belongs to the shard its path hashes to, so every worker of an array job
    agrees without talking to the others, whatever order it lists the folder in.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise UsageError(f"--shard takes K/N (worker K of N, 0 <= K < N), got '{text}'") from None
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard {text}: K must be in 0..N-1 (0-based, like $SLURM_ARRAY_TASK_ID from --array=0-{max(count, 1) - 1})")
        return cls(index, count)

    def owns(self, source: str | Path) -> bool:
        if self.count == 1:
            return True
        digest = hashlib.blake2b(Path(source).as_posix().encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


def _failed(job: Job, err: Exception) -> str:
    message = str(err)
    if str(job.source) not in message and not any(str(path) in message for path in job.outputs):
        kind = "" if isinstance(err, DerainError) else f"{type(err).__name__}: "  # derain's own say what they are
        message = f"{job.source}: {kind}{message}"
    return message


def _existing_output(job: Job, options: OutputOptions) -> FileResult | None:
    """A skipped result when the output exists and ``skip_existing``; raises UsageError when an
    output exists and may not be replaced; None when the job should run."""
    if job.target.exists() and options.skip_existing:
        return skipped(job.source, "exists", job.target)
    for path in job.outputs:
        if path.exists() and not options.overwrite:
            raise UsageError(f"{path}: output exists (use --overwrite or --skip-existing)")
    return None


def _read(job: Job, options: OutputOptions) -> Picture | FileResult:
    """Stage 1: decide whether the job runs, and decode its input."""
    return _existing_output(job, options) or read_image(job.source, options.max_pixels)


def _write(job: Job, picture: Picture, outputs: dict[str, np.ndarray], options: OutputOptions) -> None:
    """Stage 3: encode the results atomically (after clearing an interrupted run's leftovers)."""
    for path in job.outputs:
        remove_stale_temporaries(path)
    write_image(picture.with_rgb(outputs["image"]), job.target, options.quality)
    for name, path in job.extras:  # one-channel maps (a rain mask) as grayscale PNG
        write_image(Picture(np.ascontiguousarray(outputs[name])), path)


def run_job(job: Job, derain: Callable, options: OutputOptions) -> FileResult:
    """Read, derain and write one file; every failure becomes a failed FileResult."""
    return next(run_jobs([job], derain, options, workers=0))


def run_jobs(jobs: Iterable[Job], derain: Callable, options: OutputOptions, workers: int = 2) -> Iterator[FileResult]:
    """Run jobs, yielding one result per job in order; a bad file never stops the others.

    With ``workers`` > 0, decoding of the next files and encoding of finished ones run in
    that many threads each while the network works on the current picture (Pillow, OpenCV
    and torch release the GIL). At most ``workers`` decoded pictures wait ahead and
    ``workers`` finished ones wait to be written, so memory stays bounded. ``derain`` is
    always called from the calling thread, one picture at a time.
    """
    if workers <= 0:
        for job in jobs:
            yield _run_inline(job, derain, options)
        return
    readers = ThreadPoolExecutor(workers, thread_name_prefix="derain-read")
    writers = ThreadPoolExecutor(workers, thread_name_prefix="derain-write")
    reading: deque = deque()
    writing: deque = deque()
    pending = iter(jobs)
    try:
        while True:
            while len(reading) < workers and (job := next(pending, None)) is not None:
                reading.append((job, time.perf_counter(), readers.submit(_read, job, options)))
            if not reading:
                break
            job, start, future = reading.popleft()
            result = FileResult(str(job.source), str(job.target), "ok")
            try:
                picture = future.result()
                if isinstance(picture, FileResult):
                    writing.append((job, picture, start, None))
                else:
                    result.height, result.width = picture.pixels.shape[:2]
                    outputs = derain(picture.rgb)
                    writing.append((job, result, start, writers.submit(_write, job, picture, outputs, options)))
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001 - one bad file must never abort the batch
                result.status, result.error = "failed", _failed(job, err)
                writing.append((job, result, start, None))
            while writing and (len(writing) > workers or writing[0][3] is None or writing[0][3].done()):
                yield _settle(*writing.popleft())
        while writing:
            yield _settle(*writing.popleft())
    finally:  # Ctrl-C: drop what has not started; writes under way finish (they are atomic)
        readers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)


def _settle(job: Job, result: FileResult, start: float, write: Future | None) -> FileResult:
    """The job's final result, once its write (if any) has finished."""
    if write is not None:
        try:
            write.result()
        except Exception as err:  # noqa: BLE001 - a failed write fails this file only
            result.status, result.error = "failed", _failed(job, err)
    result.seconds = round(time.perf_counter() - start, 4)
    return result


def _run_inline(job: Job, derain: Callable, options: OutputOptions) -> FileResult:
    start = time.perf_counter()
    result = FileResult(str(job.source), str(job.target), "ok")
    try:
        picture = _read(job, options)
        if isinstance(picture, FileResult):
            return picture
        result.height, result.width = picture.pixels.shape[:2]
        _write(job, picture, derain(picture.rgb), options)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as err:  # noqa: BLE001 - one bad file must never abort the batch
        result.status, result.error = "failed", _failed(job, err)
    result.seconds = round(time.perf_counter() - start, 4)
    return result


def run_videos(
    jobs: Iterable[Job],
    derain_frames: Callable[[list[np.ndarray]], list[dict[str, np.ndarray]]],
    options: OutputOptions,
    video: VideoOptions = VideoOptions(),
    on_frames: Callable[[Job, int], None] | None = None,
) -> Iterator[FileResult]:
    """Derain video files one after the other; ``derain_frames`` is the engine's run_batch.

    ``on_frames(job, n)`` is told as frames are done. A bad video fails alone.
    """
    for job in jobs:
        start = time.perf_counter()
        result = FileResult(str(job.source), str(job.target), "ok")
        try:
            existing = _existing_output(job, options)
            if existing is not None:
                yield existing
                continue
            remove_stale_temporaries(job.target)
            summary = derain_video(
                job.source, job.target, lambda frames: [out["image"] for out in derain_frames(frames)], video,
                (lambda n, job=job: on_frames(job, n)) if on_frames else None,
            )
            result.width, result.height, result.frames = summary.width, summary.height, summary.frames
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:  # noqa: BLE001 - one bad file must never abort the batch
            result.status, result.error = "failed", _failed(job, err)
        result.seconds = round(time.perf_counter() - start, 4)
        yield result
