"""The `derain` command: sub-commands composed from one module each.

Nothing here imports torch: `derain --help` and `derain --version` stay instant.
"""

from __future__ import annotations

from typing import Annotated

import typer

from derain_cli import __version__
from derain_cli.cli import benchmark, export, finetune_real, models, remove, synth, train
from derain_cli.cli.help import ReadableGroup

app = typer.Typer(
    name="derain",
    cls=ReadableGroup,  # TEXT, PATH, INPUTS... rather than <str>, <bool>, {inputs}...
    help="Remove rain streaks from photographs with pretrained deep networks.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 all done, 1 some inputs failed, 2 usage error, "
    "3 weights unavailable or failed verification, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).",
)
app.command("remove", no_args_is_help=True)(remove.remove)
app.command("train", no_args_is_help=True)(train.train)
app.command("finetune-real", no_args_is_help=True)(finetune_real.finetune_real)
app.command("synth", no_args_is_help=True)(synth.synth)
app.command("benchmark", no_args_is_help=True)(benchmark.benchmark)
app.command("export", no_args_is_help=True)(export.export)
app.add_typer(models.app, name="models")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"derain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Remove rain streaks from photographs with pretrained deep networks."""


def main() -> None:
    app()
