"""The closed production loop in one piece, on real SMS through the real gateway with the official openai client:
traffic → `monitor` with a trained head judge → human labels for the queued items → `quality` with a CI →
`distill --from-traffic` → `accept` → a canary at 10% promoted to all traffic; and a deliberately bad candidate
refused by `accept` and rolled back by the canary. The served model is the OpenAI stub on 127.0.0.1 (it answers
spam exactly when the SMS says "spam"), so the loop runs in CI time."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import openai
import pytest
import sqlalchemy as sa
import yaml

from conftest import write_spec
from llmbus.quality import label
from llmbus.quality.monitor import MonitorSettings, monitor_once, quality_report
from llmbus.store import Store
from llmbus.store.schema import canary_decisions, label_items
from openai_stub import StubServer
from test_loop import llmbus
from test_monitor import SMS_JUDGE, _head_judge, _monitor_rows, _send, _serve_tiny, _traffic
from test_serve import running_gateway

pytestmark = pytest.mark.slow


def _canary(config: Path, candidate: str, window: int) -> None:
    """Add a canary for `sms` to serve.yaml (steps 0.1 → 0.5 → 1.0)."""
    serve = yaml.safe_load(config.read_text())
    serve["canary"] = {"sms": {"candidate": candidate, "steps": [0.1, 0.5, 1.0], "window": window,
                               # a shared test machine: a latency spike in a small window is noise here
                               "guard": {"max_p95_latency_ratio": 5.0}}}
    config.write_text(yaml.safe_dump(serve))


def _until_decided(url: str, gateway: object, prefix: str, limit: int = 600) -> str:
    """Send distinct SMS-like requests until the canary leaves `running`; its final status."""
    state = gateway.canaries.states["sms"]  # type: ignore[attr-defined]
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    for i in range(limit):
        if state.status != "running":
            break
        spam = " spam" if i % 3 == 0 else ""
        client.chat.completions.create(model="sms", messages=[{"role": "user", "content": f"{prefix} {i}{spam}"}])
    return str(state.status)


def test_traffic_to_quality_to_student_to_acceptance_to_a_promoted_canary(store: Store, tmp_path: Path):
    head = _head_judge(store, tmp_path)
    db = Path(store.url.removeprefix("sqlite:///"))
    texts, gold = _traffic(140, 300)
    with StubServer() as backend, StubServer() as doomed:
        config = _serve_tiny(tmp_path, backend.base_url)
        task = Path(yaml.safe_load(config.read_text())["models"]["sms"]["task"])
        with running_gateway(config, db) as (url, _):
            answered = dict(zip(texts[:100], _send(url, texts[:100]), strict=True))

        # Monitor: a sample judged by the trained judge, the answers worth a label queued for humans.
        settings = MonitorSettings(judge_path=str(SMS_JUDGE), judge_model=head, sample=0.6, uncertain_share=0.5,
                                   label_n=30)
        first = monitor_once(store, "sms", settings)
        assert first.considered == 100 and first.judged == first.sampled > 30 and first.queued > 10
        with store.engine.connect() as conn:
            queued = dict(conn.execute(sa.select(label_items.c.call_id, label_items.c.item_id).where(
                label_items.c.project == "monitor-sms")).all())
        rows = {r["call_id"]: r for r in _monitor_rows(store)}
        truth = {cid: answered[r["input"]] == gold[r["input"]] for cid, r in rows.items()}
        path = tmp_path / "human.jsonl"
        path.write_text("".join(json.dumps({"item_id": item, "label": "pass" if truth[cid] else "fail"}) + "\n"
                                for cid, item in queued.items()))
        assert label.import_labels(store, "monitor-sms", path, "alice") == len(queued)

        # Quality: judge-corrected, with a CI that holds the true pass rate of the served answers.
        [window] = quality_report(store, "sms")
        true_rate = float(np.mean(list(truth.values())))
        assert window.ppi is not None and window.ppi.lo <= true_rate <= window.ppi.hi, (window.ppi, true_rate)

        # Distill a student from the traffic; replay fresh traffic it never saw through it, and a blind prompt.
        made = llmbus("distill", str(task), "--from-traffic", "sms", "--epochs", "1", "--out", str(tmp_path / "out"),
                      "--db", str(db))
        assert made.returncode == 0, made.stderr + made.stdout
        student = json.loads((tmp_path / "out" / "distill.json").read_text())["student"]
        time.sleep(0.01)
        fresh_from = datetime.now(UTC).isoformat()
        with running_gateway(config, db) as (url, _):
            _send(url, texts[100:])
        # 40 replayed items: one disagreement alone puts the lower bound near -0.075, so the gate allows 0.1 here.
        accepted = llmbus("accept", student, "--against", "sms", "--since", fresh_from, "--max-drop", "0.1", "--db",
                          str(db), "--json")
        assert accepted.returncode == 0, accepted.stderr + accepted.stdout
        assert json.loads(accepted.stdout)["n"] == 40
        # A prompt version whose last line says "spam": the stub then calls every SMS spam.
        always_spam = write_spec(tmp_path / "always_spam.yaml", "items.jsonl",
                                 prompt="SMS: {{ item.text }}\nLabel (ham or spam):")
        refused = llmbus("accept", str(always_spam), "--against", "sms", "--since", fresh_from, "--max-drop", "0.1",
                         "--db", str(db), "--json")
        assert refused.returncode == 1, refused.stderr + refused.stdout
        assert json.loads(refused.stdout)["slices"][0]["candidate"] < 0.5

        # Canary at 10% with the accepted student: promoted step by step to all traffic.
        _canary(config, student, window=10)
        with running_gateway(config, db) as (url, gateway):
            assert _until_decided(url, gateway, "good canary") == "promoted"
        # A bad candidate (its backend dies after the gateway started): rolled back, traffic back on the incumbent.
        models = yaml.safe_load((tmp_path / "llmbus.yaml").read_text())
        models["models"]["openai:doomed"] = {"base_url": doomed.base_url, "model": "stub-model", "max_retries": 0,
                                             "timeout_s": 2.0}
        (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump(models))
        _canary(config, "openai:doomed", window=10)
        with running_gateway(config, db) as (url, gateway):
            doomed.kill()
            assert _until_decided(url, gateway, "bad canary") == "rolled_back"
    with store.engine.connect() as conn:
        made_decisions = [(r["candidate"], r["decision"]) for r in conn.execute(
            sa.select(canary_decisions).order_by(canary_decisions.c.id)).mappings()]
    assert made_decisions == [(student, "promote"), (student, "promote"), ("openai:doomed", "rollback")]
