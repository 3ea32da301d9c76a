"""A canary in the gateway: a candidate model takes a growing share of a served model's live traffic while a
guard compares it with the incumbent, window by window.

A request goes to the candidate (the `canary` arm) when a hash of its raw input falls below the current share,
so the same input always meets the same arm and each step's canary inputs include the previous step's. Both
arms are logged as ordinary gateway calls (meta `arm`). After each window (`window` backend calls per arm, or
`window_s` seconds) `decide` compares the arms: error rate (a call its arm's model did not answer: a fallback
or a failure), p95 latency and, where `llmbus monitor` has judged the window's calls, the judge's pass rate.
It promotes to the next step (the last makes the candidate the route's model), holds (too few calls to
compare) or rolls back (share 0: everything to the incumbent, and no more windows). Every decision is a row of
`canary_decisions`; the last one is the state a restarted gateway starts from.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from llmbus.quality.monitor import monitor_info, monitored_answers
from llmbus.store import Store, now
from llmbus.store.schema import calls, canary_decisions

MIN_ARM_CALLS = 5  # fewer calls in an arm than this and the window is held, not judged
LATENCY_FLOOR_S = 0.05  # p95s under 50 ms are compared as 50 ms: timer noise is not a regression
CACHED_ROUTES = ("cache_exact", "cache_semantic")


class CanaryGuard(BaseModel):
    """When a window rolls the candidate back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0)
    min_judge_pass_rate: float | None = Field(default=None, ge=0, le=1)  # checked where verdicts exist


class CanaryConfig(BaseModel):
    """serve.yaml `canary: {SERVED: ...}`: the candidate, its share steps, the window and the guard."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    candidate: str
    steps: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    share: float | None = None  # the first step's share (default: steps[0])
    window: int | None = Field(default=None, ge=1)  # backend calls per arm (default 200 without window_s)
    window_s: float | None = Field(default=None, gt=0)
    guard: CanaryGuard = CanaryGuard()

    @field_validator("steps")
    @classmethod
    def _rising_to_one(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 1 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 1.0:
            raise ValueError("steps must rise strictly from above 0 to 1.0, e.g. [0.1, 0.25, 0.5, 1.0]")
        return steps

    @model_validator(mode="after")
    def _share_and_window(self) -> CanaryConfig:
        if self.share is not None and self.share not in self.steps:
            raise ValueError(f"share {self.share:g} must be one of the steps {self.steps}")
        if self.window is not None and self.window_s is not None:
            raise ValueError("give window (calls per arm) or window_s (seconds), not both")
        return self

    @property
    def calls_per_arm(self) -> int | None:
        """The window in calls per arm (None for a window in seconds)."""
        return None if self.window_s is not None else self.window or 200


def arm_for(text: str, share: float) -> str:
    """`canary` when the input's hash falls below `share`, else `incumbent` (the same input, the same arm)."""
    draw = int.from_bytes(hashlib.sha256(f"canary:{text}".encode()).digest()[:8], "big") / 2.0**64
    return "canary" if draw < share else "incumbent"


@dataclass(frozen=True)
class Observation:
    """One backend call of a window."""

    arm: str
    error: bool
    latency_s: float
    item_id: str


@dataclass(frozen=True)
class ArmFigures:
    """One arm over one window."""

    calls: int
    errors: int
    error_rate: float
    p95_s: float
    judged: int
    judge_pass_rate: float | None


def arm_figures(observations: list[Observation], judge: dict[str, float]) -> ArmFigures:
    """Calls, errors, error rate, p95 latency and the judge's pass rate (of the judged calls) of one arm."""
    errors = sum(o.error for o in observations)
    verdicts = [judge[o.item_id] for o in observations if o.item_id in judge]
    return ArmFigures(len(observations), errors, errors / len(observations) if observations else 0.0,
                      float(np.percentile([o.latency_s for o in observations], 95)) if observations else 0.0,
                      len(verdicts), float(np.mean(verdicts)) if verdicts else None)


def decide(guard: CanaryGuard, canary: ArmFigures, incumbent: ArmFigures) -> tuple[str, str]:
    """(promote | hold | rollback, the reason in words) for one window's figures."""
    if min(canary.calls, incumbent.calls) < MIN_ARM_CALLS:
        return "hold", (f"{canary.calls} canary and {incumbent.calls} incumbent calls in the window: "
                        f"need {MIN_ARM_CALLS} each to compare")
    increase = canary.error_rate - incumbent.error_rate
    ratio = max(canary.p95_s, LATENCY_FLOOR_S) / max(incumbent.p95_s, LATENCY_FLOOR_S)
    checks = [(increase > guard.max_error_rate_increase,
               f"error rate {canary.error_rate:.3f} vs {incumbent.error_rate:.3f} (+{increase:.3f}, at most "
               f"+{guard.max_error_rate_increase:g})"),
              (ratio > guard.max_p95_latency_ratio,
               f"p95 latency {canary.p95_s:.3f}s vs {incumbent.p95_s:.3f}s ({ratio:.2f}x, at most "
               f"{guard.max_p95_latency_ratio:g}x)")]
    if guard.min_judge_pass_rate is not None and canary.judge_pass_rate is not None:
        checks.append((canary.judge_pass_rate < guard.min_judge_pass_rate,
                       f"judge pass rate {canary.judge_pass_rate:.3f} on {canary.judged} judged calls (at least "
                       f"{guard.min_judge_pass_rate:g})"))
    failed = [text for bad, text in checks if bad]
    return ("rollback", "; ".join(failed)) if failed else ("promote", "; ".join(text for _, text in checks))


