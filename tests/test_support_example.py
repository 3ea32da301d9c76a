"""The support example end to end on the embedded model: retrieval, examples, answer, guardrail, and a
review decision that resumes the run and grows the example pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmbus.flows.engine import FlowSettings, load_flow, resume, run_many
from llmbus.flows.icl import ExamplePool
from llmbus.flows.log import FlowLog
from llmbus.flows.review import ReviewQueue
from llmbus.store import Store

pytestmark = pytest.mark.slow
FLOW = Path(__file__).resolve().parents[1] / "examples" / "support" / "flow.py"


def test_support_flow_answers_from_the_corpus(store: Store, monkeypatch):
    monkeypatch.setenv("LLMBUS_THREADS", "1")
    support = load_flow(FLOW)
    questions = [{"question": "My internet is not working, what can I do?"},
                 {"question": "Who is regarded as the father of computers?"}]
    outcomes = run_many(store, support, questions, FlowSettings())
    log = FlowLog(store)
    for outcome in outcomes:
        steps = {s["key"]: s for s in log.steps(outcome.run_id)}
        assert steps["retrieve"]["output"] and steps["examples"]["output"]
        assert steps["answer0"]["cost_usd"] > 0 and steps["answer0"]["tokens_in"] > 0
        assert "Sources:" in steps["answer0"]["detail"]["prompt"]
        assert "passed" in steps["guard/check0"]["output"]
        assert outcome.status in {"done", "waiting_review"}, outcome.error
    first = {s["key"]: s for s in log.steps(outcomes[0].run_id)}
    assert first["retrieve"]["output"][0]["doc"].startswith("tech_support#")

    queue = ReviewQueue(store)
    escalated = queue.items()
    for item in escalated:  # decide whatever the guardrail escalated
        queue.decide(item["id"], "tester", "edit", answer="Restart your router and check the cables.")
        assert resume(store, item["flow_run_id"]).status == "done"
    for outcome in outcomes:
        run = log.get_run(outcome.run_id)
        assert run["status"] == "done" and run["output"]["answer"], run
        assert run["output"]["status"] in {"delivered", "edited"}
    assert ExamplePool(store, "support").size() == 4 + len(escalated)  # seeds + reviewed answers
