"""The optimizer's search state and its measures: each candidate is a `Trial` measured rung by rung (a tagged run
through `run_task` per measure, answering more validation items as it survives), the calls it spent counted from
the call log rows it wrote (cached answers cost nothing), and the ranking that orders candidates by the
objective (quality, or the cheapest within a margin of the best quality) and marks the Pareto front.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from llmbus.experiments.candidates import Candidate
from llmbus.providers import Provider
from llmbus.quality.evaluate import Interval, evaluate
from llmbus.run.engine import TRANSIENT_ERRORS, run_task
from llmbus.run.options import RunOptions
from llmbus.run.summary import summarize
from llmbus.store import Store
from llmbus.task.data import Split
from llmbus.task.spec import TaskSpec


@dataclass
class Measure:
    """A candidate's figures on the first `items` validation items (one run)."""

    run_id: str
    items: int
    final: int  # answered for good (errors that a retry could fix excluded): free at the next rung
    quality: Interval
    tokens_per_item: float
    cost_per_1k: float  # over this run's fresh calls (cached answers cost nothing again)
    latency_p50_s: float
    # the spec's assert: checks: name → pass rate (reported beside the objective, never optimized; None for a
    # judge assertion, which the search does not pay for)
    assertions: dict[str, float | None] = field(default_factory=dict)
    price_known: bool = True  # False: the model has no price (cost_per_1k is NaN, shown as ?)


@dataclass
class Trial:
    """One candidate's measures, rung by rung, and the calls it spent."""

    candidate: Candidate
    stage: int
    measures: dict[int, Measure] = field(default_factory=dict)
    calls: int = 0
    pareto: bool = False
    note: str = ""  # winner, how far it got, or why it was never tried

    @property
    def deepest(self) -> Measure | None:
        """The measure on the most validation items."""
        return self.measures[max(self.measures)] if self.measures else None

    def row(self) -> dict[str, Any]:
        """One line of the candidates table."""
        m = self.deepest
        return {"candidate": self.candidate.name, "model": self.candidate.model, "stage": self.stage,
                "items": m.items if m else 0, "quality": asdict(m.quality) if m else None,
                "prompt_tokens_per_item": m.tokens_per_item if m else None,
                "cost_per_1k": m.cost_per_1k if m else None, "latency_p50_s": m.latency_p50_s if m else None,
                "price_known": m.price_known if m else True,
                "calls": self.calls, "pareto": self.pareto, "note": self.note,
                "assertions": m.assertions if m else {},
                "runs": [x.run_id for x in self.measures.values()]}


class Search:
    """The state of one optimization: its store, tag, budget and providers, and the calls spent so far."""

    def __init__(self, store: Store, tag: str, budget: int, providers: dict[str, Provider], concurrency: int,
                 subset: Split, on_stage: Callable[[str], None]):
        self.store, self.tag, self.budget = store, tag, budget
        self.providers, self.concurrency, self.subset, self.on_stage = providers, concurrency, subset, on_stage
        self.spent = self.cache_hits = 0
        self.limit = budget  # what the current stage may spend up to (the confirmation's reserve stays apart)

    def run(self, spec: TaskSpec, model: str, limit: int, subset: Split | None, resume: str | None = None) -> str:
        """One tagged run (or more items for an existing one) through the normal run path; its fresh calls are
        counted from the call log rows it wrote."""
        seen = max((call["id"] for call in self.store.iter_calls(resume)), default=0) if resume else 0
        if resume:
            self.store.update_run(resume, n_planned=limit)
        run_id = run_task(spec, model, self.store, RunOptions(limit=limit, concurrency=self.concurrency, tag=self.tag,
                                                              resume=resume), provider=self.providers[model],
                          subset=subset)
        spent, hits = calls_spent(self.store, run_id, after=seen)
        self.spent += spent
        self.cache_hits += hits
        return run_id

    def measure(self, trial: Trial, items: int) -> bool:
        """Answer the first `items` validation items with the trial's candidate (a survivor's run grows: only
        the new items are asked), unless the calls left could not pay for it in the worst case; then it answers
        as many as they can, or none. A trial that already answered more keeps its deeper measure."""
        deepest = trial.deepest
        if deepest is not None and items <= deepest.items:
            return True
        cost = trial.candidate.calls_per_item
        left = self.limit - self.spent
        done = deepest.final if deepest else 0
        if (items - done) * cost > left:
            items = done + left // cost
            if items <= (deepest.items if deepest else 0):
                return False
        self.on_stage(f"stage {trial.stage}: {trial.candidate.name} on {items} validation items")
        before = self.spent
        run_id = self.run(trial.candidate.spec, trial.candidate.model, items, self.subset,
                          resume=deepest.run_id if deepest else None)
        trial.calls += self.spent - before
        trial.measures[items] = measure_run(self.store, run_id)
        return True


