"""Metrics of a run with bootstrap 95% intervals, and a paired comparison of two runs on the same items.

A run's calls are streamed once from the call log into compact per-item arrays (a hashed item id, the answer
as a few numbers, its cost and latency: about 35 bytes an item, never the calls themselves), so 100k items
evaluate in flat memory. Every
metric is then a vectorized function of those arrays and an index sample, which is what the bootstrap
resamples. A failed call counts as a wrong answer, as in `metrics`.
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from llmbus.errors import LlmbusError
from llmbus.quality.assertions import custom_scorer, run_checks
from llmbus.quality.samples import Sample, columns_of
from llmbus.store import Store
from llmbus.task import metrics
from llmbus.task.kinds import kind_named

BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% bootstrap interval."""

    value: float
    lo: float
    hi: float


@dataclass
class EvalReport:
    """`llmbus eval RUN`: every metric with its interval, plus per-class figures for classify."""

    run_id: str
    task: str
    model: str
    n: int
    errors: int
    metric: str
    values: dict[str, Interval]
    per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # rows expected, columns predicted (+ failed)
    warnings: list[str] = field(default_factory=list)  # what makes these figures weak (labels never expected…)
    # the spec's assert: checks: name → pass rate with its 95% Wilson interval (quality/assertions.py)
    assertions: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


@dataclass
class Comparison:
    """B against A on the items both answered: the difference of the main metric and whether it is real."""

    run_a: str
    run_b: str
    metric: str
    n_paired: int
    a: float
    b: float
    delta: Interval  # b - a
    p_bootstrap: float  # two-sided
    mcnemar_b_only: int | None = None  # items only B got right
    mcnemar_a_only: int | None = None
    p_mcnemar: float | None = None
    verdict: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def item_hash(item_id: str) -> int:
    """A stable 64-bit hash of an item id (pairs runs without keeping the ids)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")


def collect(store: Store, run: dict[str, Any], metric: str | None = None) -> Sample:
    """Stream a run's calls into a Sample, scored on `metric` (default: the run's own); a custom metric is
    computed again from the answers and the dataset's items, like the built-in ones."""
    spec = json.loads(run["spec_json"])
    labels = [str(c) for c in (spec.get("output") or {}).get("labels") or []]
    metric = metric or run["metric"]
    scorer = custom_scorer(store, run, metric) if metrics.is_custom(metric) else None
    return sample_from(run["id"], spec["kind"], metric, labels, store.iter_calls(run["id"]), scorer)


def sample_from(run_id: str, kind: str, metric: str, labels: list[str], calls: Iterable[dict[str, Any]],
                scorer: Callable[[dict[str, Any]], float] | None = None) -> Sample:
    """A Sample from call rows: a run's calls, or call-shaped rows (item_id, parsed, expected, error_kind; cost,
    latency and cache hit optional) that score answers against another reference (`accept`: human labels, else
    the incumbent's answers). `scorer` gives a custom metric's score of an answered call (a failed one scores 0)."""
    columns = columns_of(kind)(labels)
    ids, errors = array("Q"), 0
    cost, latency, cached, broken = array("d"), array("f"), array("b"), array("b")
    custom = array("d")
    for call in calls:
        failed = call["error_kind"] is not None
        errors += failed
        broken.append(failed)
        if scorer is not None:
            custom.append(0.0 if failed else scorer(call))
        ids.append(item_hash(call["item_id"]))
        cost.append(call.get("cost_usd", 0.0))
        latency.append(call.get("latency_s", 0.0))
        cached.append(bool(call.get("cache_hit")))
        columns.add(None if failed else call["parsed"], call["expected"])
    sample = Sample(run_id, kind, metric, np.frombuffer(ids, dtype=np.uint64).copy(), list(labels), errors=errors,
                    cost=np.frombuffer(cost, dtype=np.float64).copy(),
                    latency=np.frombuffer(latency, dtype=np.float32).copy(),
                    cached=np.frombuffer(cached, dtype=np.int8).astype(bool),
                    failed=np.frombuffer(broken, dtype=np.int8).astype(bool))
    if scorer is not None:
        sample.custom = {metric: np.frombuffer(custom, dtype=np.float64).copy()}
    columns.fill(sample)
    return sample


