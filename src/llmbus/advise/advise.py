"""Stop 1 — do you need an LLM? Size tier for the task, cheap non-LLM baselines on the same data and metric,
and the task's LLM runs side by side (metric, latency per item, cost per 1k items)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from llmbus.advise.baselines import BASELINES_BY_ANSWER, Baseline
from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.extras import check
from llmbus.run.summary import summarize
from llmbus.settings import USD_PER_HOUR
from llmbus.store import Store
from llmbus.task import metrics
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.spec import TaskSpec

# (tier, parameters, why) by task type; the talk's rule of thumb.
TIERS: dict[str, tuple[str, str, str]] = {
    "classification": ("small", "≈300M", "a fixed label set: an encoder-sized model or a fine-tuned ≈300M LM "
                                         "is enough once it has examples"),
    "ner": ("small", "≈300M", "span tagging is token classification: encoder-sized models do it well"),
    "extraction": ("small", "≈300M", "copying fields into a schema needs little world knowledge"),
    "qa": ("medium", "≈3B", "answering in free text needs language generation and some world knowledge"),
    "chat": ("medium", "≈3B", "simple chat needs fluent generation but not deep reasoning"),
    "summarization": ("medium", "≈3B", "summaries need fluent generation over long inputs"),
    "math": ("medium", "≈3B", "multi-step arithmetic word problems need a ≈3B+ model with step-by-step reasoning"),
    "code": ("large", "≈30B", "code generation needs broad knowledge and long-range consistency"),
    "research": ("large", "≈30B", "deep research needs planning, long context and broad knowledge"),
}


@dataclass
class AdviceRow:
    """One system compared on the task: a baseline or an LLM run."""

    system: str
    kind: str  # baseline | llm
    value: float
    n_items: int
    latency_ms: float
    usd_per_1k: float
    baseline_on_same_items: float | None = None
    train_cpu_s: float = 0.0  # baselines: CPU-seconds their training took (a one-off cost)
    n_labels: int = 0  # baselines: the human-labeled pool items they learned from
    price_known: bool = True  # False: an LLM run's model has no price (usd_per_1k is NaN, shown as ?)


@dataclass
class Advice:
    """The advisor's answer for one task."""

    task: str
    task_type: str
    tier: str
    tier_params: str
    reason: str
    metric: str
    n_train: int
    n_eval: int
    rows: list[AdviceRow] = field(default_factory=list)
    verdict: str = ""
    # each baseline's answer per eval item id (what break-even intervals and the report rescore); not in --json
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    expected: dict[str, Any] = field(default_factory=dict, repr=False)  # each eval item's expected answer

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        data = asdict(self)
        data.pop("predictions")
        data.pop("expected")
        return data


def advise(spec: TaskSpec, store: Store | None = None, usd_per_hour: float = USD_PER_HOUR,
           progress: StageCallback | None = None, only: set[str] | None = None) -> Advice:
    """Tier, baselines trained on the pool split and scored on the eval split (`only` these eval item ids, when
    given: the items some runs answered), and logged LLM runs; each baseline's training and scoring (and
    MiniLM's embedding) is reported to `progress`."""
    check("embed", "llmbus advise's baselines")
    task_type = spec.task_type or spec.kind_strategy.advise_type
    tier, params, why = TIERS.get(task_type, TIERS[spec.kind_strategy.advise_type])
    split = split_items(spec, load_items(spec))
    if only is not None:
        split = replace(split, eval=[item for item in split.eval if item.id in only])
        if not split.eval:
            raise LlmbusError(f"none of the {len(only)} items the runs answered is an eval item of {spec.name}")
    advice = Advice(task=spec.name, task_type=task_type, tier=tier, tier_params=params,
                    reason=f"{task_type}: {why}.", metric=spec.main_metric, n_train=len(split.pool),
                    n_eval=len(split.eval))
    predictions: dict[str, dict[str, Any]] = {}
    for baseline in BASELINES_BY_ANSWER[spec.kind_strategy.answers]:
        row, by_item = score_baseline(spec, baseline, split.pool, split.eval, usd_per_hour, progress)
        advice.rows.append(row)
        predictions[row.system] = by_item
    advice.predictions, advice.expected = predictions, {item.id: item.expected for item in split.eval}
    if store is not None:
        advice.rows.extend(llm_rows(spec, store, split.eval, predictions))
    advice.verdict = verdict(advice)
    return advice


