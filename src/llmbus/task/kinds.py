"""Task kinds as strategy objects: what `kind: classify | extract | generate` means, in one place.

A kind owns what differs between tasks of that kind: which output contract it needs, how a request carries that
contract (a label set to score, a JSON Schema to constrain), how raw text is parsed into an answer, its metrics,
whether its items are sampled by class, what a student learns from a teacher's answer and which encoder student
it trains, and how teacher coverage and held-out answers are judged. Every other module asks the spec's kind
(`kind_of(spec)`) instead of comparing `spec.kind` with a name.

This module sits at the bottom of the task layer (task/spec.py imports it), so it reads only the output contract
(task/contract.py) and parsing primitives. Higher layers look up what they own by a kind's data: quality/ picks
its per-item columns by `answers`, distill/ and train/ pick a student by `student`. A fourth kind is one more
class here, listed in `KINDS` (and in `Kind`, which pydantic validates spec files against); only an answer of a
new shape also needs its columns in quality/samples.py and its baselines in advise/baselines.py.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol

from llmbus.task.contract import OutputSpec
from llmbus.task.parsing import Parsed, match_label, parse_json

Kind = Literal["classify", "extract", "generate"]


class _HasKind(Protocol):
    """Anything naming a task kind: a TaskSpec, a student's meta."""

    @property
    def kind(self) -> str: ...


class TaskKind:
    """A task kind. The base holds the behaviour of a free-text answer; kinds override what differs."""

    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the metrics a spec may name, its default first
    eval_metrics: ClassVar[tuple[str, ...]]  # every metric `llmbus eval` reports for the kind
    answers: ClassVar[str]  # the shape of an answer ("label", "entities", "text"): quality/ scores by it
    labelled: ClassVar[bool] = False  # answers come from a closed label set (sampled by class, calibrated, judged)
    student: ClassVar[str | None] = None  # the encoder student it distills into: "classifier", "tagger" or None
    student_epochs: ClassVar[int] = 2  # the fine-tuning epochs a student tries by default
    agreement_metric: ClassVar[str | None] = None  # how two answers agree (None: the task's own metric)
    advise_type: ClassVar[str]  # the advisor's default task type (advise/advise.py)
    answer_noun: ClassVar[str] = "answers"  # what the teacher's answers are called in coverage messages

    def missing_contract(self, output: OutputSpec) -> str | None:
        """What the spec's output: section lacks for this kind (a validation error), or None."""
        return None

    def parse(self, output: OutputSpec, text: str) -> Parsed:
        """Raw model text as this kind's answer: the answer_pattern's group when given, else the stripped text."""
        if output.answer_pattern:
            match = re.search(output.answer_pattern, text, flags=re.S)
            if match is None:
                return Parsed(error_kind="no_answer", error=f"no match for answer_pattern in {text.strip()[:60]!r}")
            return Parsed((match.group(1) if match.groups() else match.group(0)).strip())
        return Parsed(text.strip())

    def request_labels(self, output: OutputSpec) -> tuple[str, ...] | None:
        """The label set a request carries (what label scoring scores, as the model is shown it), or None."""
        return None

    def request_schema(self, output: OutputSpec) -> dict[str, Any] | None:
        """The JSON Schema a request carries (grammar-constrained decoding), or None."""
        return None

    def expected_labels(self, output: OutputSpec) -> set[str] | None:
        """The values an item's expected answer must be one of (checked when the data is read), or None."""
        return None

    def content_free(self, output: OutputSpec) -> tuple[str, ...]:
        """The content-free inputs an item's answer is calibrated against (none unless labelled)."""
        return ()

    def label_of(self, output: OutputSpec, shown: str) -> str:
        """The answer a label probability's key stands for (label probabilities are keyed by shown texts)."""
        return shown

    def teacher_answer(self, parsed: Any) -> Any:
        """What a student learns from a teacher's parsed answer."""
        return parsed

    def tags_tokens(self) -> bool:
        """Whether the kind's student tags tokens (it reads an item's `tokens` and answers entities) rather than
        labelling the whole text."""
        return self.student == "tagger"

    def answer_counts(self, answers: list[Any]) -> Counter[str]:
        """How often each answer (or each label inside answers) occurs: what teacher coverage counts."""
        return Counter(str(answer) for answer in answers)

    def coverage_problem(self, counts: Counter[str], n_items: int, min_examples: int) -> str | None:
        """Why teacher answers with these counts on `n_items` training items teach a student nothing, or None."""
        return None

    def rare_is_problem(self) -> bool:
        """Whether a label with too few teacher answers refuses distillation (else it is a warning)."""
        return False

    def one_answer_warning(self, answers: list[Any], teacher: list[Any], more: str | None) -> list[str]:
        """A warning when a student gives one answer on every held-out item where the teacher gives several."""
        if len({str(a) for a in answers}) > 1 or len({str(t) for t in teacher}) < 2:
            return []
        return [f"the student answers {answers[0]!r} on all {len(answers)} held-out items (the teacher gives "
                f"{len({str(t) for t in teacher})} labels there): it learned the majority label only; "
                f"{more or 'run the teacher on more items'}"]

    def same_answer(self, a: Any, b: Any) -> bool:
        """Whether two answers are identical."""
        return str(a) == str(b)


