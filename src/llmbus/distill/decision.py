"""Which system pays at a volume: the task's systems measured and priced from the store, then the break-even.

The systems are advise's cheap baselines (scored with a 95% bootstrap interval on the same eval items), each
LLM run of the task's current spec version (its interval from `evaluate`), the distilled student and its cascade
(their runs, with distill.json's one-off: the teacher answers it learned from × the teacher's $/item and the
training CPU-seconds × $/hour), and, when the student fell short of the target share of the teacher, a
*projected* student at that share from distill's learning curve (the teacher answers it projects). One-off human
labels are the pool items a baseline or a few-shot prompt learned from × the label cost. The maths is
advise/breakeven.py's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmbus.advise.advise import Advice
from llmbus.advise.breakeven import Assumptions, Decision, System, decide
from llmbus.distill.learning_curve import TARGET_SHARE
from llmbus.errors import LlmbusError
from llmbus.providers.config import resolve_model
from llmbus.providers.encoder import EncoderConfig
from llmbus.providers.local_config import LocalConfig
from llmbus.quality.evaluate import bootstrap, evaluate, sample_from
from llmbus.run.summary import summarize
from llmbus.settings import USD_PER_HOUR
from llmbus.store import Store
from llmbus.store.traffic import is_traffic_run
from llmbus.task.spec import TaskSpec

ROUNDS = 500  # bootstrap resamples for each system's interval
CACHED_SHARE = 0.9  # a run answered this much from the cache measures the cache, not a model


@dataclass
class Economics:
    """The decision over a task's systems, and what was left out or assumed (one line each)."""

    decision: Decision
    systems: list[System]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return {**self.decision.as_dict(), "notes": self.notes}


def row_kind(model: str, cache_hit_rate: float) -> str:
    """What a run is, from its model reference and how much of it came from the cache."""
    if cache_hit_rate >= CACHED_SHARE:
        return "cached"
    if model.startswith("encoder:") or is_lora_student(model):
        return "student"
    if model.startswith("cascade:"):
        return "cascade"
    return "teacher"


def is_lora_student(model: str) -> bool:
    """A `local:` model registered by `llmbus distill --student lora` (it reads the raw input, not the prompt)."""
    try:
        config = resolve_model(model)
    except LlmbusError:
        return False
    return isinstance(config, LocalConfig) and config.input_template is not None


def task_runs(spec: TaskSpec, store: Store) -> list[dict[str, Any]]:
    """The task's runs a decision weighs: current spec version, answered, not traffic replays, not an
    optimizer's candidates (tagged: they answered validation items), not mostly cache hits."""
    picked = []
    for run in store.list_runs(spec.name):
        if run["spec_version"] != spec.version or is_traffic_run(run) or run.get("tag"):
            continue
        summary = summarize(store, run)
        if summary.items and summary.cache_hits / summary.items < CACHED_SHARE:
            picked.append(run)
    return picked


def baseline_systems(spec: TaskSpec, advice: Advice, label_cost: float, usd_per_hour: float = USD_PER_HOUR,
                     items: set[str] | None = None) -> list[System]:
    """Advise's baselines with a bootstrap interval, scored on `items` (default: every eval item they answered)."""
    systems = []
    for row in (r for r in advice.rows if r.kind == "baseline"):
        predicted = advice.predictions.get(row.system, {})
        expected = advice.expected
        ids = [i for i in predicted if items is None or i in items]
        calls = [{"item_id": i, "parsed": predicted[i], "expected": expected[i], "error_kind": None} for i in ids]
        sample = sample_from(row.system, spec.kind, spec.main_metric, list(spec.output.labels or ()), calls)
        interval = bootstrap(sample, ROUNDS)[spec.main_metric]
        systems.append(System(row.system, "baseline", interval.value, interval.lo, interval.hi, row.usd_per_1k / 1000,
                              one_off={"labels": row.n_labels * label_cost,
                                       "training": row.train_cpu_s * usd_per_hour / 3600},
                              n_items=len(ids), note=f"trained on {row.n_labels} labeled pool items"))
    return systems


def fewshot_labels(spec: TaskSpec, pool_size: int) -> int:
    """Human labels a prompt's examples need: none without shots, k for a fixed set, else the whole pool."""
    if not spec.fewshot.k:
        return 0
    return spec.fewshot.k if spec.fewshot.strategy == "fixed" else pool_size


def run_system(spec: TaskSpec, store: Store, run: dict[str, Any], label_cost: float, pool_size: int,
               usd_per_hour: float = USD_PER_HOUR) -> System:
    """One run as a system: its quality interval, cost per item (None when unpriced) and one-off costs."""
    summary = summarize(store, run)
    interval = evaluate(store, run["id"], rounds=ROUNDS).values[spec.main_metric]
    kind = row_kind(run["model"], summary.cache_hits / summary.items)
    per_item = summary.cost_per_1k / 1000 if summary.price_known and math.isfinite(summary.cost_per_1k) else None
    name = f"{run['model']} (run {run['id']})"
    if kind in ("student", "cascade"):
        one_off, note = distilled_one_off(spec, store, usd_per_hour)
        return System(name, kind, interval.value, interval.lo, interval.hi, per_item, one_off, summary.items, note)
    labels = fewshot_labels(spec, pool_size)
    return System(name, "llm", interval.value, interval.lo, interval.hi, per_item,
                  one_off={"labels": labels * label_cost}, n_items=summary.items,
                  note=f"{labels} labeled examples for its prompts" if labels else "")


