"""Chat turns as plain values: OpenAI-style messages (`{"role", "content", …}`) and their one-text forms.

A conversation reaches a model in one of two shapes: as turns (chat endpoints, and local models whose GGUF
carries a chat template) or as one text (completion endpoints and base models). `transcript` is that text when
no chat template is at hand: `Role: content` lines ending with `Assistant:`. A lone user turn is its own text,
so a `prompt:` spec sends exactly what it always sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

Message = dict[str, Any]
ROLES = ("system", "developer", "user", "assistant", "tool")


def user_turn(text: str) -> Message:
    """The one-turn conversation a plain prompt stands for."""
    return {"role": "user", "content": text}


def content_text(content: Any) -> str:
    """A message's content as text: a string as is, content parts joined by their `text` (images dropped)."""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "" if content is None else str(content)


def is_single_user_turn(messages: Iterable[Mapping[str, Any]]) -> bool:
    """Whether the conversation is one user turn with nothing but text content (a plain prompt)."""
    turns = list(messages)
    return (len(turns) == 1 and turns[0].get("role") == "user" and isinstance(turns[0].get("content"), str)
            and set(turns[0]) <= {"role", "content"})


def transcript(messages: Iterable[Mapping[str, Any]]) -> str:
    """The conversation as one text for models without a chat template: a lone user turn as itself, else
    `Role: content` lines (tool calls as `Assistant: [calls name(args)]`) ending with `Assistant:`."""
    turns = list(messages)
    if is_single_user_turn(turns):
        return str(turns[0]["content"])
    lines = [f"{str(turn.get('role', 'user')).capitalize()}: {_turn_text(turn)}" for turn in turns]
    return "\n".join(lines) + "\nAssistant:"


def _turn_text(turn: Mapping[str, Any]) -> str:
    text = content_text(turn.get("content"))
    calls = turn.get("tool_calls") or []
    shown = [f"[calls {call.get('function', {}).get('name', '?')}({call.get('function', {}).get('arguments', '')})]"
             for call in calls if isinstance(call, Mapping)]
    return " ".join([text, *shown]).strip() if shown else text


def last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text of the last user turn (a served model's raw input), or of the last turn when none is a user's."""
    turns = list(messages)
    for turn in reversed(turns):
        if turn.get("role") == "user":
            return content_text(turn.get("content"))
    return content_text(turns[-1].get("content")) if turns else ""


def context_of(messages: Iterable[Mapping[str, Any]]) -> str:
    """Everything before the last user turn, as canonical JSON: two requests with the same last user text
    are the same question only when this matches too (the semantic cache's scope)."""
    turns = list(messages)
    last = max((i for i, turn in enumerate(turns) if turn.get("role") == "user"), default=len(turns))
    return json.dumps(turns[:last], sort_keys=True, ensure_ascii=False)
