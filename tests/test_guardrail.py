"""The two-tier guardrail: rules and grounding decide clear cases, the LLM (stub) only the unsure middle;
fail → regenerate with the reasons → escalate to review; every verdict on the step rows."""

from __future__ import annotations

from typing import Any

import pytest

from llmbus.flows.engine import FlowContext, FlowSettings, flow, resume, start
from llmbus.flows.guardrail import Guardrail, Rule, guarded_answer, min_sentence_similarity, unsupported_terms
from llmbus.flows.log import FlowLog
from llmbus.flows.retrieval import Source
from llmbus.flows.review import ReviewQueue
from llmbus.providers import open_provider
from llmbus.store import Store

SOURCES = [Source("net", "My internet is not working. Restart your router and check if the cables are connected "
                         "properly.", 1.0, 0),
           Source("pwd", "I forgot my password. Use the password reset option or contact your admin.", 0.5, 1)]
FAITHFUL = "Restart your router and check that the cables are connected properly."
INVENTED = "Restart your router. Routers sold after 2019 by Netgear need firmware 4.2 first."


def test_grounding_signals():
    assert unsupported_terms(FAITHFUL, SOURCES[0].text) == []
    assert {"2019", "netgear", "firmware", "4"} <= set(unsupported_terms(INVENTED, SOURCES[0].text))
    assert min_sentence_similarity(FAITHFUL, SOURCES) > 0.8
    assert min_sentence_similarity("Bananas are rich in potassium and taste sweet.", SOURCES) < 0.3


def test_tier1_decides_clear_cases_and_rules_fail_hard():
    guard = Guardrail(rules=[Rule(r"https?://", "contains a link")])
    ok = guard.tier1(FAITHFUL, SOURCES)
    assert ok.passed and ok.support == 1.0 and not guard.unsure(ok)
    assert guard.tier1("Sure. " + FAITHFUL, SOURCES).passed  # a filler sentence is not a claim
    bad = guard.tier1(INVENTED, SOURCES)
    assert not bad.passed and not guard.unsure(bad) and "2019" in bad.reasons[0]
    link = guard.tier1("Restart your router, see http://example.org", SOURCES)
    assert not link.passed and link.reasons == ["rule: contains a link"]
    assert guard.tier1("   ", SOURCES).reasons == ["rule: the answer is empty"]
    schema_guard = Guardrail(schema={"type": "object", "required": ["steps"]})
    assert any("invalid_json" in r for r in schema_guard.tier1("not json", SOURCES).reasons)


def test_tier2_runs_only_when_tier1_is_unsure(stub, stub_model):
    # The judge path (no cloze rivals); the stub's prior is the same for every input, so no calibration.
    guard = Guardrail(calibrate=False, cloze_candidates=0)
    unsure_answer = "Restart your router and check the cables, usually."  # one new word: unsure
    first = guard.tier1(unsure_answer, SOURCES)
    assert guard.unsure(first), first
    provider = open_provider(stub_model)
    calls: list[int] = []

    def lazily():
        calls.append(1)
        return provider

    try:
        assert guard.check(FAITHFUL, SOURCES, provider=lazily).tier == 1 and not calls
        verdict = guard.check(unsure_answer, SOURCES, provider=lazily)
        assert verdict.tier == 2 and verdict.passed and verdict.llm_prob > 0.5 and verdict.cost_usd > 0
        fabricated = guard.check(unsure_answer + " FABRICATED", SOURCES, provider=lazily)
        assert fabricated.tier == 2 and not fabricated.passed and "LLM judge check" in fabricated.reasons[-1]
        assert len(calls) == 2
    finally:
        provider.close()
    no_llm = Guardrail(tier2=False).check(unsure_answer, SOURCES)
    assert not no_llm.passed and "failed to be safe" in no_llm.reasons[-1]


def test_an_answer_grounded_in_a_source_about_another_question_fails():
    sources = [Source("computers#2", "Who invented computers? It's a bit ambiguous but British scientist Charles "
                                     "Babbage is regarded as the father of computers.", 1.0, 0),
               Source("history#3", "who invented the lightbulb thomas edison.", 0.5, 1)]
    guard = Guardrail()
    wrong = guard.tier1("Thomas Edison", sources, "Who invented computers?")
    assert not wrong.passed and not guard.unsure(wrong) and "another question (history#3" in wrong.reasons[-1]
    assert guard.tier1("Charles Babbage is regarded as the father of computers.", sources,
                       "Who invented computers?").passed
    assert guard.tier1("Thomas Edison", sources).passed  # without the question there is nothing to compare


DRAFTS = [INVENTED, INVENTED + " Also 3 more.", FAITHFUL]


@flow("guarded")
def guarded_flow(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
    def draft(attempt: int, reasons: list[str]) -> str:
        return str(ctx.tool(f"draft{attempt}", pick, index=attempt + value["offset"], feedback="; ".join(reasons)))

    result = guarded_answer(ctx, "g", draft, Guardrail(tier2=False), SOURCES, "internet down?", max_regenerations=1)
    return {"answer": result.answer, "status": result.status, "attempts": result.attempts}


def pick(index: int, feedback: str) -> str:
    return DRAFTS[index]


def test_fail_regenerates_with_reasons_then_escalates_to_review(store: Store):
    delivered = start(store, guarded_flow, {"offset": 1})  # second draft is faithful
    assert delivered.output == {"answer": FAITHFUL, "status": "delivered", "attempts": 2}
    steps = {s["key"]: s for s in FlowLog(store).steps(delivered.run_id)}
    assert not steps["g/check0"]["output"]["passed"] and steps["g/check1"]["output"]["passed"]
    assert "not in the sources" in steps["draft1"]["input"]["args"]["feedback"]  # reasons fed to the retry

    escalated = start(store, guarded_flow, {"offset": 0}, FlowSettings())
    assert escalated.status == "waiting_review"
    [item] = ReviewQueue(store).items()
    assert item["payload"]["draft"] == DRAFTS[1] and any("not in the sources" in r for r in item["payload"]["reasons"])
    assert [s["doc"] for s in item["payload"]["sources"]] == ["net", "pwd"]
    ReviewQueue(store).decide(item["id"], "carol", "edit", answer=FAITHFUL)
    done = resume(store, escalated.run_id, guarded_flow)
    assert done.output == {"answer": FAITHFUL, "status": "edited", "attempts": 2}


@pytest.mark.slow
def test_cloze_check_on_the_embedded_model_catches_a_swapped_word(monkeypatch):
    monkeypatch.setenv("LLMBUS_THREADS", "1")
    guard = Guardrail()
    provider = open_provider("local:gemma-3-270m")
    try:
        swapped = "Restart your satellite and check if the cables are connected properly."
        verdict = guard.check(swapped, SOURCES, provider=lambda: provider)
        assert verdict.tier == 2 and not verdict.passed and verdict.llm_prob < 0.2
        assert "cloze" in verdict.reasons[-1] and verdict.cost_usd > 0
        # The same check on a word the source does say there: the copying model writes it, so it passes.
        kept = guard.tier2_check(FAITHFUL, SOURCES, provider, ["router"])
        assert kept.method == "cloze" and kept.passed and kept.prob > 0.5
    finally:
        provider.close()
