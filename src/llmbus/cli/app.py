"""What every command module shares: the typer app, consoles, one-line errors, number formatting, --json."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from llmbus.errors import LlmbusError, RunInterrupted

# The bus: `llmbus --help` shows one panel per stop, in the order a feature meets them, each command in the
# order it is used there. Every command belongs to a panel (tests/test_cli_help.py checks).
STOPS: dict[str, tuple[str, ...]] = {
    "Stop 1 · Do you need an LLM?": ("advise",),
    "Stop 2 · Prompt-driven development": ("run", "runs", "show", "compare", "optimize", "ui"),
    "Stop 3 · Quality": ("eval", "judge", "label"),
    "Stop 4 · Architecture": ("flow", "review"),
    "Stop 5 · Saving": ("distill", "report"),
    "Serving": ("serve", "build-llama"),
    "Production loop": ("monitor", "quality", "accept"),
}


class BusGroup(TyperGroup):
    """The root command group: commands listed stop by stop (STOPS), whichever module registered them first."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        panels = {name: title for title, names in STOPS.items() for name in names}
        for name, command in self.commands.items():
            if name in panels and isinstance(command, TyperCommand | TyperGroup):
                command.rich_help_panel = panels[name]

    def list_commands(self, ctx: Any) -> list[str]:  # typer's vendored click Context
        """Command names in the bus's order; any command missing from STOPS comes last."""
        order = [name for names in STOPS.values() for name in names]
        return sorted(self.commands, key=lambda name: order.index(name) if name in order else len(order))


app = typer.Typer(cls=BusGroup, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Carry one LLM feature from prompt to production: run, evaluate, distill, serve.")
# Piped output keeps whole table rows instead of rich's 80-column default. No emoji codes: user text such as
# the model name `openai:x:` must print as written, not as an emoji.
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200")), emoji=False)
err = Console(stderr=True, emoji=False)
F = TypeVar("F", bound=Callable[..., Any])

DB_OPTION = typer.Option(None, "--db", help="SQLite file or database URL (default $LLMBUS_DB or ./llmbus.db)")
JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output")


def _print_version(value: bool) -> None:
    if value:
        from llmbus import __version__

        out.print(f"llmbus {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Show the version and exit")) -> None:
    pass


def friendly_errors(func: F) -> F:
    """Turn LlmbusError into one red line on stderr and exit code 2 (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LlmbusError as exc:
            line = Text.assemble(("error:", "bold red"), " ", str(exc))  # a Text is never read as markup
            err.print(line, highlight=False, soft_wrap=True, markup=False, emoji=False)
            raise typer.Exit(130 if isinstance(exc, RunInterrupted) else 2) from None

    return wrapper  # type: ignore[return-value]


def warn(text: str) -> None:
    """One warning line on stderr, printed as is (no markup, no emoji codes)."""
    err.print(f"warning: {text}", style="yellow", markup=False, highlight=False, emoji=False, soft_wrap=True)


def plain(value: Any) -> str:
    """User or model text for a rich string or table cell: `[...]` shown as written, never read as markup."""
    return escape(str(value))


def print_json(data: Any) -> None:
    """--json output: one plain JSON document on stdout (never colored, even where a terminal is forced)."""
    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table cell ('–' for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)


def usd(value: float | None, known: bool = True, spec: str = ".4f") -> str:
    """A cost for a table cell: `?` when the model has no price, '–' when there is nothing to price."""
    return "?" if not known else fmt(value, spec)


def print_price_sources(models: list[tuple[str, str]]) -> None:
    """One line per model: where its price came from (the table and its version, or the config line)."""
    for model, source in dict.fromkeys(models):
        if source:
            out.print(f"  price of {plain(model)}: {plain(source)}", highlight=False)
