"""Progress of long library work (answering, judging, embedding, training, replaying) on stderr.

Library functions that take a while accept `progress: StageCallback | None` and call it as
`progress("embedding pool", done, total)` (total None when unknown); the CLI passes `stage_progress(...)`'s
callback, and `--json` turns progress off. On a terminal each stage is one live rich line. Anywhere else (a CI
log, a pipe, nohup) rich would print nothing until the end, so plain lines are written instead: one per stage
every $LLMBUS_PROGRESS_EVERY seconds (default 10), and the last state when the work ends. Nothing is shown before
the first update (a terminal) or the first interval (plain lines), so an error raised before any work stays one
plain line.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from llmbus.cli.app import err, fmt, plain
from llmbus.embed import StageCallback  # the library's one callback type

DEFAULT_EVERY_S = 10.0


def progress_every() -> float:
    """Seconds between plain progress lines: $LLMBUS_PROGRESS_EVERY, default 10."""
    try:
        return max(0.0, float(os.environ.get("LLMBUS_PROGRESS_EVERY", DEFAULT_EVERY_S)))
    except ValueError:
        return DEFAULT_EVERY_S


class PlainLines:
    """Progress as plain stderr lines: the state of the stage updated last, at most once per `every` seconds,
    and at `finish` the final state (when any line was written before, or `always`)."""

    def __init__(self, every: float, console: Console = err):
        self.every, self.console = every, console
        self.started = time.monotonic()
        self.next_at = self.started + every
        self.latest: str | None = None  # the newest state, of whichever stage was updated last
        self.written: str | None = None  # the text of the last line

    def update(self, stage: str, text: str) -> None:
        """Record a stage's state (`text` says which stage it is); write it if the interval has passed."""
        self.latest = text
        now = time.monotonic()
        if now >= self.next_at:
            self._write()
            self.next_at = now + self.every

    def finish(self, always: bool = False) -> None:
        """Write the final state unless it is the last line already (only if a line was written, or `always`)."""
        if (self.written is not None or always) and self.latest is not None and self.latest != self.written:
            self._write()

    def _write(self) -> None:
        elapsed = int(time.monotonic() - self.started)
        self.written = self.latest
        self.console.print(f"[{elapsed // 60}:{elapsed % 60:02d}] {self.latest}", markup=False, highlight=False,
                           emoji=False, soft_wrap=True)


def _counts(done: int | None, total: int | None) -> str:
    if done is None:
        return ""
    return f" {done:,}/{total:,}" if total else f" {done:,}"


def _silent(stage: str, done: int | None = None, total: int | None = None) -> None:
    pass


@contextmanager
def stage_progress(disable: bool = False) -> Iterator[StageCallback]:
    """A callback `(stage, done, total)`: one transient rich line per stage on a terminal, plain periodic lines
    elsewhere, nothing with `disable`."""
    if disable:
        yield _silent
        return
    if not err.is_terminal:
        lines = PlainLines(progress_every())

        def line(stage: str, done: int | None = None, total: int | None = None) -> None:
            lines.update(stage, f"{stage}{_counts(done, total)}")

        yield line
        lines.finish()
        return
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=err, transient=True)
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


class RunProgress:
    """`llmbus run`'s progress: answered/total, items/s, errors and the running metric; shown from the first
    update on (a terminal) or as plain periodic lines (anywhere else), so errors raised while loading data or
    starting the model stay one line."""

    def __init__(self, disable: bool):
        self.disable = disable
        self.lines = None if disable or err.is_terminal else PlainLines(progress_every())
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]} items/s  errors {task.fields[errors]}  "
                                            "{task.fields[metric]}"),
                                 TimeElapsedColumn(), console=err, disable=disable or self.lines is not None)
        self.task_id = self.progress.add_task("answering", total=None, rate="–", errors=0, metric="")
        self.started = False

    def __enter__(self) -> tuple[Progress, Callable[[Any], None]]:
        return self.progress, self.update

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def stage(self, text: str) -> None:
        """Show what is being prepared before the first answer (starting the model, embedding the pool)."""
        if self.lines is not None:
            self.lines.update("answering", f"{text}…")
            return
        self._start()
        self.progress.update(self.task_id, description=f"{plain(text)}…")

    def update(self, p: Any) -> None:
        """One more answer: `p` is the engine's Progress."""
        rate = (p.done / p.elapsed_s) if p.elapsed_s else 0.0
        metric = f"{p.metric_name} {fmt(p.metric_value)}"
        if self.lines is not None:
            self.lines.update("answering", f"answering {p.done:,}/{p.total:,} · {rate:.1f} items/s · errors "
                                           f"{p.errors} · {metric}")
            return
        self._start()
        self.progress.update(self.task_id, description="answering", completed=p.done, total=p.total,
                             rate=f"{rate:.1f}", errors=p.errors, metric=metric)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.lines is not None:
            if exc_type is None:
                self.lines.finish(always=True)  # the final count, as the terminal bar leaves it
            return
        if self.started:
            # On an error the bar goes away, so the error stays the one line the user reads.
            self.progress.live.transient = exc_type is not None
            self.progress.stop()
