"""How a run is made, in three small values instead of a long keyword list: which items and how (`RunOptions`),
where the calls run (`ScaleOptions`), and what the caller hears meanwhile (`RunHooks`, each hook given a
`Progress` after every answer). `run_task`, `Project.run` and the CLI's `llmbus run` all take these.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from llmbus.settings import GRACE_S


@dataclass
class Progress:
    """What a progress display needs after each answer."""

    done: int
    total: int
    errors: int
    metric_name: str
    metric_value: float
    elapsed_s: float


@dataclass(frozen=True)
class RunOptions:
    """Which items a run answers and how: a representative sample of `limit` items after `offset` (or every
    class given equal room with `sampling="balanced"`), `concurrency` calls at once, the response cache on or
    off, and `resume` to finish an earlier run's missing items. After a stop (Ctrl-C, SIGTERM), calls in flight
    get `grace_s` seconds to finish and be logged before they are cancelled."""

    limit: int | None = None
    offset: int = 0
    concurrency: int = 4
    use_cache: bool = True
    sampling: str = "representative"
    resume: str | None = None
    tag: str | None = None  # what made the run (stored with it), e.g. optimize:ID
    grace_s: float = GRACE_S


@dataclass(frozen=True)
class ScaleOptions:
    """Where the calls run: this process's thread pool (`local`) or a Ray cluster (`ray_address`, `workers`
    actors; default: start one here, one actor per node)."""

    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None


@dataclass(frozen=True)
class RunHooks:
    """What a caller hears while a run prepares and answers (all optional): `on_progress` after each answer,
    `on_stage` what is being prepared (starting the model, embedding the pool), `on_warning` what makes the
    sample weak (labels it never expects, few items) before the first call."""

    on_progress: Callable[[Progress], None] | None = None
    on_stage: Callable[[str], None] | None = None
    on_warning: Callable[[str], None] | None = None
