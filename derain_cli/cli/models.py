"""`derain models`: list, download and verify checkpoints."""

from __future__ import annotations

from typing import Annotated

import typer

from rich.markup import escape

from derain_cli.cli.common import error_line, exit_codes, say, stdout_console
from derain_cli.errors import EXIT_WEIGHTS, WeightsError

app = typer.Typer(help="List, download, verify and remove checkpoints (weights.toml and your own).", no_args_is_help=True)


def _entries(names: list[str] | None):
    from derain_cli.weights.manifest import split_name
    from derain_cli.weights.resolve import available_entries, undeclared

    entries = available_entries()
    if not names:
        return list(entries.values())
    chosen = []
    for name in names:
        key = "{}.{}".format(*split_name(name))
        if key not in entries:
            raise undeclared(key, f"no checkpoint '{key}' (known: {', '.join(sorted(entries)) or 'none yet'})")
        chosen.append(entries[key])
    return chosen


def _status(entry) -> str:
    from derain_cli.weights.resolve import local_path

    if entry.path is not None:
        return "here" if local_path(entry).is_file() else "missing (models remove forgets it)"
    if entry.file:
        return "bundled" if local_path(entry).is_file() else "missing (reinstall)"
    return "cached" if local_path(entry).is_file() else "not downloaded"


@app.command("list")
def list_models() -> None:
    """Methods, their checkpoints (method.tag, yours and the authors' included), where each lives and
    whether it is here. The table goes to stdout."""
    from rich.table import Table

    from derain_cli.methods import list_methods
    from derain_cli.weights.manifest import AUXILIARY, licence_notice

    with exit_codes():
        entries = _entries(None)
        table = Table(title="derain checkpoints")
        for column in ("name", "default", "source", "status", "licence"):
            table.add_column(column)
        for spec in list_methods():
            mine = [e for e in entries if e.method == spec.name]
            if not [e for e in mine if not e.by_authors]:
                table.add_row(f"{spec.name}.{spec.default_tag}", "yes", "-", "no checkpoint shipped yet", "-")
            for e in mine:
                default = "authors'" if e.by_authors else "yes" if e.tag == spec.default_tag else ""
                table.add_row(e.name, default, e.origin, _status(e), e.license)
        for e in entries:  # training aids (VGG19 for LIR's semantic loss)
            if e.method in AUXILIARY:
                table.add_row(e.name, "training", e.origin, _status(e), e.license)
        out = stdout_console()
        out.print(table)
        unlicensed = [e for e in entries if e.unlicensed]
        if unlicensed:
            out.print(escape(licence_notice(unlicensed)), soft_wrap=True)


@app.command()
def download(
    names: Annotated[list[str] | None, typer.Argument(help="Checkpoints (method or method.tag); default: all.")] = None,
) -> None:
    """Fetch checkpoints into the cache (sha256-verified) for offline use later."""
    from derain_cli.weights.resolve import locate

    with exit_codes():
        for entry in _entries(names):
            resolved = locate(entry, offline=False)
            say(f"{entry.name}: {resolved.source} at {resolved.path}")


@app.command()
def verify(
    names: Annotated[list[str] | None, typer.Argument(help="Checkpoints (method or method.tag); default: all.")] = None,
) -> None:
    """Check the sha256 of every local checkpoint file; exit 3 on any mismatch."""
    from derain_cli.weights.resolve import local_path
    from derain_cli.weights.resolve import verify as check

    with exit_codes():
        bad = 0
        for entry in _entries(names):
            path = local_path(entry)
            if not path.is_file():
                say(f"{entry.name}: {_status(entry)}")
                continue
            try:
                check(entry, path)
                say(f"{entry.name}: ok ({path})")
            except WeightsError as err:
                bad += 1
                error_line(str(err))
        if bad:
            raise typer.Exit(EXIT_WEIGHTS)


@app.command("remove")
def remove_model(
    names: Annotated[list[str], typer.Argument(help="Your models to delete (METHOD.TAG, as finetune-real named them).")],
) -> None:
    """Delete models you made and their finetune-real run folders; shipped checkpoints cannot be removed."""
    from derain_cli.weights.user import remove

    with exit_codes():
        for name in names:
            say(f"removed {name} ({', '.join(map(str, remove(name)))})")
