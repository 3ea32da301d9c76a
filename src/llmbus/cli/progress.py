"""One progress line for long library work (embedding, training, starting a server), on stderr.

Library functions that take a while accept `progress: StageCallback | None` and call it as
`progress("embedding pool", done, total)` (total None when unknown); the CLI passes `stage_progress(...)`'s
callback, and `--json` turns the line off. Nothing is shown until the first call, so an error raised before
any work stays one plain line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from llmbus.cli.app import err
from llmbus.embed import StageCallback  # the library's one callback type


@contextmanager
def stage_progress(disable: bool = False) -> Iterator[StageCallback]:
    """A callback `(stage, done, total)` drawing one transient rich line per stage on stderr."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, disable=disable, transient=True)
    tasks: dict[str, TaskID] = {}
    started = False

    def update(stage: str, done: int | None = None, total: int | None = None) -> None:
        nonlocal started
        if not started:
            progress.start()
            started = True
        if stage not in tasks:
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done or 0, total=total)

    try:
        yield update
    finally:
        if started:
            progress.stop()