class Classify(TaskKind):
    """One label of a closed set per item."""

    name = "classify"
    metrics = ("accuracy", "macro_f1")
    eval_metrics = ("accuracy", "macro_f1")
    answers = "label"
    labelled = True
    student = "classifier"
    student_epochs = 3
    agreement_metric = "accuracy"
    advise_type = "classification"

    def missing_contract(self, output: OutputSpec) -> str | None:
        return None if output.labels else "kind classify needs output.labels"

    def parse(self, output: OutputSpec, text: str) -> Parsed:
        """The label the text names (through the verbalizer), or label_not_in_set."""
        shown = output.shown_labels()
        label = match_label(text, tuple(shown))
        if label is None:
            return Parsed(error_kind="label_not_in_set", error=f"answer {text.strip()[:60]!r} is not one of "
                                                               f"{', '.join(shown)}")
        return Parsed(output.label_of(label))

    def request_labels(self, output: OutputSpec) -> tuple[str, ...] | None:
        return tuple(output.shown_labels()) if output.labels else None

    def expected_labels(self, output: OutputSpec) -> set[str] | None:
        return set(output.labels or [])

    def content_free(self, output: OutputSpec) -> tuple[str, ...]:
        return tuple(output.calibrate or ())

    def label_of(self, output: OutputSpec, shown: str) -> str:
        return output.label_of(shown)

    def coverage_problem(self, counts: Counter[str], n_items: int, min_examples: int) -> str | None:
        if len(counts) >= 2:
            return None
        return (f"the teacher's {n_items} answers on the training split are all {next(iter(counts), 'missing')!r}: "
                "a student can learn nothing from one label")

    def rare_is_problem(self) -> bool:
        return True


class Extract(TaskKind):
    """A JSON object per item, checked against output.schema: an entity list, scored entity by entity."""

    name = "extract"
    metrics = ("entity_f1",)
    eval_metrics = ("entity_f1", "entity_precision", "entity_recall", "exact_match")
    answers = "entities"
    student = "tagger"
    agreement_metric = "exact_match"
    advise_type = "ner"
    answer_noun = "entity mentions"

    def missing_contract(self, output: OutputSpec) -> str | None:
        return None if output.json_schema else "kind extract needs output.schema"

    def parse(self, output: OutputSpec, text: str) -> Parsed:
        """JSON from the text, validated against output.schema."""
        return parse_json(text, output.json_schema or {})

    def request_schema(self, output: OutputSpec) -> dict[str, Any] | None:
        return output.json_schema

    def teacher_answer(self, parsed: Any) -> Any:
        """The entity list of the parsed object."""
        return parsed["entities"] if isinstance(parsed, dict) else parsed

    def answer_counts(self, answers: list[Any]) -> Counter[str]:
        """Entity mentions per entity type."""
        return Counter(str(entity.get("type", "")).strip() for answer in answers for entity in (answer or [])
                       if isinstance(entity, dict))

    def coverage_problem(self, counts: Counter[str], n_items: int, min_examples: int) -> str | None:
        found = sum(counts.values())
        if found >= min_examples:
            return None
        return f"the teacher found {found} entities in the {n_items} training items: nothing for a tagger to learn"

    def one_answer_warning(self, answers: list[Any], teacher: list[Any], more: str | None) -> list[str]:
        """A warning when the student found no entity on any held-out item where the teacher found some."""
        found = sum(len(a or []) for a in answers)
        return [] if found or not any(teacher) else [
            f"the student found no entity on any of the {len(answers)} held-out items (the teacher found "
            f"{sum(len(t or []) for t in teacher)}): it learned to tag nothing"]

    def same_answer(self, a: Any, b: Any) -> bool:
        """The same entities, in any order."""
        _, fp, fn = _entity_counts(a, b)
        return fp == 0 and fn == 0


class Generate(TaskKind):
    """Free text per item (optionally cut out by output.answer_pattern), scored against the expected text."""

    name = "generate"
    metrics = ("exact_match", "numeric_match", "chrf")
    eval_metrics = metrics
    answers = "text"
    advise_type = "qa"


KINDS: Mapping[str, TaskKind] = {kind.name: kind for kind in (Classify(), Extract(), Generate())}


def kind_named(name: str) -> TaskKind:
    """The strategy of the kind called `name` (a spec's or a stored run's `kind`)."""
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown task kind {name!r}: use one of {', '.join(KINDS)}") from None


def kind_of(spec: _HasKind) -> TaskKind:
    """The strategy of a spec's kind (or of anything else naming one: a student's meta)."""
    return kind_named(spec.kind)


def _entity_counts(predicted: Any, expected: Any) -> tuple[int, int, int]:
    # imported here: task/metrics loads numpy, which reading a spec does not need
    from llmbus.task.metrics import entity_counts

    return entity_counts(predicted, expected)
