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
) -> None:
    """Synthesize rain on clean images, writing pairs in the rain/ + norain/ layout (PNG)."""
    with exit_codes():
        raise typer.Exit(_synth(clean, out, style, seed, copies, recursive))


def _synth(clean, out, style, seed, copies, recursive) -> int:
    import zlib

    from derain_cli.batch import collect_inputs
    from derain_cli.errors import UsageError
    from derain_cli.io import Picture, read_image, write_image
    from derain_cli.synth import STYLES, add_rain

    if style not in STYLES:
        raise UsageError(f"style must be one of {', '.join(STYLES)}, got '{style}'")
    sources = collect_inputs(clean, recursive).files
    failed = 0
    for source, rel in sources:
        try:
            rgb = read_image(source).rgb8
            for k in range(copies):
                name = rel.with_suffix(".png") if copies == 1 else rel.with_name(f"{rel.stem}_{k}.png")
                key = zlib.crc32(rel.as_posix().encode())  # order-independent: one file can be redone alone
                rainy = add_rain(rgb, STYLES[style], seed, key, k)
                write_image(Picture(pixels=rgb), out / "norain" / name)
                write_image(Picture(pixels=rainy), out / "rain" / name)
        except Exception as err:  # noqa: BLE001 - report and carry on
            failed += 1
            error_line(str(err))
    say(f"{len(sources) - failed} clean image(s) -> {(len(sources) - failed) * copies} {style} pair(s) in {out}")
    return EXIT_SOME_FAILED if failed else EXIT_OK
