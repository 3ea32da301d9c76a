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

from llmbus.errors import LlmbusError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Carry one LLM feature from prompt to production: run, evaluate, distill, serve.")
# Piped output keeps whole table rows instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else int(os.environ.get("COLUMNS", "200")))
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DB_OPTION = typer.Option(None, "--db", help="SQLite file or database URL (default $LLMBUS_DB or ./llmbus.db)")
JSON_OPTION = typer.Option(False, "--json", help="Machine-readable output")


def friendly_errors(func: F) -> F:
    """Turn LlmbusError into one red line on stderr and exit code 2 (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except LlmbusError as exc:
            from llmbus.run import RunInterrupted

            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(130 if isinstance(exc, RunInterrupted) else 2) from None

    return wrapper  # type: ignore[return-value]


def print_json(data: Any) -> None:
    """--json output: one plain JSON document on stdout (never colored, even where a terminal is forced)."""
    sys.stdout.write(json.dumps(data, default=str, ensure_ascii=False) + "\n")


def fmt(value: float | None, spec: str = ".3f") -> str:
    """A number for a table cell ('–' for missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec)
