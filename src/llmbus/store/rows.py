"""What the store's reads return to library users: frozen, typed rows — the read-side twins of `CallRecord`.

`Run` is a row of `runs`, `Call` a row of `calls` with its JSON columns decoded. Columns a later migration adds
and these classes do not name yet land in `other`, so a newer database never breaks an older reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any


def _as_row(row: Run | Call) -> dict[str, Any]:
    """A typed row as the store holds it: every named column, then the columns in `other`."""
    return {**{f.name: getattr(row, f.name) for f in fields(row) if f.name != "other"}, **row.other}


def _split(cls: type, row: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the row's values for the class's fields, the rest)."""
    names = {f.name for f in fields(cls)} - {"other"}
    return {k: v for k, v in row.items() if k in names}, {k: v for k, v in row.items() if k not in names}


@dataclass(frozen=True)
class Run:
    """One run: a task answered by a model (or a judge run, a replay, a gateway's traffic)."""

    id: str
    task: str
    model: str
    spec_version: str
    metric: str
    status: str  # running | done | interrupted
    n_planned: int
    created_at: datetime
    concurrency: int = 0
    finished_at: datetime | None = None
    wall_s: float = 0.0
    task_path: str | None = None
    spec_json: str = "{}"
    item_offset: int | None = 0
    sampling: str | None = None
    tag: str | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Run:
        """A `runs` row as a Run."""
        known, rest = _split(cls, row)
        return cls(**known, other=rest)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain mapping of its columns (what `llmbus show --json` prints)."""
        return _as_row(self)

    @property
    def spec(self) -> dict[str, Any]:
        """The task spec the run answered, as stored with it (a plain mapping)."""
        return dict(json.loads(self.spec_json or "{}"))


@dataclass(frozen=True)
class Call:
    """One answered (or failed) item of a run, as the call log keeps it."""

    id: int
    run_id: str
    task: str
    spec_version: str
    item_id: str
    model: str
    prompt: str
    started_at: datetime
    finished_at: datetime
    raw_output: str | None = None
    parsed: Any = None
    confidence: float | None = None
    label_probs: dict[str, float] | None = None
    expected: Any = None
    score: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    cpu_s: float | None = None
    cache_hit: bool = False
    error_kind: str | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None  # chat turns as sent (None: the prompt was one user turn)
    tool_calls: list[dict[str, Any]] | None = None
    reasoning: str | None = None
    other: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Call:
        """A decoded `calls` row (Store.iter_calls) as a Call."""
        known, rest = _split(cls, row)
        return cls(**known, other=rest)

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain mapping of its columns, JSON columns decoded (what `llmbus show --json` prints)."""
        return _as_row(self)

    @property
    def ok(self) -> bool:
        """Whether the call answered within its contract."""
        return self.error_kind is None
