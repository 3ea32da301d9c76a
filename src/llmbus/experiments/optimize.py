"""`llmbus optimize`: search the prompt settings a user would otherwise try by hand, within a call budget, and
confirm the winner on held-out eval items against the input spec.

1. Validation items are drawn from the few-shot pool (never the eval items); an item never sees itself as an
   example. Stage 1 searches shots (k × selection strategy), stage 2 the one-setting changes of its winner
   (shot order, verbalizer, calibration, instructions — the proposer's rewrites when `--proposer` is given —
   and the other models), stage 3 the combination of stage 2's improvements. Each stage is a successive
   halving (`halving.py`): more validation items only for the survivors.
2. Every call goes through `run_task`, so each is an ordinary run in the call log, tagged `optimize:ID`;
   answers already cached (earlier rungs, earlier runs) cost nothing and are not counted. The budget is split
   before the first call into the confirmation's worst case, the proposer's requests and the search, and no
   run starts that could overspend what is left.
3. The winner and the input spec answer the same held-out eval items and are compared with quality/evaluate's
   paired bootstrap and McNemar test; a winner whose 95% interval of the difference includes 0 is reported as
   not significantly better.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmbus.errors import LlmbusError
from llmbus.experiments import candidates as space
from llmbus.experiments.candidates import Candidate, Settings
from llmbus.experiments.halving import MIN_ITEMS, Rung, Schedule, schedule, successive_halving
from llmbus.experiments.proposer import TIPS, Proposals, propose
from llmbus.experiments.search import (
    Measure,
    Rank,
    Search,
    Trial,
    calls_spent,
    measure_run,
    pareto_front,
    quality_of,
    ranking,
)
from llmbus.experiments.spec_yaml import write_spec
from llmbus.providers import Provider, open_provider
from llmbus.quality.evaluate import Comparison, Interval, compare, evaluate
from llmbus.store import Store
from llmbus.task.data import Split, load_items, sample_order, split_items
from llmbus.task.spec import TaskSpec

# The search state, measures and ranking live in search.py; callers import them from here too.
__all__ = ["OBJECTIVES", "Confirmation", "Measure", "OptimizeResult", "Plan", "Trial", "calls_spent", "measure_run",
           "optimize", "pareto_front", "ranking"]

OBJECTIVES = ("quality", "cost")
MAX_VALIDATION = 1000  # validation items drawn from the pool at most
STAGE_SHARE = (0.55, 0.85, 1.0)  # of the search calls still unspent when each stage starts


@dataclass
class Plan:
    """The budget, split before the first call (every figure a worst case: cached answers make it less)."""

    budget: int
    validation_items: int
    confirm_items: int
    confirm_calls: int
    proposer_calls: int
    search_calls: int
    stage1: Schedule

    def lines(self) -> list[str]:
        """The plan as the CLI prints it."""
        rungs = ", ".join(f"{r.candidates}×{r.items}" for r in self.stage1.rungs)
        return [f"budget {self.budget} model calls: at most {self.search_calls} for the search on "
                f"{self.validation_items} validation items from the pool, {self.proposer_calls} for the proposer, "
                f"{self.confirm_calls} to confirm on {self.confirm_items} held-out eval items",
                f"stage 1 (shots): {self.stage1.n_candidates} candidates, successive halving {rungs} "
                f"(candidates × items), at most {self.stage1.max_calls} calls; stages 2–3 get what is left"]


@dataclass
class Confirmation:
    """The winner against the input spec on the same held-out eval items."""

    items: int
    original_run: str
    winner_run: str
    original: Interval
    winner: Interval
    comparison: Comparison | None  # None when the winner is the input spec
    significant: bool
    verdict: str


@dataclass
class OptimizeResult:
    """Everything `llmbus optimize` reports."""

    id: str
    task: str
    objective: str
    metric: str
    plan: Plan
    spent: int
    cache_hits: int
    trials: list[Trial]
    winner: Trial
    confirmation: Confirmation
    validation_ids: list[str]
    winner_spec: TaskSpec
    proposals: Proposals | None = None
    yaml: str = ""
    diff: str = ""
    output: str | None = None

    @property
    def tag(self) -> str:
        """The tag every run of this optimization carries."""
        return f"optimize:{self.id}"

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return {"id": self.id, "tag": self.tag, "task": self.task, "objective": self.objective,
                "metric": self.metric, "plan": asdict(self.plan), "spent_calls": self.spent,
                "cache_hits": self.cache_hits, "winner": self.winner.row(), "confirmation": asdict(self.confirmation),
                "candidates": [t.row() for t in self.trials], "pareto": [t.row() for t in self.trials if t.pareto],
                "instructions": self.proposals.instructions if self.proposals else [],
                "output": self.output, "diff": self.diff}


def optimize(spec: TaskSpec, models: list[str], store: Store, *, budget: int = 2000, objective: str = "quality",
             margin: float = 0.01, proposer: str | None = None, confirm: int = 200, concurrency: int = 4,
             output: Path | None = None, providers: dict[str, Provider] | None = None,
             on_plan: Callable[[Plan], None] | None = None,
             on_stage: Callable[[str], None] | None = None) -> OptimizeResult:
    """Search prompt settings for `spec` on `models` (the first is the input spec's) within `budget` model calls,
    confirm the winner on `confirm` held-out eval items, and write it to `output` when given."""
    if objective not in OBJECTIVES:
        raise LlmbusError(f"--objective {objective!r}: use one of {', '.join(OBJECTIVES)}")
    if not models:
        raise LlmbusError("give at least one --model")
    stage = on_stage or (lambda _text: None)
    split = split_items(spec, load_items(spec))
    validation = sample_order(spec, split.pool)[:MAX_VALIDATION]
    if len(validation) < 4 or len(split.pool) < 4:
        raise LlmbusError(f"{spec.source}: the few-shot pool holds {len(split.pool)} items; the optimizer needs "
                          "at least 4 to draw validation items from (raise fewshot.pool_fraction)")
    opt_id = secrets.token_hex(4)
    base = space.base_settings(spec, models[0])
    stage1 = space.shot_candidates(spec, base, len(split.pool))
    plan = _plan(spec, budget, len(validation), min(confirm, len(split.eval)), proposer, stage1)
    if on_plan:
        on_plan(plan)
    owned = {m: open_provider(m) for m in {*models, *([proposer] if proposer else [])}
             if not providers or m not in providers}
    search = Search(store, f"optimize:{opt_id}", budget, {**(providers or {}), **owned}, concurrency,
                     Split(pool=split.pool, eval=validation), stage)
    try:
        for provider in owned.values():
            provider.check()
        proposals = None
        if proposer:
            stage(f"asking {proposer} for instruction rewrites")
            proposals = propose(spec, proposer, search.providers[proposer], store, split.pool, search.tag,
                                len(TIPS))
            search.spent += calls_spent(store, proposals.run_id)[0] if proposals.run_id else 0
        search.limit = budget - plan.confirm_calls
        trials, winner = _stages(spec, models, base, stage1, search, plan, objective, margin, proposals)
        confirmation = _confirm(spec, models[0], winner.candidate, search, plan.confirm_items)
    finally:
        for provider in owned.values():
            provider.close()
    pareto_front(trials)
    for trial in trials:
        trial.note = ("winner" if trial is winner else f"stopped at {trial.deepest.items} items" if trial.deepest
                      else "not tried: the budget could not pay for it")
    result = OptimizeResult(opt_id, spec.name, objective, spec.main_metric, plan, search.spent, search.cache_hits,
                            trials, winner, confirmation, [item.id for item in validation], winner.candidate.spec,
                            proposals)
    if output is not None:
        result.yaml, result.diff = write_spec(spec, winner.candidate.spec, output, _header(result, spec.source))
        result.output = str(output)
    return result


def _plan(spec: TaskSpec, budget: int, n_validation: int, n_confirm: int, proposer: str | None,
          stage1: list[Candidate]) -> Plan:
    dearest = 1 + (len(space.CONTENT_FREE) if spec.kind == "classify" else 0)
    confirm_calls = n_confirm * (stage1[0].calls_per_item + max(dearest, stage1[0].calls_per_item))
    proposer_calls = (len(TIPS) + (1 if spec.kind == "classify" else 0)) if proposer else 0
    search_calls = budget - confirm_calls - proposer_calls
    first = schedule([c.calls_per_item for c in stage1], int(max(0, search_calls) * STAGE_SHARE[0]), n_validation,
                     min(MIN_ITEMS, n_validation))
    if first is None or first.n_candidates < 2:
        raise LlmbusError(f"--budget {budget} is too small: confirming on {n_confirm} eval items may take "
                          f"{confirm_calls} calls and the proposer {proposer_calls}, which leaves "
                          f"{max(0, search_calls)} for the search: too few for two candidates on "
                          f"{min(MIN_ITEMS, n_validation)} validation items; raise --budget or lower --confirm")
    return Plan(budget, n_validation, n_confirm, confirm_calls, proposer_calls, search_calls, first)


def _stages(spec: TaskSpec, models: list[str], base: Settings, stage1: list[Candidate], search: Search, plan: Plan,
            objective: str, margin: float, proposals: Proposals | None) -> tuple[list[Trial], Trial]:
    """Stages 1–3; returns every trial and the winner."""
    rank = ranking(objective, margin)
    trials = [Trial(c, 1) for c in stage1]
    incumbent = _halve(trials, plan.stage1, search, rank)
    instructions = [space.spec_instruction(spec), *(proposals.instructions if proposals else [])]
    words = proposals.words if proposals else None
    neighbours = space.neighbour_candidates(spec, incumbent.candidate.settings, base, models, instructions, words)
    stage2 = [incumbent] + [Trial(c, 2) for c in neighbours[1:]]
    trials += stage2[1:]
    winner = _run_stage(stage2, search, rank, STAGE_SHARE[1]) or incumbent
    # Stage 3: every change that beat the incumbent on the items both answered (evaluate's paired comparison of
    # their runs), together.
    better = sorted((t for t in stage2[1:] if _beats(search.store, t, incumbent)), key=lambda t: -quality_of(t.deepest))
    improving = [t.candidate.settings for t in better]
    if len(improving) < 2:
        return trials, winner
    combo = space.make(spec, space.combined(incumbent.candidate.settings, improving), base, instructions)
    if any(combo.spec.version == t.candidate.spec.version and combo.model == t.candidate.model for t in trials):
        return trials, winner
    trial = Trial(combo, 3)
    trials.append(trial)
    items = max(winner.measures)
    if search.measure(trial, items) and items in trial.measures:
        order = rank([(0, winner.measures[items]), (1, trial.measures[items])])
        winner = trial if order[0] == 1 else winner
    return trials, winner


def _beats(store: Store, trial: Trial, other: Trial) -> bool:
    """Whether the trial's main metric is higher than the other's on the validation items both answered."""
    if trial.deepest is None or other.deepest is None:
        return False
    return compare(store, other.deepest.run_id, trial.deepest.run_id, rounds=1).delta.value > 0



def _run_stage(trials: list[Trial], search: Search, rank: Rank, share: float) -> Trial | None:
    """A halving over `trials` with `share` of the search calls left (None when that cannot pay for two)."""
    budget = int((search.limit - search.spent) * share)
    n_items = len(search.subset.eval)
    plan = schedule([t.candidate.calls_per_item for t in trials], budget, n_items, min(MIN_ITEMS, n_items))
    if plan is None or plan.n_candidates < 2:
        return None
    return _halve(trials, plan, search, rank)


def _halve(trials: list[Trial], plan: Schedule, search: Search, rank: Rank) -> Trial:
    """Successive halving over `trials`; returns the best survivor."""
    def measure(index: int, items: int) -> bool:
        return search.measure(trials[index], items)

    def order(indices: list[int]) -> list[int]:
        return rank([(i, trials[i].deepest) for i in indices])

    def on_rung(index: int, rung: Rung) -> None:
        search.on_stage(f"stage {trials[-1].stage}, rung {index + 1}/{len(plan.rungs)}: {rung.candidates} "
                        f"candidates × {rung.items} validation items")

    search_limit, search.limit = search.limit, min(search.limit, search.spent + plan.max_calls)
    try:  # a stage spends no more than its plan: the next stages keep their share
        survivors = successive_halving(len(trials), plan, measure, order, on_rung)
    finally:
        search.limit = search_limit
    return trials[survivors[0]]


def _confirm(spec: TaskSpec, model: str, winner: Candidate, search: Search, n: int) -> Confirmation:
    """The input spec and the winner on the same first `n` held-out eval items, compared pairwise."""
    search.on_stage(f"confirming on {n} held-out eval items: the input spec")
    original_run = search.run(spec, model, n, None)
    original = evaluate(search.store, original_run)
    if winner.spec.version == spec.version and winner.model == model:
        value = original.values[original.metric]
        return Confirmation(n, original_run, original_run, value, value, None, False,
                            "the input spec stayed the best candidate: nothing to confirm")
    search.on_stage(f"confirming on {n} held-out eval items: {winner.name}")
    winner_run = search.run(winner.spec, winner.model, n, None)
    found = evaluate(search.store, winner_run)
    comparison = compare(search.store, original_run, winner_run)
    significant = comparison.delta.lo > 0
    delta = comparison.delta
    if significant:
        verdict = f"better: {comparison.metric} +{delta.value:.3f} (95% CI {delta.lo:+.3f} to {delta.hi:+.3f})"
    elif delta.hi < 0:
        verdict = f"worse: {comparison.metric} {delta.value:+.3f} (95% CI {delta.lo:+.3f} to {delta.hi:+.3f})"
    else:
        lower = " (lower on these items, within the noise)" if delta.value < 0 else ""
        verdict = (f"not significantly better: {comparison.metric} {delta.value:+.3f}, 95% CI {delta.lo:+.3f} to "
                   f"{delta.hi:+.3f} includes 0{lower}")
    if comparison.p_mcnemar is not None:
        verdict += f"; McNemar p={comparison.p_mcnemar:.3g}"
    return Confirmation(n, original_run, winner_run, original.values[original.metric], found.values[found.metric],
                        comparison, significant, verdict)


def _header(result: OptimizeResult, source: Path | None) -> str:
    c = result.confirmation
    return (f"Optimized by llmbus optimize {result.id} (objective {result.objective}) from {source}\n"
            f"winner: {result.winner.candidate.name} on {result.winner.candidate.model}\n"
            f"held-out {c.items} eval items: {result.metric} {c.winner.value:.3f} vs {c.original.value:.3f}: "
            f"{c.verdict}")
