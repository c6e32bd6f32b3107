"""What every sub-command shares: the stderr console and the error -> exit-code mapping."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from derain_cli.errors import EXIT_INTERRUPTED, DerainError

console = Console(stderr=True, highlight=False)


def stdout_console() -> Console:
    """A console for a command's result (tables): stdout, so that pipes and `| grep` get it, and
    wide enough not to wrap when it is not a terminal (a log, a pipe)."""
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=220)


def say(message: str, style: str | None = None) -> None:
    """One line on stderr, never wrapped (scripts grep these)."""
    console.print(escape(message), style=style, soft_wrap=True)


def error_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


@contextmanager
def exit_codes() -> Iterator[None]:
    """Map derain's errors (and Ctrl-C) to the documented exit codes."""
    try:
        yield
    except DerainError as err:
        error_line(str(err))
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt:
        say("interrupted", style="yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None