def values_at(sample: Sample, idx: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of the sample, over the items `idx` (all items when None; repeats allowed)."""
    custom = {m: float(np.mean(v if idx is None else v[idx])) if len(v) else float("nan")
              for m, v in sample.custom.items()}
    return {**columns_of(sample.kind).values(sample, idx), **custom}


def bootstrap(sample: Sample, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> dict[str, Interval]:
    """Percentile 95% intervals of every metric from `rounds` resamples of the items."""
    point = values_at(sample)
    if sample.n == 0:
        return {m: Interval(v, v, v) for m, v in point.items()}
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {m: [] for m in point}
    for _ in range(rounds):
        for m, v in values_at(sample, rng.integers(0, sample.n, size=sample.n)).items():
            draws[m].append(v)
    return {m: Interval(point[m], *_percentiles(draws[m])) for m in point}


def _percentiles(values: list[float] | np.ndarray) -> tuple[float, float]:
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return float("nan"), float("nan")
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def evaluate(store: Store, run_id: str, rounds: int = BOOTSTRAP_ROUNDS, judge: bool = False,
             on_stage: Callable[[str], None] | None = None) -> EvalReport:
    """Metrics of one run with 95% intervals (and per-class figures and confusion for classify), and the pass
    rate of each of its spec's assertions; `judge=True` runs the judge assertions not judged yet."""
    run = store.get_run(run_id)
    sample = collect(store, run)
    intervals = bootstrap(sample, rounds)
    report = EvalReport(run_id=run["id"], task=run["task"], model=run["model"], n=sample.n, errors=sample.errors,
                        metric=sample.metric, values={m: intervals[m] for m in sample.metric_names()})
    if kind_named(sample.kind).labelled and sample.pred is not None and sample.gold is not None:
        k = len(sample.classes)
        report.classes = sample.classes
        report.confusion = np.bincount(sample.gold * (k + 1) + sample.pred,
                                       minlength=k * (k + 1)).reshape(k, k + 1).tolist()
        report.per_class = metrics.per_class_scores(report.confusion, sample.classes)
        report.warnings = classify_warnings(run, report)
    for result in run_checks(store, run, judge, on_stage):
        report.assertions[result.name] = result.rate()
        if result.skipped:
            report.warnings.append(f"assert {result.name}: {result.skipped}")
    if 0 < sample.n < 30:
        report.warnings.append(f"only {sample.n} items: the intervals are wide")
    return report


def classify_warnings(run: dict[str, Any], report: EvalReport) -> list[str]:
    """Labels the run's expected answers never hold, and expected values outside the spec's label set."""
    declared = [str(c) for c in (json.loads(run["spec_json"]).get("output") or {}).get("labels") or []]
    support = {cls: int(report.per_class[cls]["support"]) for cls in report.classes}
    if not any(support.values()):  # judge runs: nothing is expected
        return []
    warnings = []
    found = metrics.coverage_warning(declared, Counter(support), f"the {report.n} items' expected answers")
    if found:
        warnings.append(found)
    outside = [cls for cls in report.classes if cls not in declared and support[cls]]
    if outside:
        warnings.append(f"expected answers outside output.labels: {', '.join(outside)} (scored as their own "
                        "classes; fix the data or the label set)")
    return warnings


def compare(store: Store, run_a: str, run_b: str, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> Comparison:
    """Paired comparison of B against A on the items both runs answered: paired bootstrap of the main metric's
    difference, and McNemar's exact test on per-item right/wrong where answers are right or wrong."""
    a_run, b_run = store.get_run(run_a), store.get_run(run_b)
    if a_run["task"] != b_run["task"]:
        raise LlmbusError(f"runs {a_run['id']} ({a_run['task']}) and {b_run['id']} ({b_run['task']}) are of "
                          "different tasks: a paired comparison needs the same items")
    a, b = paired([collect(store, a_run), collect(store, b_run)])
    if a.n == 0:
        raise LlmbusError(f"runs {a_run['id']} and {b_run['id']} share no items")
    return compare_samples(a, b, rounds, seed)


def compare_samples(a: Sample, b: Sample, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0) -> Comparison:
    """`compare` on two samples already paired item by item (see `paired`), on B's main metric."""
    metric = b.metric
    point_a, point_b = values_at(a)[metric], values_at(b)[metric]
    rng = np.random.default_rng(seed)
    deltas = np.empty(rounds)
    for r in range(rounds):
        idx = rng.integers(0, a.n, size=a.n)
        deltas[r] = values_at(b, idx)[metric] - values_at(a, idx)[metric]
    lo, hi = _percentiles(deltas)
    p_boot = min(1.0, 2 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    result = Comparison(a.run_id, b.run_id, metric, a.n, point_a, point_b, Interval(point_b - point_a, lo, hi),
                        p_boot)
    right_a, right_b = _right_or_wrong(a), _right_or_wrong(b)
    if right_a is not None and right_b is not None:
        b_only, a_only = int(np.sum(right_b & ~right_a)), int(np.sum(right_a & ~right_b))
        result.mcnemar_b_only, result.mcnemar_a_only = b_only, a_only
        result.p_mcnemar = mcnemar_exact(b_only, a_only)
    better = "B" if lo > 0 else "A" if hi < 0 else None
    result.verdict = (f"{better} is better on {metric} (95% CI of B−A excludes 0)" if better
                      else f"no significant difference on {metric} (95% CI of B−A includes 0)")
    return result


def mcnemar_exact(b_only: int, a_only: int) -> float:
    """McNemar's exact test: the two-sided binomial p-value of b_only successes in b_only + a_only fair draws
    (scipy's `binomtest(b_only, n, 0.5).pvalue`; tests compare). Exact integers: no underflow at large n."""
    n = b_only + a_only
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b_only, a_only) + 1))
    return min(1.0, 2 * tail / 2**n)