def score_baseline(spec: TaskSpec, baseline: Baseline, pool: list[Item], evaluation: list[Item],
                   usd_per_hour: float, progress: StageCallback | None = None) -> tuple[AdviceRow, dict[str, Any]]:
    """Train on the pool, predict the eval items; latency is single-item, cost is batch CPU-seconds."""
    report = progress or _no_progress
    stage = f"training {baseline.name} on {len(pool):,} pool items"
    report(stage, 0, 1)
    cpu_start = time.process_time()
    model = baseline.train(spec, pool, progress)
    train_cpu_s = time.process_time() - cpu_start
    report(stage, 1, 1)
    stage = f"scoring {baseline.name} on {len(evaluation):,} eval items"
    report(stage, 0, 1)
    cpu_start = time.process_time()
    predicted = model.predict(evaluation)
    cpu_per_item = (time.process_time() - cpu_start) / max(1, len(evaluation))
    report(stage, 1, 1)
    sample = evaluation[:30]
    ticks = []
    for item in sample:
        tick = time.perf_counter()
        model.predict([item])
        ticks.append(time.perf_counter() - tick)
    value = metrics.compute(spec.main_metric, zip(predicted, (i.expected for i in evaluation), strict=True),
                            spec.output.labels or ())
    row = AdviceRow(system=baseline.name, kind="baseline", value=value, n_items=len(evaluation),
                    latency_ms=1000 * float(np.median(ticks)) if ticks else float("nan"),
                    usd_per_1k=1000 * cpu_per_item * usd_per_hour / 3600, train_cpu_s=train_cpu_s, n_labels=len(pool))
    return row, {item.id: p for item, p in zip(evaluation, predicted, strict=True)}


def _no_progress(stage: str, done: int | None, total: int | None) -> None:
    pass


def llm_rows(spec: TaskSpec, store: Store, evaluation: list[Item],
             predictions: dict[str, dict[str, Any]]) -> list[AdviceRow]:
    """The task's logged LLM runs (current spec version), each with the first baseline on the same items."""
    expected = {item.id: item.expected for item in evaluation}
    first_baseline = next(iter(predictions.values()), {})
    rows = []
    for run in store.list_runs(spec.name):
        if run["spec_version"] != spec.version:
            continue
        summary = summarize(store, run)
        item_ids = [c["item_id"] for c in store.iter_calls(run["id"]) if c["item_id"] in expected]
        same = metrics.compute(spec.main_metric, ((first_baseline.get(i), expected[i]) for i in item_ids),
                               spec.output.labels or ()) \
            if first_baseline and item_ids else None
        rows.append(AdviceRow(system=f"{run['model']} (run {run['id']})", kind="llm", value=summary.value,
                              n_items=summary.items, latency_ms=1000 * summary.latency_p50_s,
                              usd_per_1k=summary.cost_per_1k, baseline_on_same_items=same,
                              price_known=summary.price_known))
    return rows


def verdict(advice: Advice) -> str:
    """One sentence: is the LLM worth it over the best cheap baseline?"""
    baselines = [r for r in advice.rows if r.kind == "baseline" and np.isfinite(r.value)]
    llms = [r for r in advice.rows if r.kind == "llm" and np.isfinite(r.value)]
    if not baselines:
        return f"No cheap baseline fits this task kind; start with a {advice.tier_params} model."
    best_base = max(baselines, key=lambda r: r.value)
    if not llms:
        return (f"Best cheap baseline: {best_base.system} at {advice.metric} {best_base.value:.3f}. "
                f"Run an LLM (`llmbus run`) to see whether a {advice.tier_params} model beats it.")
    best_llm = max(llms, key=lambda r: r.value)
    reference = best_llm.baseline_on_same_items if best_llm.baseline_on_same_items is not None else best_base.value
    gain = best_llm.value - reference
    cost_ratio = best_llm.usd_per_1k / best_base.usd_per_1k if best_base.usd_per_1k > 0 else float("inf")
    ratio = f"{cost_ratio:,.0f}×" if best_llm.price_known else "an unknown multiple of the"  # no price: never 0×
    if gain <= 0.01:
        return (f"The cheap baseline {best_base.system} matches the best LLM run ({best_llm.system}: "
                f"{best_llm.value:.3f} vs {reference:.3f} on the same items) at {ratio} lower cost: "
                "you do not need an LLM for this yet.")
    return (f"The best LLM run gains {gain:+.3f} {advice.metric} over {best_base.system} on the same items, "
            f"at {ratio} the cost per item: worth it if that gain matters; "
            "distill it later (stop 5) to get the cost back down.")
