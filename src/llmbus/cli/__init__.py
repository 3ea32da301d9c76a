"""The `llmbus` command: parse, call one library function, print (rich for people, --json for machines).

Each stop's commands live in their own module and register on the shared typer app when imported here.
"""

from llmbus.cli import (
    experiments,  # noqa: F401  (registers compare, ui)
    flow,  # noqa: F401  (registers flow run/show/resume, review serve)
    label,  # noqa: F401  (registers label)
    monitor,  # noqa: F401  (registers monitor, quality)
    optimize,  # noqa: F401  (registers optimize)
    quality,  # noqa: F401  (registers eval, judge)
    saving,  # noqa: F401  (registers distill, serve, report)
    tasks,  # noqa: F401  (registers run, runs, show, advise)
)
from llmbus.cli.app import app
from llmbus.telemetry import configure_logging


def main() -> None:
    """Console-script entry point."""
    configure_logging()  # LLMBUS_LOG_LEVEL=info: llmbus's logging records on stderr
    app()


__all__ = ["app", "main"]
