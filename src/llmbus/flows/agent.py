"""An agent step, only where chosen: a tool-calling loop over allow-listed Python tools with hard budgets.

The model writes one line per turn after "Next:" — `call TOOL {json args}` or `answer TEXT` — completion
style, so base models can follow it from the shown format. Each model turn and each tool call is its own
durable flow step (replayed on resume, never paid twice). A tool not on the list is refused and the refusal
logged; budgets on turns, tokens, wall time and cost stop the loop with a clear status.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from llmbus.errors import ToolError
from llmbus.flows.steps import StepResult, Steps
from llmbus.flows.tools import Tool, call_tool

TURN = re.compile(r"^\s*(call|answer)\b\s*(.*)$", re.S | re.I)
CALL = re.compile(r"^([A-Za-z_]\w*)\s*(\{.*\})?\s*$", re.S)
# A worked example: base models follow a format they have seen far better than one they are told.
DEMO = """Example (with other tools):
Goal: How warm is it in Oslo?
Next: call weather {"city": "Oslo"}
Observation: 12 degrees, cloudy
Next: answer It is 12 degrees and cloudy in Oslo."""


@dataclass(frozen=True)
class Budget:
    """Hard limits for one agent step."""

    max_turns: int = 6
    max_tokens: int = 6000
    max_wall_s: float = 120.0
    max_cost_usd: float = 0.01
    tool_timeout_s: float = 10.0
    max_observation_chars: int = 600


@dataclass
class AgentResult:
    """What the loop ended with: answered | budget_exhausted, and how much it used."""

    answer: str | None
    status: str
    stop_reason: str
    turns: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    transcript: list[dict[str, Any]] = field(default_factory=list)


def agent_prompt(goal: str, tools: list[Tool], transcript: list[dict[str, Any]]) -> str:
    """The completion-style prompt: tools, the format by example, the goal, the turns so far."""
    lines = ["You reach a goal by calling tools. Write one line after Next: either",
             'call TOOL {"arg": "value"}   or   answer YOUR FINAL ANSWER', "", DEMO, "", "Tools:"]
    lines += [f"- {t.signature}" for t in tools]
    lines += ["", f"Goal: {goal.strip()}"]
    for turn in transcript:
        lines.append(f"Next: {turn['said']}")
        if "observation" in turn:
            lines.append(f"Observation: {turn['observation']}")
    lines.append("Next:")
    return "\n".join(lines)


def run_agent(ctx: Steps, key: str, goal: str, tools: list[Tool], budget: Budget, model: str) -> AgentResult:
    """Loop model turn → tool call until an answer or a budget runs out; every turn and call is a step."""
    allowed = {t.name: t for t in tools}
    result = AgentResult(answer=None, status="budget_exhausted", stop_reason="")
    started = time.monotonic()
    while True:
        result.wall_s = time.monotonic() - started
        reason = _over_budget(result, budget)
        if reason:
            result.stop_reason = reason
            return result
        text = ctx.llm(f"{key}/turn{result.turns}", agent_prompt(goal, tools, result.transcript), model=model,
                       max_tokens=80, stop=("\nObservation", "\nNext:", "\nGoal:")).text
        said = next((line.strip() for line in text.splitlines() if line.strip()), "")
        step = ctx.log.get_step(ctx.run_id, f"{key}/turn{result.turns}") or {}
        result.tokens += int(step.get("tokens_in", 0)) + int(step.get("tokens_out", 0))
        result.cost_usd += float(step.get("cost_usd", 0.0))
        turn: dict[str, Any] = {"said": said}
        result.transcript.append(turn)
        result.turns += 1
        parsed = TURN.match(said)
        if parsed and parsed.group(1).lower() == "answer":
            result.answer, result.status, result.stop_reason = parsed.group(2).strip(), "answered", "answered"
            result.wall_s = time.monotonic() - started
            return result
        turn["observation"] = _act(ctx, f"{key}/call{result.turns - 1}", parsed.group(2) if parsed else said,
                                   allowed, budget)[: budget.max_observation_chars]


def _over_budget(result: AgentResult, budget: Budget) -> str:
    if result.turns >= budget.max_turns:
        return f"turn budget of {budget.max_turns} spent"
    if result.tokens >= budget.max_tokens:
        return f"token budget of {budget.max_tokens} spent ({result.tokens})"
    if result.wall_s >= budget.max_wall_s:
        return f"wall-time budget of {budget.max_wall_s:g}s spent"
    if result.cost_usd >= budget.max_cost_usd:
        return f"cost budget of ${budget.max_cost_usd:g} spent (${result.cost_usd:.6f})"
    return ""


def _act(ctx: Steps, key: str, call: str, allowed: dict[str, Tool], budget: Budget) -> str:
    """Run one requested tool call as a logged step; refusals and failures become the observation."""
    def body() -> StepResult:
        match = CALL.match(call.strip())
        if match is None:
            return StepResult({"error": f"could not read a tool call from {call.strip()[:80]!r}"})
        name, raw_args = match.group(1), match.group(2) or "{}"
        if name not in allowed:
            return StepResult({"refused": name, "error": f"tool {name!r} is not allowed; allowed tools: "
                                                          f"{', '.join(sorted(allowed))}"}, {"refused": True})
        try:
            args = json.loads(raw_args)
        except json.JSONDecodeError as exc:
            return StepResult({"tool": name, "error": f"arguments are not JSON: {exc.msg}"})
        if not isinstance(args, dict):
            return StepResult({"tool": name, "error": "arguments must be a JSON object"})
        try:
            return StepResult({"tool": name, "args": args, "result": call_tool(allowed[name], args,
                                                                               budget.tool_timeout_s)})
        except ToolError as exc:
            return StepResult({"tool": name, "args": args, "error": str(exc)}, {"error_kind": exc.kind})

    out = ctx.step(key, "tool", body, {"call": call})
    if "error" in out:
        return f"error: {out['error']}"
    value = out["result"]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
