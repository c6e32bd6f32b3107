"""Readable help: click-style metavars (TEXT, PATH, INPUTS...) instead of typer's type
placeholders (``<bool>`` beside a flag, ``<list[Path]>``, ``{inputs}...``).

The root group applies them to every command below it, so a sub-command needs nothing.
"""

from __future__ import annotations

import click
from typer.core import TyperArgument, TyperGroup, TyperOption

_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH", "bool": ""}


class _Argument(TyperArgument):
    """An argument shown by its metavar alone (INPUTS...), in the usage line as in the table."""

    def _usage_display_name(self) -> str:
        return self.metavar if self.required else f"[{self.metavar}]"

    def display_type_rich(self, ctx: click.Context) -> str | None:
        return None


def _metavar(option: TyperOption) -> str:
    """TEXT, INTEGER, PATH...; nothing for a flag (typer shows <str>, <int range>, <bool>)."""
    if option.is_flag:
        return ""
    label = option.display_type(None).strip("<>").removeprefix("list[").removesuffix("]").removesuffix(" range")
    return _NAMES.get(label, label.upper())


def _readable(command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, TyperArgument) and param.metavar is None:
            param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
            param.__class__ = _Argument
        elif isinstance(param, TyperOption) and param.metavar is None and not param.type_descriptor.is_choice:
            param.metavar = _metavar(param)
    make_help_option = command.get_help_option

    def help_option(ctx: click.Context):  # --help is made on demand: no <bool> beside it either
        option = make_help_option(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _readable(sub)


class ReadableGroup(TyperGroup):
    """The root group: its commands, and theirs, get readable metavars."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _readable(self)
