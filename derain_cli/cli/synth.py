"""`derain synth`: make rainy/clean training pairs from clean pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from derain_cli.cli.common import error_line, exit_codes, say
from derain_cli.errors import EXIT_OK, EXIT_SOME_FAILED


def synth(
    clean: Annotated[list[str], typer.Argument(help="Clean images, folders or globs (a norain/ folder, say).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; gets rain/ and norain/ with equal names.")],
    style: Annotated[str, typer.Option(help="light (one streak layer, Rain100L-like) or heavy (layers, directions, haze; Rain100H-like).")] = "heavy",
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same pairs.")] = 0,
    copies: Annotated[int, typer.Option(min=1, help="Rainy versions per clean image.")] = 1,
    recursive: Annotated[bool, typer.Option("-r", "--recursive", help="Include sub-folders.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Write into OUT even where its rain/ or norain/ pictures exist (inputs are never overwritten).")
    ] = False,
) -> None:
    """Synthesize rain on clean images, writing pairs in the rain/ + norain/ layout (PNG).

    An OUT that already holds pairs (pictures in OUT/rain, or a file this would write) is
    refused, exit 2, unless --overwrite.
    """
    with exit_codes():
        raise typer.Exit(_synth(clean, out, style, seed, copies, recursive, overwrite))


def _synth(clean, out, style, seed, copies, recursive, overwrite) -> int:
    import zlib

    from derain_cli.media.batch import collect_inputs
    from derain_cli.errors import UsageError
    from derain_cli.media.images import Picture, read_image, write_image
    from derain_cli.data.synth import STYLES, add_rain

    if style not in STYLES:
        raise UsageError(f"style must be one of {', '.join(STYLES)}, got '{style}'")
    sources = collect_inputs(clean, recursive).files
    names = {source: _pair_names(rel, copies) for source, rel in sources}
    _refuse_unsafe(out, names, overwrite)
    failed = 0
    for source, rel in sources:
        try:
            rgb = read_image(source).rgb8
            key = zlib.crc32(rel.as_posix().encode())  # order-independent: one file can be redone alone
            for k, name in enumerate(names[source]):
                if not _is_input(out / "norain" / name, source):  # a clean picture already in place stays as it is
                    write_image(Picture(pixels=rgb), out / "norain" / name)
                write_image(Picture(pixels=add_rain(rgb, STYLES[style], seed, key, k)), out / "rain" / name)
        except Exception as err:  # noqa: BLE001 - report and carry on
            failed += 1
            error_line(str(err))
    say(f"{len(sources) - failed} clean image(s) -> {(len(sources) - failed) * copies} {style} pair(s) in {out}")
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _pair_names(rel: Path, copies: int) -> list[Path]:
    """The names (relative to rain/ and norain/) of one clean picture's pairs."""
    return [rel.with_suffix(".png")] if copies == 1 else [rel.with_name(f"{rel.stem}_{k}.png") for k in range(copies)]


def _is_input(path: Path, source: Path) -> bool:
    return path.exists() and path.resolve() == source.resolve()


def _refuse_unsafe(out: Path, names: dict[Path, list[Path]], overwrite: bool) -> None:
    """UsageError, before anything is written, when a pair would replace an input, or (without
    ``overwrite``) when OUT is already a pair folder: pictures in OUT/rain, or a file to be written."""
    from derain_cli.media.batch import MEDIA_EXTENSIONS
    from derain_cli.errors import UsageError

    inputs = {source.resolve() for source in names}
    for source, pair_names in names.items():
        for name in pair_names:
            rainy, clean = out / "rain" / name, out / "norain" / name
            if rainy.resolve() in inputs or (clean.resolve() in inputs and not _is_input(clean, source)):
                raise UsageError(f"{rainy if rainy.resolve() in inputs else clean} would overwrite an input; choose another -o")
    if overwrite:
        return
    existing = [path for source, pair_names in names.items() for name in pair_names
                for path in (out / "rain" / name, out / "norain" / name) if path.exists() and not _is_input(path, source)]
    rain = out / "rain"
    earlier = next((p for p in sorted(rain.rglob("*")) if p.suffix.lower() in MEDIA_EXTENSIONS), None) if rain.is_dir() else None
    if existing or earlier:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise UsageError(f"{out} already holds pairs ({existing[0] if existing else earlier} exists{more}); "
                         "use --overwrite to write into it, or another -o")
