"""A matrix of runs of one task (spec versions × models) on the items every run answered.

Each run gets its metric with a 95% bootstrap interval, its cost per 1k items and p50/p95 latency, and against
the baseline run a paired test (evaluate's paired bootstrap and McNemar, on the same shared items) and per-item
wins, ties and losses. Only the shared items count, so every row is measured on the same sample.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmbus.errors import LlmbusError
from llmbus.providers.prices import unknown_price_warning
from llmbus.quality.assertions import passed_by_item, run_checks
from llmbus.quality.estimate import wilson
from llmbus.quality.evaluate import (
    BOOTSTRAP_ROUNDS,
    Comparison,
    Interval,
    Sample,
    bootstrap,
    collect,
    compare_samples,
    item_hash,
    item_scores,
    paired,
)
from llmbus.run.summary import cost_per_1k, latency_percentiles, stored_price
from llmbus.store import Store

FEW_SHARED = 30  # below this many shared items the intervals are wide (evaluate warns at the same size)


@dataclass
class MatrixRow:
    """One run of the matrix, measured on the shared items."""

    run_id: str
    model: str
    spec_version: str
    status: str
    created_at: str
    items: int  # the run's own items; the figures below use only the shared ones
    errors: int
    metric: Interval
    cost_per_1k: float
    latency_p50_s: float
    latency_p95_s: float
    baseline: bool = False
    vs_baseline: Comparison | None = None  # paired bootstrap (+ McNemar) of this run minus the baseline
    wins: int | None = None  # items this run scores higher on than the baseline
    ties: int | None = None
    losses: int | None = None
    # the run's spec's assertions on the shared items: name → pass rate with its 95% Wilson interval
    assertions: dict[str, dict[str, Any]] = field(default_factory=dict)
    price_known: bool = True  # False: the model has no price (cost_per_1k is NaN, shown as ?)
    price_source: str = ""


@dataclass
class Matrix:
    """`llmbus compare`: runs of one task side by side on the items they all share."""

    task: str
    kind: str
    metric: str
    baseline: str
    n_shared: int
    rows: list[MatrixRow]
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def compare_runs(store: Store, run_ids: Sequence[str] = (), task: str | None = None, baseline: str | None = None,
                 rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> Matrix:
    """The matrix of the given runs (or every run of `task`, oldest first) against `baseline` (default: the first
    run given, or the task's oldest)."""
    runs = pick_runs(store, run_ids, task, baseline)
    base = next(r for r in runs if r["id"] == baseline_id(store, runs, baseline))
    metric, warnings = base["metric"], []
    other_metrics = sorted({r["metric"] for r in runs} - {metric})
    if other_metrics:
        warnings.append(f"runs use other metrics ({', '.join(other_metrics)}): every run is scored on the "
                        f"baseline's {metric}")
    samples = [collect(store, r, metric) for r in runs]
    if metric not in samples[0].metric_names():
        raise LlmbusError(f"run {base['id']}: metric {metric!r} is not one llmbus computes for {samples[0].kind} "
                          "runs, so there is nothing to compare")
    shared = paired(samples)
    n = shared[0].n
    if n == 0:
        sizes = ", ".join(f"{s.run_id} {s.n}" for s in samples)
        raise LlmbusError(f"the runs share no items ({sizes} items): compare runs over the same eval items "
                          "(the same --offset/--limit)")
    warnings += _sharing_warnings(samples, n)
    base_sample = shared[runs.index(base)]
    base_scores = item_scores(base_sample)
    rows = []
    for run, sample, full in zip(runs, shared, samples, strict=True):
        row = _row(run, sample, full.n, rounds, seed)
        row.assertions = shared_pass_rates(store, run, sample.ids)
        if run is base:
            row.baseline = True
        else:
            row.vs_baseline = compare_samples(base_sample, sample, rounds, seed)
            scores = item_scores(sample)
            row.wins, row.losses = int(np.sum(scores > base_scores)), int(np.sum(scores < base_scores))
            row.ties = n - row.wins - row.losses
        rows.append(row)
    warnings += list(dict.fromkeys(unknown_price_warning(row.model) for row in rows if not row.price_known))
    return Matrix(task=base["task"], kind=base_sample.kind, metric=metric, baseline=base["id"], n_shared=n,
                  rows=rows, warnings=warnings)


def pick_runs(store: Store, run_ids: Sequence[str], task: str | None, baseline: str | None) -> list[dict[str, Any]]:
    """The runs to compare: the ids given (prefixes resolved, repeats dropped, an outside baseline put first) or
    every run of `task`; refused unless there are two or more runs of one task and one kind."""
    if run_ids and task:
        raise LlmbusError("give run ids or --task, not both")
    if not run_ids and not task:
        raise LlmbusError("give two or more run ids, or --task TASK")
    runs = store.list_runs(task) if task else _unique([store.get_run(r) for r in run_ids])
    if task and not runs:
        raise LlmbusError(f"no runs of task {task!r} in {store.url} (see llmbus runs)")
    if baseline and run_ids:
        extra = store.get_run(baseline)
        runs = _unique([extra, *runs]) if extra["id"] not in {r["id"] for r in runs} else runs
    if len(runs) < 2:
        what = f"task {task!r} has" if task else "you gave"
        raise LlmbusError(f"compare needs two or more runs of one task; {what} one (run {runs[0]['id']})")
    first = runs[0]
    for run in runs[1:]:
        if run["task"] != first["task"]:
            raise LlmbusError(f"runs {first['id']} ({first['task']}) and {run['id']} ({run['task']}) are of "
                              "different tasks: compare needs runs of one task, on the same items")
        if _kind(run) != _kind(first):
            raise LlmbusError(f"runs {first['id']} ({_kind(first)}) and {run['id']} ({_kind(run)}) are of "
                              "different task kinds: their answers cannot be scored alike")
    return runs


def baseline_id(store: Store, runs: list[dict[str, Any]], baseline: str | None) -> str:
    """The baseline run's id: `baseline` resolved (it must be one of `runs`), else the first run."""
    if baseline is None:
        return str(runs[0]["id"])
    found = store.get_run(baseline)
    if found["id"] not in {r["id"] for r in runs}:
        raise LlmbusError(f"--baseline {found['id']} is a run of task {found['task']}, not one of the runs "
                          "compared")
    return str(found["id"])


def _unique(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return list({r["id"]: r for r in reversed(runs)}.values())[::-1]


def _kind(run: dict[str, Any]) -> str:
    return str(json.loads(run["spec_json"]).get("kind"))


def _sharing_warnings(samples: list[Sample], n: int) -> list[str]:
    warnings = []
    if n < FEW_SHARED:
        warnings.append(f"the runs share only {n} items: the intervals are wide")
    left_out = [f"{s.run_id} {s.n - n} of its {s.n}" for s in samples if s.n > n]
    if left_out:
        warnings.append(f"only the {n} items every run answered count; left out: {', '.join(left_out)}")
    return warnings


def shared_pass_rates(store: Store, run: dict[str, Any], ids: np.ndarray) -> dict[str, dict[str, Any]]:
    """Each assertion's pass rate over the items `ids` (judge assertions as judged so far; none until judged)."""
    rates: dict[str, dict[str, Any]] = {}
    for result in run_checks(store, run):
        passed = passed_by_item(result, ids, item_hash)
        known = passed[~np.isnan(passed)]
        if result.skipped or not len(known):
            rates[result.name] = {"kind": result.kind, "value": None, "lo": None, "hi": None, "passed": 0, "n": 0,
                                  "skipped": result.skipped}
            continue
        lo, hi = wilson(float(known.mean()), len(known))
        rates[result.name] = {"kind": result.kind, "value": float(known.mean()), "lo": lo, "hi": hi,
                              "passed": int(known.sum()), "n": len(known), "skipped": None}
    return rates


def _row(run: dict[str, Any], sample: Sample, items: int, rounds: int, seed: int) -> MatrixRow:
    assert sample.cost is not None and sample.latency is not None and sample.cached is not None
    fresh = ~sample.cached
    p50, p95 = latency_percentiles(sample.latency[fresh])
    price = stored_price(run)
    known = price is None or price.known
    return MatrixRow(run_id=run["id"], model=run["model"], spec_version=run["spec_version"], status=run["status"],
                     created_at=str(run["created_at"])[:19], items=items, errors=sample.errors,
                     metric=bootstrap(sample, rounds, seed)[sample.metric],
                     cost_per_1k=cost_per_1k(float(sample.cost.sum()), int(fresh.sum())) if known else float("nan"),
                     latency_p50_s=p50, latency_p95_s=p95, price_known=known,
                     price_source=price.describe() if price else "")