def paired(samples: list[Sample]) -> list[Sample]:
    """Every sample restricted to the items all of them hold, in one order (item i is the same item in each)."""
    if not samples:
        return []
    shared = samples[0].ids
    for s in samples[1:]:
        shared = np.intersect1d(shared, s.ids)
    return [_take(s, np.intersect1d(s.ids, shared, return_indices=True)[1]) for s in samples]


def _take(s: Sample, idx: np.ndarray) -> Sample:
    def pick(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else values[idx]

    return Sample(s.run_id, s.kind, s.metric, s.ids[idx], s.classes, pick(s.pred), pick(s.gold), pick(s.counts),
                  {m: v[idx] for m, v in s.scores.items()}, pick(s.chrf_stats),
                  s.errors if s.failed is None else int(np.sum(s.failed[idx])), pick(s.cost), pick(s.latency),
                  pick(s.cached), pick(s.failed), {m: v[idx] for m, v in s.custom.items()})


def item_scores(s: Sample) -> np.ndarray:
    """Each item's score on the main metric, in [0, 1], as `metrics.item_score` gives it (1 right, 0 wrong for
    right-or-wrong metrics; an item's F1 for entities, 1 when none were expected nor found; sentence chrF)."""
    right = _right_or_wrong(s) if s.metric != "entity_f1" else None
    if s.metric in s.custom:
        scores = s.custom[s.metric].copy()
    elif right is not None:
        scores = right.astype(float)
    elif (partial := columns_of(s.kind).partial_scores(s)) is not None:
        scores = partial
    else:
        scores = s.scores[s.metric].copy()
    if s.failed is not None:
        scores[s.failed] = 0.0  # a failed call scores 0, even on an item that expects nothing
    return scores


def _right_or_wrong(s: Sample) -> np.ndarray | None:
    """Per-item correctness when items are simply right or wrong (classify, exact/numeric match), else None."""
    if s.metric in s.custom:  # a custom metric's scores: right or wrong only when every one is 0 or 1
        scores = s.custom[s.metric]
        return np.asarray(scores == 1.0) if np.all((scores == 0.0) | (scores == 1.0)) else None
    return columns_of(s.kind).right_or_wrong(s)
