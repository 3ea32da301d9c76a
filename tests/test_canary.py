"""A canary in the gateway: the real gateway through the official openai client, two OpenAI stubs on 127.0.0.1
(incumbent and candidate); a failing candidate is a stub killed after the gateway started."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest
import sqlalchemy as sa
import yaml

from llmbus.errors import SpecError
from llmbus.serve.canary import ArmFigures, CanaryGuard, arm_for, decide
from llmbus.serve.gateway import load_serve_config
from llmbus.store import Store
from llmbus.store.schema import canary_decisions
from openai_stub import StubServer
from test_serve import logged, running_gateway

STEPS = [0.1, 0.25, 0.5, 1.0]


def write_canary_configs(tmp_path: Path, incumbent: str, candidate: str, canary: dict | None = None) -> Path:
    """llmbus.yaml with both backends; serve.yaml serving `chat` by the incumbent, with the candidate as canary."""
    models = {ref: {"base_url": url, "model": "stub-model", "timeout_s": 2.0, "max_retries": 0}
              for ref, url in (("openai:incumbent", incumbent), ("openai:candidate", candidate))}
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": models}))
    serve = {"models": {"chat": {"model": "openai:incumbent"}},
             "canary": {"chat": {"candidate": "openai:candidate", "steps": STEPS, "window": 20,
                                 # two identical stubs at ~45 ms on a shared test machine: a latency spike in a
                                 # 20-call window is noise (the latency guard is tested on figures below)
                                 "guard": {"max_p95_latency_ratio": 3.0}, **(canary or {})}}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve))
    return path


def ask(client: openai.OpenAI, text: str) -> str:
    """One request; the backend that answered it."""
    reply = client.completions.create(model="chat", prompt=text, max_tokens=2)
    return reply.model_extra["llmbus"]["backend"]


def decisions(db: Path) -> list[dict]:
    with Store(str(db)).engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(canary_decisions).order_by(canary_decisions.c.id)).mappings()]


def metrics_text(url: str) -> str:
    return httpx.get(url.removesuffix("/v1") + "/metrics").text


def test_a_good_candidate_is_promoted_step_by_step_and_keeps_its_place_after_a_restart(tmp_path: Path):
    with StubServer() as incumbent, StubServer() as candidate:
        config = write_canary_configs(tmp_path, incumbent.base_url, candidate.base_url)
        db = tmp_path / "gw.db"
        arms_by_share: dict[float, Counter] = {}
        with running_gateway(config, db) as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            state = gateway.canaries.states["chat"]
            i = 0
            while state.status == "running" and i < 1500:
                share = state.share
                backend = ask(client, f"message number {i}")
                arms_by_share.setdefault(share, Counter())[backend] += 1
                i += 1
            assert state.status == "promoted" and state.share == 1.0
            # Promoted: the candidate is the route's model, every new request goes to it.
            before = incumbent.requests
            assert {ask(client, f"after promotion {j}") for j in range(20)} == {"openai:candidate"}
            streamed = client.completions.create(model="chat", prompt="streamed after promotion", stream=True)
            assert "".join(chunk.choices[0].text for chunk in streamed) == "ham"
            assert incumbent.requests == before
            text = metrics_text(url)
            rows = [c for c in logged(gateway).iter_calls(gateway.run_ids["chat"])]
        assert sorted(arms_by_share) == [0.1, 0.25, 0.5]
        for share, arms in arms_by_share.items():
            # each window closed once both arms had their 20 calls
            assert min(arms.values()) >= 20 and max(arms.values()) > 20
            observed = arms["openai:candidate"] / sum(arms.values())
            assert observed == pytest.approx(share, abs=0.12), (share, arms)
        # Every call is an ordinary gateway row with its arm, and the candidate really got the canary's calls.
        canary_calls = sum(arms["openai:candidate"] for arms in arms_by_share.values()) + 21
        assert Counter(r["meta"]["arm"] for r in rows) == {"canary": canary_calls, "incumbent": i + 21 - canary_calls}
        assert rows[-1]["meta"]["ttft_s"] is not None  # the streamed request, logged on the canary arm
        assert all(r["model"] == ("openai:candidate" if r["meta"]["arm"] == "canary" else "openai:incumbent")
                   for r in rows)
        assert candidate.requests == canary_calls
        made = decisions(db)
        assert [(d["decision"], d["share_before"], d["share"]) for d in made] == [
            ("promote", 0.1, 0.25), ("promote", 0.25, 0.5), ("promote", 0.5, 1.0)]
        figures = json.loads(made[0]["figures_json"])
        assert figures["canary"]["calls"] == arms_by_share[0.1]["openai:candidate"] and figures["canary"]["errors"] == 0
        assert figures["incumbent"]["calls"] >= 20 and "p95 latency" in made[0]["reason"]
        assert 'llmbus_canary_share{model="chat"} 1.0' in text
        assert 'llmbus_canary_decisions_total{decision="promote",model="chat"} 3.0' in text
        # A restart starts from the last decision: still promoted.
        with running_gateway(config, db) as (url, gateway):
            assert gateway.canaries.states["chat"].status == "promoted"
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            assert {ask(client, f"after the restart {j}") for j in range(10)} == {"openai:candidate"}
            assert 'llmbus_canary_decisions_total{decision="promote",model="chat"} 3.0' in metrics_text(url)


def test_a_failing_candidate_is_rolled_back_and_then_gets_no_traffic_even_after_a_restart(tmp_path: Path):
    with StubServer() as incumbent, StubServer() as candidate:
        config = write_canary_configs(tmp_path, incumbent.base_url, candidate.base_url, {"window": 10, "share": 0.5})
        db = tmp_path / "gw.db"
        with running_gateway(config, db) as (url, gateway):
            candidate.kill()  # started fine, then died: every candidate call fails from now on
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            state = gateway.canaries.states["chat"]
            sent = []
            while state.status == "running" and len(sent) < 200:
                sent.append(f"request {len(sent)}")
                # the canary arm falls back to the incumbent: the caller is answered either way
                assert ask(client, sent[-1]) == "openai:incumbent"
            assert state.status == "rolled_back" and state.share == 0.0
            canary_inputs = [t for t in sent if arm_for(t, 0.5) == "canary"]
            assert canary_inputs  # there were canary requests, and they failed over
            after = len(list(logged(gateway).iter_calls(gateway.run_ids["chat"])))
            for j in range(30):
                ask(client, f"after the rollback {j}")
            rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))
            text = metrics_text(url)
        assert {r["meta"]["arm"] for r in rows[after:]} == {"incumbent"}
        assert {r["model"] for r in rows[after:]} == {"openai:incumbent"}
        canary_rows = [r for r in rows[:after] if r["meta"]["arm"] == "canary"]
        assert {r["meta"]["route"] for r in canary_rows} == {"fallback"}
        made = decisions(db)
        assert json.loads(made[0]["figures_json"])["canary"] == {
            "calls": len(canary_rows), "errors": len(canary_rows), "error_rate": 1.0,
            "p95_s": pytest.approx(json.loads(made[0]["figures_json"])["canary"]["p95_s"]), "judged": 0,
            "judge_pass_rate": None}
        assert len(canary_rows) >= 10
        assert [(d["decision"], d["share_before"], d["share"]) for d in made] == [("rollback", 0.5, 0.0)]
        assert "error rate 1.000 vs 0.000" in made[0]["reason"]
        assert 'llmbus_canary_share{model="chat"} 0.0' in text
        assert 'llmbus_canary_decisions_total{decision="rollback",model="chat"} 1.0' in text
        with running_gateway(config, db) as (url, gateway):
            assert gateway.canaries.states["chat"].status == "rolled_back"
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            calls_before = len(list(logged(gateway).iter_calls(gateway.run_ids["chat"])))
            for text_in in canary_inputs[:5]:  # inputs the canary arm took before the rollback
                assert ask(client, text_in + " again") == "openai:incumbent"
            rows = list(logged(gateway).iter_calls(gateway.run_ids["chat"]))[calls_before:]
        assert {r["meta"]["arm"] for r in rows} == {"incumbent"}


@pytest.mark.parametrize(("canary", "message"), [
    ({"chat": {"candidate": "openai:candidate", "steps": [0.5, 0.25, 1.0]}}, r"canary\.chat\.steps: steps must rise"),
    ({"chat": {"candidate": "openai:candidate", "steps": [0.1, 0.5]}}, r"canary\.chat\.steps: steps must rise"),
    ({"chat": {"candidate": "openai:candidate", "share": 0.3}}, r"canary\.chat: share 0\.3 must be one of the steps"),
    ({"chat": {"candidate": "openai:candidate", "window": 10, "window_s": 60}}, r"canary\.chat: give window"),
    ({"chat": {"candidate": "openai:candidate", "guard": {"max_p95_latency_ratio": 0}}},
     r"canary\.chat\.guard\.max_p95_latency_ratio: Input should be greater than 0"),
    ({"chat": {"candidate": "openai:candidate", "gaurd": {}}}, r"canary\.chat\.gaurd: unknown field"),
    ({"chat": {"share": 0.1}}, r"canary\.chat\.candidate: missing required field"),
    ({"chta": {"candidate": "openai:candidate"}}, r"canary\.chta: not a served model \(models: chat\)"),
    ({"chat": {"candidate": "openai:incumbent"}}, r"canary\.chat\.candidate: openai:incumbent already serves chat"),
])
def test_a_bad_canary_config_is_one_error_line_naming_serve_yaml_and_the_field(tmp_path: Path, canary: dict,
                                                                            message: str):
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:incumbent"}}, "canary": canary}))
    with pytest.raises(SpecError) as caught:
        load_serve_config(path)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{path}:")
    assert re.search(message, text), text


def figures(calls: int, errors: int, p95_s: float, judge: float | None = None) -> ArmFigures:
    return ArmFigures(calls, errors, errors / calls, p95_s, calls if judge is not None else 0, judge)


def test_the_guard_holds_on_too_few_calls_and_rolls_back_on_latency_or_the_judge():
    guard = CanaryGuard(min_judge_pass_rate=0.8)
    assert decide(guard, figures(3, 0, 0.1), figures(40, 0, 0.1))[0] == "hold"
    assert decide(guard, figures(20, 0, 0.1), figures(40, 0, 0.1))[0] == "promote"
    # within the floor: 10 ms vs 30 ms is timer noise, not a 3x regression
    assert decide(guard, figures(20, 0, 0.03), figures(40, 0, 0.01))[0] == "promote"
    slow = decide(guard, figures(20, 0, 0.4), figures(40, 0, 0.2))
    assert slow[0] == "rollback" and "2.00x, at most 1.5x" in slow[1]
    judged = decide(guard, figures(20, 0, 0.1, judge=0.6), figures(40, 0, 0.1, judge=0.9))
    assert judged[0] == "rollback" and "judge pass rate 0.600" in judged[1]
    assert decide(guard, figures(20, 0, 0.1, judge=0.85), figures(40, 0, 0.1, judge=0.9))[0] == "promote"
    # one error in 20 against none: +0.05 is more than the 0.02 allowed
    assert decide(guard, figures(20, 1, 0.1), figures(40, 0, 0.1))[0] == "rollback"


def test_a_window_in_seconds_with_too_few_calls_is_held_at_the_same_share(tmp_path: Path):
    with StubServer() as incumbent, StubServer() as candidate:
        config = write_canary_configs(tmp_path, incumbent.base_url, candidate.base_url,
                                      {"window": None, "window_s": 0.5, "share": 0.5})
        db = tmp_path / "gw.db"
        with running_gateway(config, db) as (url, gateway):
            client = openai.OpenAI(base_url=url, api_key="-", max_retries=0)
            for j in range(3):
                ask(client, f"early {j}")
            time.sleep(0.6)
            ask(client, "the call that closes the window")
            state = gateway.canaries.states["chat"]
            assert (state.status, state.share, state.window) == ("running", 0.5, [])
    made = decisions(db)
    # On a loaded machine the three early calls may already span a window: every window holds, none moves.
    assert made and {(d["decision"], d["share_before"], d["share"]) for d in made} == {("hold", 0.5, 0.5)}
    assert all("need 5 each" in d["reason"] for d in made)
