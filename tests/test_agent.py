"""The agent step against the OpenAI stub: allow-listed tools only, every call logged as a step, hard
budgets on turns, tokens, wall time and cost, hung tools killed, replay on resume."""

from __future__ import annotations

import time
from typing import Any

import pytest

from llmbus.flows.agent import AgentResult, Budget, agent_prompt
from llmbus.flows.engine import FlowContext, FlowSettings, flow, resume, start
from llmbus.flows.log import FlowLog
from llmbus.flows.tools import Tool, tool
from llmbus.store import Store


def lookup(query: str) -> str:
    """Find the support article for a query."""
    return f"article about {query}: restart the router"


def hang(seconds: int) -> str:
    """Sleeps (a tool that hangs)."""
    time.sleep(seconds)
    return "never"


TOOLS = [tool(lookup), tool(hang)]


@flow("agentic")
def agentic(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
    budget = Budget(**value.get("budget", {}))
    result = ctx.agent("agent", value["goal"], TOOLS, budget)
    return {"answer": result.answer, "status": result.status, "why": result.stop_reason, "turns": result.turns}


def steps(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in FlowLog(store).steps(run_id)}


def test_the_agent_calls_an_allowed_tool_and_answers(stub, stub_model, store: Store):
    goal = 'Fix my internet AGENT-CALL lookup {"query": "internet"}'
    outcome = start(store, agentic, {"goal": goal}, FlowSettings(model=stub_model))
    assert outcome.output == {"answer": "article about internet: restart the router", "status": "answered",
                              "why": "answered", "turns": 2}
    rows = steps(store, outcome.run_id)
    assert rows["agent/call0"]["kind"] == "tool"
    assert rows["agent/call0"]["output"]["args"] == {"query": "internet"}
    assert rows["agent/turn0"]["cost_usd"] > 0 and rows["agent"]["status"] == "done"
    assert "lookup(query): Find the support article" in rows["agent/turn0"]["detail"]["prompt"]
    calls = sum(stub.state.attempts.values())
    assert resume(store, outcome.run_id, agentic).output == outcome.output
    assert sum(stub.state.attempts.values()) == calls


def test_tools_not_on_the_list_are_refused_and_logged(stub, stub_model, store: Store):
    outcome = start(store, agentic, {"goal": "Clean up AGENT-CALL delete_all {}"}, FlowSettings(model=stub_model))
    refused = steps(store, outcome.run_id)["agent/call0"]
    assert refused["output"]["refused"] == "delete_all" and refused["detail"] == {"refused": True}
    assert "not allowed; allowed tools: hang, lookup" in outcome.output["answer"]


def test_turn_budget_stops_a_looping_agent(stub, stub_model, store: Store):
    goal = 'AGENT-LOOP AGENT-CALL lookup {"query": "again"}'
    outcome = start(store, agentic, {"goal": goal, "budget": {"max_turns": 3}}, FlowSettings(model=stub_model))
    assert outcome.output["status"] == "budget_exhausted" and outcome.output["turns"] == 3
    assert "turn budget of 3 spent" in outcome.output["why"]
    assert sum(k.startswith("agent/call") for k in steps(store, outcome.run_id)) == 3


def test_token_and_cost_budgets(stub, stub_model, store: Store):
    goal = 'AGENT-LOOP AGENT-CALL lookup {"query": "again"}'
    by_tokens = start(store, agentic, {"goal": goal, "budget": {"max_tokens": 50}}, FlowSettings(model=stub_model))
    assert "token budget of 50 spent" in by_tokens.output["why"] and by_tokens.output["turns"] == 1
    by_cost = start(store, agentic, {"goal": goal, "budget": {"max_cost_usd": 1e-9}}, FlowSettings(model=stub_model))
    assert "cost budget" in by_cost.output["why"] and by_cost.output["turns"] == 1


def test_a_hung_tool_is_killed_and_the_agent_goes_on(stub, stub_model, store: Store):
    tick = time.monotonic()
    outcome = start(store, agentic, {"goal": 'AGENT-CALL hang {"seconds": 60}', "budget": {"tool_timeout_s": 0.5}},
                    FlowSettings(model=stub_model))
    assert time.monotonic() - tick < 15
    call = steps(store, outcome.run_id)["agent/call0"]
    assert "did not finish within 0.5s" in call["output"]["error"] and call["detail"]["error_kind"] == "timeout"
    assert outcome.output["status"] == "answered" and "did not finish" in outcome.output["answer"]


def test_wall_time_budget(stub, stub_model, store: Store):
    goal = 'AGENT-LOOP AGENT-CALL hang {"seconds": 60}'
    outcome = start(store, agentic, {"goal": goal, "budget": {"max_wall_s": 1.0, "tool_timeout_s": 0.6}},
                    FlowSettings(model=stub_model))
    # each turn takes at least the 0.6 s tool timeout: the 1 s budget ends the loop after the second turn, or after
    # the first when a loaded machine makes that turn alone take the second
    assert "wall-time budget of 1s spent" in outcome.output["why"] and outcome.output["turns"] in (1, 2)


def test_prompt_shows_tools_and_the_turns_so_far():
    text = agent_prompt("find it", [Tool("lookup", lookup)], [{"said": 'call lookup {"query": "x"}',
                                                                 "observation": "found"}])
    assert text.endswith('Goal: find it\nNext: call lookup {"query": "x"}\nObservation: found\nNext:')
    assert "Example (with other tools)" in text
    assert "- lookup(query): Find the support article for a query." in text
    assert AgentResult(None, "answered", "answered").turns == 0


def order_status(order_id: str) -> str:
    """Shipping status of an order."""
    return {"A17": "shipped on Monday, arrives Thursday"}.get(order_id, "unknown order")


@pytest.mark.slow
def test_the_embedded_base_model_follows_the_tool_format(store: Store, monkeypatch):
    monkeypatch.setenv("LLMBUS_THREADS", "1")

    @flow("orders")
    def orders(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
        result = ctx.agent("agent", value["goal"], [tool(order_status)], Budget(max_turns=3))
        return {"answer": result.answer, "status": result.status}

    outcome = start(store, orders, {"goal": "Where is my order A17?"})
    call = steps(store, outcome.run_id)["agent/call0"]["output"]
    assert call["tool"] == "order_status" and call["args"] == {"order_id": "A17"}
    assert outcome.output["status"] == "answered" and "Thursday" in outcome.output["answer"]