def distill_report(spec: TaskSpec) -> dict[str, Any] | None:
    """distill.json of the task's registered student (next to its folder), or None when there is none."""
    try:
        config = resolve_model(f"encoder:{spec.name}-student")
    except LlmbusError:
        return None
    if not isinstance(config, EncoderConfig):
        return None
    path = Path(config.path or "").parent / "distill.json"
    return json.loads(path.read_text()) if path.is_file() else None


def teacher_usd_per_item(store: Store, run_id: str) -> float | None:
    """The teacher run's cost per answered item (None when its model has no price or the run is gone)."""
    try:
        summary = summarize(store, store.get_run(run_id))
    except LlmbusError:
        return None
    if not summary.price_known or not math.isfinite(summary.cost_per_1k):
        return None
    return summary.cost_per_1k / 1000


def training_cpu_s(report: dict[str, Any]) -> float:
    """Training CPU-seconds from distill.json (older files only have wall seconds: one thread assumed)."""
    cpu = report.get("train_cpu_seconds")
    return float(cpu) if isinstance(cpu, int | float) and math.isfinite(cpu) else float(report["train_seconds"])


def distilled_one_off(spec: TaskSpec, store: Store, usd_per_hour: float = USD_PER_HOUR
                      ) -> tuple[dict[str, float | None], str]:
    """The student's one-off (teacher answers × teacher $/item + training) from distill.json, and a note."""
    report = distill_report(spec)
    if report is None:
        return {"teacher answers": None}, "no distill.json found: its one-off cost is unknown"
    answers = int(report["n_train"] + report["n_val"] + report["n_test"])
    per_item = teacher_usd_per_item(store, report["teacher_run"])
    one_off = {"teacher answers": None if per_item is None else answers * per_item,
               "training": training_cpu_s(report) * usd_per_hour / 3600}
    return one_off, f"{answers} teacher answers from run {report['teacher_run']}"


def projected_student(spec: TaskSpec, store: Store, systems: list[System],
                      usd_per_hour: float = USD_PER_HOUR) -> System | None:
    """The student at the target share of the teacher, if distill's learning curve projects how many teacher
    answers reach it: its one-off scaled to those answers, its cost per item the measured student's (or the
    MiniLM head baseline's: the same computation)."""
    report = distill_report(spec)
    projected = (report or {}).get("projected_teacher_answers")
    if report is None or not projected:
        return None
    teacher = next((s for s in systems if s.name.endswith(f"(run {report['teacher_run']})")), None) or \
        max((s for s in systems if s.kind == "llm"), key=lambda s: s.quality, default=None)
    per_item = teacher_usd_per_item(store, report["teacher_run"])
    runner = next((s for s in systems if s.kind == "student"), None) or \
        next((s for s in systems if s.kind == "baseline" and "minilm" in s.name), None)
    if teacher is None or runner is None:
        return None
    n_train = max(1, int(report["n_train"]))
    scale = projected / (n_train + report["n_val"] + report["n_test"])
    return System(f"projected student ({projected} teacher answers)", "projected", TARGET_SHARE * teacher.quality,
                  TARGET_SHARE * teacher.quality_lo, TARGET_SHARE * teacher.quality_hi, runner.usd_per_item,
                  one_off={"teacher answers": None if per_item is None else projected * per_item,
                           "training": training_cpu_s(report) * scale * usd_per_hour / 3600},
                  note=f"not measured: {TARGET_SHARE}× {teacher.name} as distill's learning curve projects, run "
                       f"cost of {runner.name}")


def economics(spec: TaskSpec, store: Store, advice: Advice, assumptions: Assumptions,
              runs: list[dict[str, Any]] | None = None, current: str | None = None,
              usd_per_hour: float = USD_PER_HOUR) -> Economics:
    """The decision table over the task's baselines (on the items the runs answered, when runs are given),
    its runs (default: `task_runs`), the distilled student or a projected one."""
    runs = task_runs(spec, store) if runs is None else runs
    items = {c["item_id"] for run in runs for c in store.iter_calls(run["id"])} if runs else None
    systems = baseline_systems(spec, advice, assumptions.label_cost, usd_per_hour,
                               items & set(advice.expected) if items else None)
    systems += [run_system(spec, store, run, assumptions.label_cost, advice.n_train, usd_per_hour) for run in runs]
    notes = [f"baselines scored on the {len(items & set(advice.expected))} eval items the runs answered, so every "
             "row is measured on the same sample"] if items else []
    projected = projected_student(spec, store, systems, usd_per_hour)
    if projected is not None:
        systems.append(projected)
    elif not any(s.kind == "student" for s in systems) and spec.kind_strategy.student is not None:
        notes.append("no distilled student measured: `llmbus distill TASK --teacher RUN`, then a run of the student, "
                     "add it (and its learning curve, when it falls short)")
    llms = [s for s in systems if s.kind == "llm"]
    chosen = current_system(current, systems) if current else \
        (max(llms, key=lambda s: s.quality).name if llms else None)
    return Economics(decide(systems, assumptions, chosen), systems, notes)


def current_system(given: str, systems: list[System]) -> str:
    """The system `--current` names: its full name, a run id, or a model reference with a single run."""
    matches = [s.name for s in systems if given in (s.name, s.name.split(" (run ")[0])
               or s.name.endswith(f"(run {given})")]
    if len(matches) != 1:
        found = "matches several" if matches else "is none"
        raise LlmbusError(f"--current {given!r} {found} of the systems: {'; '.join(s.name for s in systems)}")
    return matches[0]
