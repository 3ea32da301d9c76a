"""Instruction rewrites and label words from a proposer model (`--proposer`), asked through an ordinary run.

Like DSPy's grounded proposer, each request shows the task, its labels, a few solved pool examples and the
current instruction, plus one tip (be brief, define each label, name the usual mistakes…), so the rewrites
differ from each other at temperature 0 and are cached like any answer. The requests are the items of a
small generate task run by `run_task`, so every proposer call is a row in the call log with its cost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from llmbus.experiments.candidates import spec_instruction
from llmbus.providers import Provider
from llmbus.run.engine import run_task
from llmbus.run.options import RunHooks, RunOptions
from llmbus.store import Store
from llmbus.task.data import Item, Split
from llmbus.task.fewshot import balanced_pick
from llmbus.task.spec import DataSpec, Params, TaskSpec

TIPS = (
    "Keep it to one or two plain sentences.",
    "Say what each label means and the typical signs of it.",
    "Name the mistakes a careless reader would make and how to avoid them.",
)
MAX_INSTRUCTION_CHARS = 1200
_FENCE = re.compile(r"^```\w*\n?|\n?```$")


@dataclass(frozen=True)
class Proposals:
    """What the proposer gave: instruction rewrites (usable ones only) and label words (or None)."""

    instructions: list[str]
    words: dict[str, str] | None
    run_id: str | None


def proposer_spec(spec: TaskSpec) -> TaskSpec:
    """The small generate task whose items are the proposer's requests."""
    return TaskSpec(name=f"{spec.name}:proposer", kind="generate", prompt="{{ item.request }}",
                    data=DataSpec(path=str(spec.source or spec.name), input="request", expected="expected"),
                    params=Params(max_tokens=300, temperature=0.0))


def requests(spec: TaskSpec, instruction: str, pool: list[Item], n_instructions: int) -> list[Item]:
    """The proposer's requests: one rewrite per tip, and (classify) one request for other label words."""
    shown = spec.output.shown_labels()
    examples = "\n".join(f"- {_one_line(example.text(spec.data.input))!r} → {spec.output.shown(str(example.expected))}"
                         for example in balanced_pick(pool, 6, 0))
    context = (f"Task: {spec.description or spec.name}\n"
               + (f"Labels: {', '.join(shown)}\n" if shown else "")
               + f"Examples of inputs and their correct answers:\n{examples}\n")
    items = []
    for i, tip in enumerate(TIPS[:n_instructions], start=1):
        text = (f"You improve the instruction at the top of a prompt for a small language model.\n{context}"
                f"Current instruction:\n<<<\n{instruction}\n>>>\nTip: {tip}\n"
                "Write one improved instruction. Reply with the instruction only.\nInstruction:")
        items.append(Item(id=f"instruction-{i}", fields={"request": text, "expected": ""}, expected=""))
    if shown:
        text = (f"{context}For each label, give one other common word a reader would use for it. Reply one line "
                "per label as `label: word`, nothing else.\nWords:")
        items.append(Item(id="words", fields={"request": text, "expected": ""}, expected=""))
    return items


def propose(spec: TaskSpec, model: str, provider: Provider | None, store: Store, pool: list[Item], tag: str,
            n_instructions: int, on_stage: Callable[[str], None] | None = None) -> Proposals:
    """Ask the proposer model for instruction rewrites and label words (one run, tagged)."""
    instruction = spec_instruction(spec)
    asks = requests(spec, instruction, pool, n_instructions if instruction else 0)
    if not asks:
        return Proposals([], None, None)
    run_id = run_task(proposer_spec(spec), model, store, RunOptions(tag=tag), provider=provider,
                      hooks=RunHooks(on_stage=on_stage), subset=Split(pool=[], eval=asks))
    instructions: list[str] = []
    words = None
    order = {ask.id: i for i, ask in enumerate(asks)}  # the tips' order, not the order answers came back in
    for call in sorted(store.iter_calls(run_id), key=lambda c: order[c["item_id"]]):
        text = str(call["raw_output"] or "") if call["error_kind"] is None else ""
        if call["item_id"] == "words":
            words = parse_words(text, spec.output.labels or [])
        elif (cleaned := clean_instruction(text)) and cleaned != instruction and cleaned not in instructions:
            instructions.append(cleaned)
    return Proposals(instructions, words, run_id)


def clean_instruction(text: str) -> str | None:
    """A proposed instruction made usable: fences, quotes and an `Instruction:` prefix dropped; None when it is
    empty, too long, or holds template syntax (it goes into a Jinja prompt as static text)."""
    text = _FENCE.sub("", text.strip()).strip()
    text = re.sub(r"^(improved )?instruction:\s*", "", text, flags=re.I).strip().strip('"“”').strip()
    text = text.replace("<<<", "").replace(">>>", "").strip()
    if not text or len(text) > MAX_INSTRUCTION_CHARS or re.search(r"\{[{%#]|[}%#]\}", text):
        return None
    return text


def parse_words(text: str, labels: list[str]) -> dict[str, str] | None:
    """`label: word` lines → {label: word} when every label got its own new word (else None)."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, word = line.strip().lstrip("-* ").partition(":")
        word = word.strip().strip("`'\".,").strip()
        label = label.strip().strip("`'\"")
        if sep and label in labels and word and len(word) <= 40 and not re.search(r"[{}%#:]", word):
            found.setdefault(label, word)
    lowered = {w.lower() for w in found.values()}
    if len(found) != len(labels) or len(lowered) != len(labels) or lowered & {label.lower() for label in labels}:
        return None  # every label needs its own word, and none may be another label's name
    return found


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
