"""`llmbus.open()`: one store (the call log) with the stops as methods — what examples, notebooks and the CLI use.

    import llmbus

    with llmbus.open("llmbus.db") as project:
        task = llmbus.load_task("examples/sms_spam/chat.yaml")
        run = project.run(task, "openai:gpt-4o-mini", RunOptions(limit=200))
        print(project.evaluate(run).values["accuracy"])
        for call in project.calls(run):
            ...

Reads return typed rows (`Run`, `Call`); a run can be given as a Run or as its id (or a unique id prefix), a
model as a reference or as a `Model` you opened (`llmbus.get_model`), which is then called instead of opened
again. Nothing here writes outside the store and the folders a method is given (except `distill(register=True)`,
which adds the student to llmbus.yaml as the CLI does).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmbus.advise.advise import Advice, advise
from llmbus.distill.distill import DistillReport, distill
from llmbus.distill.lora import LoraSettings
from llmbus.distill.lora_distill import LoraDistillReport, distill_lora
from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.experiments.compare import Matrix, compare_runs
from llmbus.experiments.optimize import OptimizeResult, optimize
from llmbus.providers import Provider, Request
from llmbus.providers.config import add_models
from llmbus.providers.model import Model
from llmbus.quality import label
from llmbus.quality.evaluate import BOOTSTRAP_ROUNDS, Comparison, EvalReport, compare, evaluate
from llmbus.quality.finetune import CrossValidation, train_judge
from llmbus.quality.judge import JudgeReport, load_judge, load_verdicts, run_judge
from llmbus.run.adapter import item_request
from llmbus.run.engine import run_task, streamed_eval_items
from llmbus.run.executors import render_items
from llmbus.run.options import RunHooks, RunOptions, ScaleOptions
from llmbus.run.summary import RunSummary, Spend, spend, summarize
from llmbus.settings import DEFAULT_MODEL, USD_PER_HOUR
from llmbus.store import Call, Run, Store
from llmbus.task.spec import TaskSpec, load_spec
from llmbus.train.student import TrainSettings

if TYPE_CHECKING:  # FastAPI loads only when an app is asked for
    from fastapi import FastAPI

    from llmbus.serve.gateway import ServeConfig

RunRef = Run | str
TaskRef = TaskSpec | str | Path
ModelRef = Model | str


def load_task(path: str | Path) -> TaskSpec:
    """A task spec from its YAML file (errors name the file, line and field)."""
    return load_spec(path)


def render_requests(task: TaskRef, options: RunOptions | None = None) -> Iterator[Request]:
    """The requests a run of the task would send, item by item (prompts rendered, examples chosen, the output
    contract attached), without calling any model: see the exact prompt before it is sent. `options` pick the
    items as a run would (limit, offset, sampling)."""
    spec, options = _task(task), options or RunOptions()
    items, selector = streamed_eval_items(spec, options.limit, options.offset, options.sampling)
    return (item_request(spec, job) for job in render_items(spec, items, selector))


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
    def advise(self, task: TaskRef, *, usd_per_hour: float = USD_PER_HOUR,
               progress: StageCallback | None = None) -> Advice:
        """Does the task need an LLM: its size tier, cheap baselines on the same items, the logged LLM runs."""
        return advise(_task(task), self.store, usd_per_hour=usd_per_hour, progress=progress)

    # stop 2 ------------------------------------------------------------------------------------------
    def run(self, task: TaskRef, model: ModelRef = DEFAULT_MODEL, options: RunOptions | None = None, *,
            provider: Provider | None = None, scale: ScaleOptions | None = None,
            hooks: RunHooks | None = None) -> Run:
        """Answer the task's eval items with `model` (or a provider you opened: e.g. a ScriptedProvider),
        logging every call; returns the finished run."""
        ref, provider = _model(model, provider)
        run_id = run_task(_task(task), ref, self.store, options, provider=provider, scale=scale, hooks=hooks)
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

    def summary(self, run: RunRef, traffic: int | None = None) -> RunSummary:
        """A run's figures (a row of `llmbus runs`): quality, errors, tokens, cost, latency, throughput; with
        `traffic` (items a month) also $/month and the replicas that traffic needs."""
        return summarize(self.store, self.get_run(run).as_dict(), traffic)

    def spend(self, runs: Sequence[RunRef]) -> Spend:
        """What the calls of these runs cost, and the models among them that have no price."""
        return spend(self.store, [_id(r) for r in runs])

    def compare(self, runs: Sequence[RunRef] = (), task: str | None = None, baseline: RunRef | None = None, *,
                rounds: int = BOOTSTRAP_ROUNDS) -> Matrix:
        """Runs of one task side by side on the items they all answered, each against the baseline."""
        return compare_runs(self.store, [_id(r) for r in runs], task=task,
                            baseline=_id(baseline) if baseline is not None else None, rounds=rounds)

    def optimize(self, task: TaskRef, models: Sequence[str] = (DEFAULT_MODEL,), *, budget: int = 2000,
                 objective: str = "quality", confirm: int = 200, output: Path | None = None,
                 **options: Any) -> OptimizeResult:
        """Search the task's prompt settings within `budget` model calls; the winner is confirmed on held-out
        items (and written to `output` when given). `options`: margin, proposer, concurrency, providers,
        on_plan, on_stage."""
        return optimize(_task(task), list(models), self.store, budget=budget, objective=objective, confirm=confirm,
                        output=output, **options)

    # stop 3 ------------------------------------------------------------------------------------------
    def evaluate(self, run: RunRef, *, rounds: int = BOOTSTRAP_ROUNDS, judge: bool = False,
                 on_stage: Callable[[str], None] | None = None) -> EvalReport:
        """Every metric of a run with its 95% interval (per class and confusion for classify) and its
        assertions' pass rates; `judge=True` first runs the judge assertions not judged yet."""
        return evaluate(self.store, _id(run), rounds, judge=judge, on_stage=on_stage)

    def paired(self, run_a: RunRef, run_b: RunRef, *, rounds: int = BOOTSTRAP_ROUNDS) -> Comparison:
        """B against A on the items both answered: the paired difference and McNemar's test."""
        return compare(self.store, _id(run_a), _id(run_b), rounds)

    def judge(self, judge: TaskRef, on: RunRef, *, against: RunRef | None = None, model: ModelRef | None = None,
              limit: int | None = None, concurrency: int = 4, progress: StageCallback | None = None) -> JudgeReport:
        """Judge a run's answers with a judge spec (pairwise: against a second run); every verdict is logged."""
        spec = judge if isinstance(judge, TaskSpec) else load_judge(str(judge))
        ref, provider = _model(model, None) if model is not None else (None, None)
        return run_judge(spec, self.store, _id(on), other=_id(against) if against is not None else None,
                         model=ref, limit=limit, concurrency=concurrency, provider=provider, progress=progress)

    def verdicts(self, judge_run: RunRef) -> list[dict[str, Any]]:
        """A judge run's verdicts in item order: item_id, verdict (None when broken), confidence, probs…"""
        return load_verdicts(self.store, _id(judge_run))

    def create_label_project(self, name: str, run: RunRef, labels: Sequence[str], *, correction: bool = False,
                             instructions: str = "") -> None:
        """A labeling project over a run's calls where annotators pick one of `labels` (and may correct the
        answer, with `correction`)."""
        label.create_project(self.store, name, _id(run), label.LabelSchema("labels", tuple(labels), correction),
                             instructions)

    def import_labels(self, project: str, path: str | Path, annotator: str) -> int:
        """Labels from a JSONL file ({"item_id", "label", optional "correction"} a line) as one annotator's;
        every line is checked before any is written. Returns how many were imported."""
        return label.import_labels(self.store, project, Path(path), annotator)

    def train_judge(self, project: str, out_dir: str | Path, *, kind: str = "head", folds: int = 5,
                    settings: TrainSettings | None = None, judge_run: RunRef | None = None,
                    progress: StageCallback | None = None) -> tuple[CrossValidation, str]:
        """A judge trained on a labeling project's human labels (`head`: MiniLM + logistic; `finetuned`),
        cross-validated against them and saved to out_dir; returns the cross-validation and the model reference
        to judge with."""
        return train_judge(self.store, project, Path(out_dir), kind=kind, folds=folds,
                           settings=settings or TrainSettings(epochs=1),
                           judge_run=_id(judge_run) if judge_run is not None else None, progress=progress)

    # stop 5 ------------------------------------------------------------------------------------------
    def distill(self, task: TaskRef, teacher: RunRef, out_dir: str | Path, *, student: str = "encoder",
                settings: TrainSettings | LoraSettings | None = None, register: bool = False,
                **options: Any) -> DistillReport | LoraDistillReport:
        """Train a small student on a teacher run's answers and measure it, with its cascade, on held-out items:
        an encoder (classify, extract; `settings` a TrainSettings) or a LoRA-tuned small LM (`student="lora"`,
        generate tasks; `settings` a LoraSettings). `register=True` also adds the student and the cascade to
        llmbus.yaml, its comments kept (what the CLI does); either way `report.registration` holds those entries.
        `options`: target, how, … of the distill functions."""
        if student not in ("encoder", "lora"):
            raise LlmbusError(f"unknown student kind {student!r}: use encoder or lora")
        wanted = LoraSettings if student == "lora" else TrainSettings
        if settings is not None and not isinstance(settings, wanted):
            raise LlmbusError(f"a {student} student takes {wanted.__name__}, not {type(settings).__name__}")
        if student == "lora":
            assert not isinstance(settings, TrainSettings)  # refused above
            report: DistillReport | LoraDistillReport = distill_lora(_task(task), self.store, _id(teacher),
                                                                     Path(out_dir), settings, **options)
        else:
            assert not isinstance(settings, LoraSettings)
            report = distill(_task(task), self.store, _id(teacher), Path(out_dir), settings=settings, **options)
        if register:
            add_models(report.registration)
        return report

    # serving -------------------------------------------------------------------------------------------
    def serve_app(self, config: ServeConfig | str | Path | dict[str, Any]) -> FastAPI:
        """The OpenAI-compatible gateway over this call log as an ASGI app (what `llmbus serve` runs): `config`
        is a serve.yaml path or its contents. Starting the app starts the backends; `app.state.gateway` is the
        gateway."""
        from llmbus.serve.app import create_app
        from llmbus.serve.gateway import Gateway, ServeConfig, load_serve_config

        if isinstance(config, str | Path):
            config = load_serve_config(config)
        elif isinstance(config, dict):
            config = ServeConfig.model_validate(config)
        return create_app(Gateway(config, self.store))


def open(db: str | None = None) -> Project:
    """The project on a store: a SQLite file or a database URL (default $LLMBUS_DB or ./llmbus.db)."""
    return Project(db)


def _task(task: TaskRef) -> TaskSpec:
    return task if isinstance(task, TaskSpec) else load_spec(task)


def _id(run: RunRef) -> str:
    return run.id if isinstance(run, Run) else run


def _model(model: ModelRef, provider: Provider | None) -> tuple[str, Provider | None]:
    """(the reference, the provider to call): a Model is called through its own open provider."""
    if isinstance(model, Model):
        return model.ref, provider or model.provider
    return model, provider
