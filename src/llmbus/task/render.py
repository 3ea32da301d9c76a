"""Rendering a spec for one item: pure functions, so the exact prompt can be printed (`--dry-run`), tested and
logged before any call.

A `prompt:` spec renders one text, sent as one user turn. A `messages:` spec renders each turn's template; with
`fewshot.as: turns` each example becomes a user turn (the item's own turn template rendered for the example)
and an assistant turn (its answer), placed just before the item's turn, and the templates' `examples` is empty
(a block loop written for `as: block` renders nothing, so a spec switches between the two with one field).
`Rendered.text` is the conversation as one text (`task.chat.transcript`), what the call log's `prompt` column
keeps and base models read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jinja2

from llmbus.errors import SpecError
from llmbus.task.chat import Message, transcript, user_turn
from llmbus.task.spec import TaskSpec
from llmbus.task.templates import compiled


@dataclass(frozen=True)
class Rendered:
    """One item's prompt: the turns a chat model gets, and the same as one text."""

    text: str
    messages: tuple[Message, ...]

    @property
    def is_chat(self) -> bool:
        """Whether the spec wrote turns (a `prompt:` spec renders one user turn holding its text)."""
        return self.messages != (user_turn(self.text),)


def render(spec: TaskSpec, item: dict[str, Any], examples: list[dict[str, Any]]) -> Rendered:
    """The exact prompt for one item and its few-shot examples."""
    if spec.messages is None:
        text = _render_text(spec, str(spec.prompt), "prompt", item, examples)
        return Rendered(text, (user_turn(text),))
    as_turns = spec.fewshot.as_ == "turns"  # then the templates' own `examples` block stays empty
    turns = [{"role": turn.role, "content": _render_text(spec, turn.content, f"messages[{i}].content", item,
                                                         [] if as_turns else examples)}
             for i, turn in enumerate(spec.messages)]
    if as_turns:
        turns[-1:-1] = example_turns(spec, examples)
    return Rendered(transcript(turns), tuple(turns))


def render_prompt(spec: TaskSpec, item: dict[str, Any], examples: list[dict[str, Any]]) -> str:
    """The prompt for one item as one text (a `messages:` spec: its transcript)."""
    return render(spec, item, examples).text


def example_turns(spec: TaskSpec, examples: list[dict[str, Any]]) -> list[Message]:
    """Few-shot examples as alternating user/assistant turns: the item's turn template rendered for each
    example, then the example's answer."""
    assert spec.messages is not None
    where = f"messages[{len(spec.messages) - 1}].content"
    turns: list[Message] = []
    for example in examples:
        turns.append({"role": "user", "content": _render_text(spec, spec.messages[-1].content, where, example, [])})
        turns.append({"role": "assistant", "content": answer_text(example.get(spec.data.expected))})
    return turns


def answer_text(value: Any) -> str:
    """An expected answer as an assistant turn says it: text as is, structured answers as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _render_text(spec: TaskSpec, template: str, where: str, item: dict[str, Any],
                 examples: list[dict[str, Any]]) -> str:
    try:
        return compiled(template).render(item=item, examples=examples)
    except jinja2.TemplateSyntaxError as exc:
        raise SpecError(f"{spec.source}: {where} template line {exc.lineno}: {exc.message}") from None
    except jinja2.UndefinedError as exc:
        raise SpecError(f"{spec.source}: {where}: {exc.message} (fields: {', '.join(sorted(item))})") from None