@dataclass
class CanaryState:
    """One served model's canary in a running gateway."""

    served: str
    incumbent: str
    config: CanaryConfig
    share: float
    status: str  # running | promoted | rolled_back
    window: list[Observation] = field(default_factory=list)
    window_start: float = field(default_factory=time.monotonic)

    def next_share(self) -> float:
        """The step after the current share."""
        return next(s for s in self.config.steps if s > self.share)

    def window_done(self) -> bool:
        """Enough calls in both arms (or enough seconds) to decide."""
        per_arm = self.config.calls_per_arm
        if per_arm is None:
            return time.monotonic() - self.window_start >= (self.config.window_s or 0)
        return all(sum(o.arm == arm for o in self.window) >= per_arm for arm in ("canary", "incumbent"))


def load_state(store: Store, served: str, config: CanaryConfig, incumbent: str) -> CanaryState:
    """The canary's state from its last decision (for the same candidate), or a fresh one at the first step."""
    with store.engine.connect() as conn:
        last = conn.execute(sa.select(canary_decisions).where(canary_decisions.c.served == served)
                            .order_by(canary_decisions.c.id.desc()).limit(1)).mappings().first()
    if last is None or last["candidate"] != config.candidate:
        return CanaryState(served, incumbent, config, config.share or config.steps[0], "running")
    status = "rolled_back" if last["decision"] == "rollback" else "promoted" if last["share"] >= 1.0 else "running"
    return CanaryState(served, incumbent, config, float(last["share"]), status)


def judge_passes(store: Store, served: str, item_ids: list[str]) -> dict[str, float]:
    """item id → the monitor judge's verdict (1 pass, 0 fail) for the window's calls it has judged."""
    if not item_ids or monitor_info(store, served) is None:
        return {}
    verdicts = {a.call_id: a.judge for a in monitored_answers(store, served)}
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(calls.c.id, calls.c.item_id).where(
            calls.c.task == f"gateway:{served}", calls.c.item_id.in_(item_ids))).all()
    return {item_id: verdicts[call_id] for call_id, item_id in rows if call_id in verdicts}


def decision_counts(store: Store) -> dict[tuple[str, str], int]:
    """(served, decision) → how many times the guard took it (what /metrics counts)."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(canary_decisions.c.served, canary_decisions.c.decision, sa.func.count())
                            .group_by(canary_decisions.c.served, canary_decisions.c.decision)).all()
    return {(served, decision): int(n) for served, decision, n in rows}


class Canaries:
    """The canaries of a running gateway: which arm a request meets, and a decision after each window;
    thread-safe."""

    def __init__(self, store: Store, configs: dict[str, CanaryConfig], incumbents: dict[str, str]):
        self.store = store
        self.states = {name: load_state(store, name, config, incumbents[name]) for name, config in configs.items()}
        self._lock = threading.Lock()

    def arm(self, served: str, text: str) -> str | None:
        """The arm a request with this raw input meets (None: the served model has no canary)."""
        state = self.states.get(served)
        if state is None:
            return None
        if state.status != "running":
            return "canary" if state.status == "promoted" else "incumbent"
        return arm_for(text, state.share)

    def shares(self) -> dict[str, float]:
        """The candidate's current share per served model."""
        return {name: state.share for name, state in self.states.items()}

    def observe(self, served: str, arm: str | None, route: str, failed: bool, latency_s: float,
                item_id: str) -> None:
        """Count one logged call in its window (cached answers say nothing about a model); decide when the
        window is full."""
        state = self.states.get(served)
        if state is None or arm is None or route in CACHED_ROUTES:
            return
        with self._lock:
            if state.status != "running":
                return
            state.window.append(Observation(arm, failed or route != "backend", latency_s, item_id))
            if state.window_done():
                self._decide(state)

    def _decide(self, state: CanaryState) -> None:
        """Called under the lock: judge the window, record the decision, move to its share, open a new window."""
        judge = judge_passes(self.store, state.served, [o.item_id for o in state.window])
        figures = {arm: arm_figures([o for o in state.window if o.arm == arm], judge)
                   for arm in ("canary", "incumbent")}
        decision, reason = decide(state.config.guard, figures["canary"], figures["incumbent"])
        share = {"promote": state.next_share(), "hold": state.share, "rollback": 0.0}[decision]
        record_decision(self.store, state, decision, share, reason, figures)
        state.share, state.window, state.window_start = share, [], time.monotonic()
        if decision == "rollback":
            state.status = "rolled_back"
        elif share >= 1.0:
            state.status = "promoted"


def record_decision(store: Store, state: CanaryState, decision: str, share: float, reason: str,
                    figures: dict[str, ArmFigures]) -> None:
    """One row of canary_decisions."""
    row: dict[str, Any] = {"served": state.served, "candidate": state.config.candidate, "incumbent": state.incumbent,
                           "decision": decision, "share_before": state.share, "share": share, "reason": reason,
                           "figures_json": json.dumps({arm: asdict(f) for arm, f in figures.items()}),
                           "decided_at": now()}
    with store.engine.begin() as conn:
        conn.execute(canary_decisions.insert().values(**row))