def calls_spent(store: Store, run_id: str, after: int = 0) -> tuple[int, int]:
    """(model calls, answers from the cache) of a run's rows written after call row `after`: a row not served
    from the cache is one call, and a calibrated row adds its fresh content-free calls."""
    spent = hits = 0
    for call in store.iter_calls(run_id):
        if call["id"] <= after:
            continue
        hits += bool(call["cache_hit"])
        spent += (not call["cache_hit"]) + int(((call["meta"] or {}).get("calibration") or {}).get("calls", 0))
    return spent, hits


def measure_run(store: Store, run_id: str) -> Measure:
    """Quality with its bootstrap CI (quality/evaluate), prompt tokens, cost and latency of one run (cost and
    latency over its fresh calls: cached answers cost nothing again)."""
    report = evaluate(store, run_id)
    summary = summarize(store, store.get_run(run_id))
    final = len(store.answered_items(run_id, TRANSIENT_ERRORS))
    return Measure(run_id, report.n, final, report.values[report.metric],
                   summary.tokens_in / summary.items if summary.items else float("nan"), summary.cost_per_1k,
                   summary.latency_p50_s, {name: rate["value"] for name, rate in report.assertions.items()},
                   summary.price_known)


def quality_of(m: Measure | None) -> float:
    """A measure's main-metric value for ranking (unmeasured or NaN ranks last)."""
    return m.quality.value if m is not None and math.isfinite(m.quality.value) else -math.inf


def cost_of(m: Measure | None) -> tuple[float, float]:
    """What ranks cheaper: measured $ per 1k, then prompt tokens per item (an unpriced model's cost is unknown:
    it ranks after every priced one, never as free)."""
    if m is None:
        return math.inf, math.inf
    cost = m.cost_per_1k if math.isfinite(m.cost_per_1k) else math.inf
    return cost, m.tokens_per_item if math.isfinite(m.tokens_per_item) else math.inf


Rank = Callable[[list[tuple[int, Measure | None]]], list[int]]  # (index, measure) pairs → indices, best first


def ranking(objective: str, margin: float) -> Rank:
    """Order (index, measure) pairs best first: by quality, ties to the earlier candidate (the input spec, the
    incumbent: fewer changes, and no bet on measured cost noise); for `cost`, the cheapest among those within
    `margin` of the best quality first, then the rest by quality."""
    def rank(entries: list[tuple[int, Measure | None]]) -> list[int]:
        best = max((quality_of(m) for _, m in entries), default=-math.inf)

        def key(entry: tuple[int, Measure | None]) -> tuple[Any, ...]:
            index, m = entry
            if objective == "cost" and quality_of(m) >= best - margin:
                return (0, *cost_of(m), -quality_of(m), index)
            return (1, -quality_of(m), index)

        return [index for index, _ in sorted(entries, key=key)]

    return rank


def pareto_front(trials: list[Trial]) -> None:
    """Mark the trials no other trial beats on both quality and cost (each at its deepest measure)."""
    points = [(t, quality_of(t.deepest), cost_of(t.deepest)) for t in trials if t.deepest is not None]
    for trial, quality, cost in points:
        trial.pareto = not any(q >= quality and c <= cost and (q > quality or c < cost)
                               for other, q, c in points if other is not trial)
