"""The prompt settings the optimizer tries, as plain values: what a user would otherwise change by hand.

A candidate is the input spec with some `Settings` changed: few-shot k, selection strategy and order, label
verbalizer, content-free calibration, the instruction (a `messages:` spec's system turn, else the
prompt's static text before its first Jinja tag), where a `messages:` spec's shots go (a block inside the
item's turn, or user/assistant turns), and the model. Every candidate is an ordinary spec, so the winner is a
YAML file any `llmbus run` reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from llmbus.task.spec import TaskSpec

SHOT_COUNTS = (4, 8, 2)  # tried in this order; the list is cut from the end when the budget is short
STRATEGIES = ("nearest", "fixed", "tfidf", "bm25", "balanced", "random")
CONTENT_FREE = ("N/A",)  # Zhao et al.'s first content-free input
_TAG = re.compile(r"\{[{%#]")


@dataclass(frozen=True)
class Settings:
    """One point of the search space; `instruction` indexes the instruction variants (0: the spec's own)."""

    model: str
    k: int
    strategy: str
    order: str = "default"
    verbalizer: tuple[tuple[str, str], ...] | None = None  # (shown, label) pairs; None: labels as themselves
    calibrate: tuple[str, ...] | None = None
    instruction: int = 0
    shots_as: str = "block"  # messages: specs: the examples as a block inside the item's turn, or as turns


@dataclass(frozen=True)
class Candidate:
    """Settings, the spec they make, and a short name saying what differs from the input spec."""

    settings: Settings
    spec: TaskSpec
    name: str

    @property
    def model(self) -> str:
        """The model this candidate is answered by."""
        return self.settings.model

    @property
    def calls_per_item(self) -> int:
        """Model calls one item can cost at most (the answer, plus each content-free prompt when calibrated)."""
        return 1 + len(self.settings.calibrate or ())


def base_settings(spec: TaskSpec, model: str) -> Settings:
    """The input spec's own settings."""
    verbalizer = tuple(spec.output.verbalizer.items()) if spec.output.verbalizer else None
    calibrate = tuple(spec.output.calibrate) if spec.output.calibrate else None
    return Settings(model, spec.fewshot.k, spec.fewshot.strategy, spec.fewshot.order, verbalizer, calibrate,
                    shots_as=spec.fewshot.as_)


def instruction_of(prompt: str) -> str:
    """The prompt's instruction: its static text before the first Jinja tag (empty when it starts with one)."""
    match = _TAG.search(prompt)
    return (prompt[: match.start()] if match else prompt).strip()


def with_instruction(prompt: str, instruction: str) -> str:
    """The prompt with its instruction replaced (the whitespace after it and everything else kept)."""
    old = instruction_of(prompt)
    start = prompt.index(old) if old else 0
    return prompt[:start] + instruction.strip() + prompt[start + len(old):]


def spec_instruction(spec: TaskSpec) -> str:
    """The instruction of a spec: a `messages:` spec's leading system (or developer) turn, else the instruction
    of its prompt (or of its first turn)."""
    if spec.messages is None:
        return instruction_of(str(spec.prompt))
    first = spec.messages[0]
    return first.content.strip() if first.role in ("system", "developer") else instruction_of(first.content)


def with_spec_instruction(spec: TaskSpec, instruction: str) -> dict[str, Any]:
    """The spec fields that replace its instruction (see `spec_instruction`)."""
    if spec.messages is None:
        return {"prompt": with_instruction(str(spec.prompt), instruction)}
    first = spec.messages[0]
    content = instruction.strip() if first.role in ("system", "developer") else \
        with_instruction(first.content, instruction)
    return {"messages": [first.model_copy(update={"content": content}), *spec.messages[1:]]}


def build(spec: TaskSpec, settings: Settings, instructions: list[str]) -> TaskSpec:
    """The spec these settings make from the input spec."""
    fewshot = spec.fewshot.model_copy(update={"k": settings.k, "strategy": settings.strategy,
                                              "order": settings.order, "as_": settings.shots_as})
    output = spec.output.model_copy(update={
        "verbalizer": dict(settings.verbalizer) if settings.verbalizer else None,
        "calibrate": list(settings.calibrate) if settings.calibrate else None})
    changed = {} if settings.instruction == 0 else with_spec_instruction(spec, instructions[settings.instruction])
    return spec.model_copy(update={"fewshot": fewshot, "output": output, **changed})


def describe(settings: Settings, base: Settings) -> str:
    """What differs from the input spec's settings, e.g. `k=4 tfidf · reverse · calibrated`."""
    parts = []
    if (settings.k, settings.strategy) != (base.k, base.strategy):
        parts.append("k=0" if settings.k == 0 else f"k={settings.k} {settings.strategy}")
    if settings.order != base.order:
        parts.append(f"order {settings.order}")
    if settings.verbalizer != base.verbalizer:
        shown = ", ".join(f"{s}" for s, _ in settings.verbalizer) if settings.verbalizer else "labels as written"
        parts.append(f"verbalizer {shown}")
    if settings.calibrate != base.calibrate:
        parts.append("calibrated" if settings.calibrate else "uncalibrated")
    if settings.instruction != base.instruction:
        parts.append(f"instruction {settings.instruction}")
    if settings.shots_as != base.shots_as:
        parts.append(f"shots as {settings.shots_as}")
    if settings.model != base.model:
        parts.append(settings.model)
    return " · ".join(parts) or "input spec"


def make(spec: TaskSpec, settings: Settings, base: Settings, instructions: list[str]) -> Candidate:
    """A candidate from settings."""
    return Candidate(settings, build(spec, settings, instructions), describe(settings, base))


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates that ask something different (k=0 makes strategy and order moot); the first one wins."""
    seen: set[tuple[str, str]] = set()
    out = []
    for candidate in candidates:
        key = (candidate.model, candidate.spec.version if candidate.spec.fewshot.k else
               candidate.spec.model_copy(update={"fewshot": candidate.spec.fewshot.model_copy(
                   update={"strategy": "fixed", "order": "default"})}).version)
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


def shot_candidates(spec: TaskSpec, base: Settings, pool_size: int) -> list[Candidate]:
    """Stage 1: the input spec, no shots, then k × selection strategy (most promising first)."""
    strategies = [s for s in STRATEGIES if s != "balanced" or spec.kind_strategy.labelled]
    settings = [base, replace(base, k=0)]
    settings += [replace(base, k=k, strategy=s) for k in SHOT_COUNTS if k < pool_size for s in strategies]
    return distinct([make(spec, s, base, []) for s in settings])


def verbalizers(spec: TaskSpec, proposed: dict[str, str] | None) -> list[tuple[tuple[str, str], ...] | None]:
    """Verbalizer variants worth a try: labels as written, Title case, and the proposer's words."""
    labels = spec.output.labels or []
    variants: list[tuple[tuple[str, str], ...] | None] = [None]
    titled = tuple((label.title(), label) for label in labels if label.title() != label)
    if titled and len({label.title() for label in labels}) == len(labels):
        variants.append(titled)
    if proposed:
        variants.append(tuple((word, label) for label, word in proposed.items() if word != label))
    return variants


def neighbour_candidates(spec: TaskSpec, incumbent: Settings, base: Settings, models: list[str],
                         instructions: list[str], proposed_words: dict[str, str] | None) -> list[Candidate]:
    """Stage 2: the incumbent and each one-setting change of it, in the order the budget cuts them from the end:
    the other models (asked for by name), the instruction rewrites, verbalizers, calibration, shot order."""
    settings = [incumbent]
    settings += [replace(incumbent, model=m) for m in models if m != incumbent.model]
    settings += [replace(incumbent, instruction=i) for i in range(len(instructions)) if i != incumbent.instruction]
    if spec.kind_strategy.labelled:
        settings += [replace(incumbent, verbalizer=v) for v in verbalizers(spec, proposed_words)
                     if v != incumbent.verbalizer]
        settings.append(replace(incumbent, calibrate=None if incumbent.calibrate else CONTENT_FREE))
    if incumbent.k > 1:
        settings.append(replace(incumbent, order="reverse" if incumbent.order == "default" else "default"))
    if incumbent.k > 0 and spec.messages is not None:
        settings.append(replace(incumbent, shots_as="turns" if incumbent.shots_as == "block" else "block"))
    return distinct([make(spec, s, base, instructions) for s in settings])


def combined(incumbent: Settings, improvements: list[Settings]) -> Settings:
    """The incumbent with the changes of its improving neighbours (best first): per setting, the best one's."""
    changes: dict[str, Any] = {}
    for better in improvements:
        for name in Settings.__dataclass_fields__:
            if getattr(better, name) != getattr(incumbent, name):
                changes.setdefault(name, getattr(better, name))
    return replace(incumbent, **changes)
