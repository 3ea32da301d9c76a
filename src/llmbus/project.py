"""`llmbus.open()`: one store (the call log) with the stops as methods — what examples, notebooks and the CLI use.

    import llmbus

    with llmbus.open("llmbus.db") as project:
        task = llmbus.load_task("examples/sms_spam/chat.yaml")
        run = project.run(task, "openai:gpt-4o-mini", RunOptions(limit=200))
        print(project.evaluate(run).values["accuracy"])
        for call in project.calls(run):
            ...

Reads return typed rows (`Run`, `Call`); a run can be given as a Run or as its id (or a unique id prefix).
Nothing here writes outside the store and the folders a method is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from llmbus.advise.advise import Advice, advise
from llmbus.distill.distill import DistillReport, distill
from llmbus.experiments.compare import Matrix, compare_runs
from llmbus.experiments.optimize import OptimizeResult, optimize
from llmbus.providers import Provider
from llmbus.quality.evaluate import Comparison, EvalReport, compare, evaluate
from llmbus.quality.judge import JudgeReport, load_judge, run_judge
from llmbus.run.engine import run_task
from llmbus.run.options import RunHooks, RunOptions, ScaleOptions
from llmbus.settings import DEFAULT_MODEL
from llmbus.store import Call, Run, Store
from llmbus.task.spec import TaskSpec, load_spec
from llmbus.train.student import TrainSettings

RunRef = Run | str
TaskRef = TaskSpec | str | Path


def load_task(path: str | Path) -> TaskSpec:
    """A task spec from its YAML file (errors name the file, line and field)."""
    return load_spec(path)


class Project:
    """One call log and the stops over it. A context manager: leaving it closes the store's connections."""

    def __init__(self, db: str | None = None):
        self.store = Store(db)

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()

    # stop 1 ------------------------------------------------------------------------------------------
    def advise(self, task: TaskRef) -> Advice:
        """Does the task need an LLM: its size tier, cheap baselines on the same items, the logged LLM runs."""
        return advise(_task(task), self.store)

    # stop 2 ------------------------------------------------------------------------------------------
    def run(self, task: TaskRef, model: str = DEFAULT_MODEL, options: RunOptions | None = None, *,
            provider: Provider | None = None, scale: ScaleOptions | None = None,
            hooks: RunHooks | None = None) -> Run:
        """Answer the task's eval items with `model` (or a provider you opened: e.g. a ScriptedProvider),
        logging every call; returns the finished run."""
        run_id = run_task(_task(task), model, self.store, options, provider=provider, scale=scale, hooks=hooks)
        return self.store.run(run_id)

    def runs(self, task: str | None = None, tag: str | None = None) -> list[Run]:
        """Every run, oldest first (of one task name, or with one tag)."""
        return self.store.runs(task, tag)

    def get_run(self, run: RunRef) -> Run:
        """A run by id or unique id prefix."""
        return run if isinstance(run, Run) else self.store.run(run)

    def calls(self, run: RunRef) -> Iterator[Call]:
        """A run's calls, streamed in the order they were logged."""
        return self.store.calls(self.get_run(run).id)

    def compare(self, runs: Sequence[RunRef] = (), task: str | None = None,
                baseline: RunRef | None = None) -> Matrix:
        """Runs of one task side by side on the items they all answered, each against the baseline."""
        return compare_runs(self.store, [_id(r) for r in runs], task=task,
                            baseline=_id(baseline) if baseline is not None else None)

    def optimize(self, task: TaskRef, models: Sequence[str] = (DEFAULT_MODEL,), *, budget: int = 2000,
                 objective: str = "quality", confirm: int = 200, output: Path | None = None,
                 **options: Any) -> OptimizeResult:
        """Search the task's prompt settings within `budget` model calls; the winner is confirmed on held-out
        items (and written to `output` when given). `options`: margin, proposer, concurrency."""
        return optimize(_task(task), list(models), self.store, budget=budget, objective=objective, confirm=confirm,
                        output=output, **options)

    # stop 3 ------------------------------------------------------------------------------------------
    def evaluate(self, run: RunRef) -> EvalReport:
        """Every metric of a run with its 95% interval (per class and confusion for classify)."""
        return evaluate(self.store, _id(run))

    def paired(self, run_a: RunRef, run_b: RunRef) -> Comparison:
        """B against A on the items both answered: the paired difference and McNemar's test."""
        return compare(self.store, _id(run_a), _id(run_b))

    def judge(self, judge: TaskRef, on: RunRef, *, against: RunRef | None = None, model: str | None = None,
              limit: int | None = None, concurrency: int = 4) -> JudgeReport:
        """Judge a run's answers with a judge spec (pairwise: against a second run); every verdict is logged."""
        spec = judge if isinstance(judge, TaskSpec) else load_judge(str(judge))
        return run_judge(spec, self.store, _id(on), other=_id(against) if against is not None else None,
                         model=model, limit=limit, concurrency=concurrency)

    # stop 5 ------------------------------------------------------------------------------------------
    def distill(self, task: TaskRef, teacher: RunRef, out_dir: str | Path, *, settings: TrainSettings | None = None,
                register: bool = False, **options: Any) -> DistillReport:
        """Train a small student on a teacher run's answers and measure it, with its cascade, on held-out items.
        `register=True` also adds the student and the cascade to llmbus.yaml (what the CLI does)."""
        return distill(_task(task), self.store, _id(teacher), Path(out_dir), settings=settings, register=register,
                       **options)


def open(db: str | None = None) -> Project:
    """The project on a store: a SQLite file or a database URL (default $LLMBUS_DB or ./llmbus.db)."""
    return Project(db)


def _task(task: TaskRef) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else load_spec(task)


def _id(run: RunRef) -> str:
    return run.id if isinstance(run, Run) else run
