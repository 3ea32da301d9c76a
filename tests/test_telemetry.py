"""Telemetry without a receiver: spans caught in memory in a child process (tests/otel_capture.py) nest across
thread pools; prompts stay off spans unless asked for; with telemetry off nothing of OpenTelemetry is imported;
the settings, and the logging records a run and a failed call leave."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.errors import SpecError
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import CallRecord, Store, now
from llmbus.task.spec import load_spec
from llmbus.telemetry import call_attributes, otel_settings

ROOT = Path(__file__).resolve().parents[1]
SMS_JUDGE = ROOT / "examples" / "sms_spam" / "judge.yaml"


def captured(tmp_path: Path, *args: str, **env: str) -> list[dict[str, Any]]:
    """The spans of one llmbus command (its CLI arguments), run with telemetry on in a child process."""
    out = tmp_path / f"spans-{len(list(tmp_path.glob('spans-*')))}.json"
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "otel_capture.py"), str(out), *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LLMBUS_OTEL": "1", "COLUMNS": "200", **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return list(json.loads(out.read_text()))


def test_calls_on_worker_threads_nest_under_their_run_and_judge_run(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 12)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    spans = captured(tmp_path, "run", str(task), "-m", stub_model, "-c", "3", "--json")
    (run,) = [s for s in spans if s["name"] == "llmbus run tiny"]
    run_id = run["attributes"]["llmbus.run_id"]
    calls = [s for s in spans if s is not run]
    rows = list(Store(os.environ["LLMBUS_DB"]).iter_calls(run_id))
    assert len(calls) == len(rows) > 3 and {s["parent_id"] for s in calls} == {run["span_id"]}
    assert {s["trace_id"] for s in spans} == {run["trace_id"]}
    assert all("gen_ai.input.messages" not in s["attributes"] for s in calls)  # content is opt-in
    assert all(s["kind"] == "CLIENT" and s["start"] <= s["end"] for s in calls)

    judge = yaml.safe_load(SMS_JUDGE.read_text())
    judge["data"]["path"] = str(SMS_JUDGE.parent / "judge_examples.jsonl")
    judge["prompt"] = judge["prompt"].rstrip().removesuffix("Verdict:") + "Grade:"  # the stub grades pass/fail
    (tmp_path / "judge.yaml").write_text(yaml.safe_dump(judge))
    spans = captured(tmp_path, "judge", "run", str(tmp_path / "judge.yaml"), "--on", run_id, "--model", stub_model,
                     "-c", "3", "--json")
    (judged,) = [s for s in spans if s["name"].startswith("llmbus judge ")]
    assert judged["attributes"]["llmbus.judge.target_run_id"] == run_id
    judge_calls = [s for s in spans if s is not judged]
    assert len(judge_calls) == len(rows) and {s["parent_id"] for s in judge_calls} == {judged["span_id"]}
    assert {s["attributes"]["llmbus.run_id"] for s in judge_calls} == {judged["attributes"]["llmbus.run_id"]}


def test_capture_content_puts_the_prompt_and_answer_on_the_span(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 6)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    spans = captured(tmp_path, "run", str(task), "-m", stub_model, "--json",
                     OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true")
    call = next(s for s in spans if s["name"] == "chat stub-model")
    given = json.loads(call["attributes"]["gen_ai.input.messages"])
    answer = json.loads(call["attributes"]["gen_ai.output.messages"])
    assert given[0]["role"] == "user" and given[0]["parts"][0]["content"].endswith("Label:")
    assert answer == [{"role": "assistant", "parts": [{"type": "text", "content": answer[0]["parts"][0]["content"]}],
                       "finish_reason": "stop"}] and answer[0]["parts"][0]["content"] in {"ham", "spam"}


def test_with_telemetry_off_a_run_imports_no_opentelemetry(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 6)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    code = ("import sys\nfrom llmbus.cli import main\nsys.argv = ['llmbus', 'run', sys.argv[1], '-m', sys.argv[2]]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    done = subprocess.run([sys.executable, "-c", code, str(task), stub_model], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "LLMBUS_OTEL": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_settings_from_llmbus_yaml_and_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    config = tmp_path / "llmbus.yaml"
    monkeypatch.setenv("LLMBUS_CONFIG", str(config))
    monkeypatch.delenv("LLMBUS_OTEL", raising=False)
    monkeypatch.delenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", raising=False)
    assert not otel_settings().enabled  # no file: off
    config.write_text(yaml.safe_dump({"models": {}, "otel": {"capture_content": True, "service_name": "triage"}}))
    assert otel_settings() == type(otel_settings())(True, True, "triage")
    monkeypatch.setenv("LLMBUS_OTEL", "0")  # the environment wins
    assert not otel_settings().enabled
    monkeypatch.setenv("LLMBUS_OTEL", "1")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "false")
    assert otel_settings().enabled and not otel_settings().capture_content
    bad = tmp_path / "bad.yaml"
    bad.write_text("otel:\n  capture: yes\n")
    monkeypatch.setenv("LLMBUS_CONFIG", str(bad))
    with pytest.raises(SpecError, match=r"bad\.yaml: otel: a mapping of capture_content, enabled, service_name"):
        otel_settings()


def test_call_attributes_are_the_call_log_row():
    record = CallRecord(run_id="r1", task="tiny", spec_version="abc", item_id="m3", model="local:gemma-3-270m",
                        prompt="SMS: hi\nLabel:", raw_output="ham", tokens_in=7, tokens_out=1, cost_usd=0.25,
                        latency_s=0.5, started_at=now(), finished_at=now(), error_kind="timeout", error="slow",
                        meta={"arm": "canary"})
    attributes = call_attributes(record, route="fallback")
    assert attributes["gen_ai.provider.name"] == "llama.cpp"
    assert attributes["gen_ai.operation.name"] == "text_completion"
    assert attributes["gen_ai.request.model"] == "local:gemma-3-270m"  # no provider at hand: the reference
    assert attributes["gen_ai.usage.input_tokens"] == 7 and attributes["llmbus.cost_usd"] == 0.25
    assert attributes["gen_ai.response.finish_reasons"] == ["error"] and attributes["error.type"] == "timeout"
    assert attributes["llmbus.route"] == "fallback" and attributes["llmbus.canary_arm"] == "canary"
    assert "gen_ai.input.messages" not in attributes
    assert "gen_ai.input.messages" in call_attributes(record, capture_content=True)


def test_a_run_and_each_failed_call_leave_logging_records(tmp_path: Path, stub_model: str, store: Store,
                                                          caplog: pytest.LogCaptureFixture):
    write_items(tmp_path / "items.jsonl", 12, {4: "ALWAYS500"})
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl"))
    with caplog.at_level(logging.INFO, logger="llmbus"):
        run_id = run_task(spec, stub_model, store, RunOptions(concurrency=2))
    failed = [c for c in store.iter_calls(run_id) if c["error_kind"]]
    messages = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert ("llmbus.run.engine", "INFO", f"run {run_id}: task tiny (spec {spec.version}) on {stub_model}, "
            "11 of 11 items to answer") in messages
    assert any(name == "llmbus.run.engine" and text.startswith(f"run {run_id} done") for name, _, text in messages)
    warnings = [text for name, level, text in messages if name == "llmbus.calls" and level == "WARNING"]
    assert len(failed) == 1 and warnings == [f"call failed: task tiny, run {run_id}, item {failed[0]['item_id']}, "
                                             f"model {stub_model}: http_500: {failed[0]['error']}"]


def test_the_cli_prints_logging_records_at_llmbus_log_level(tmp_path: Path, stub_model: str):
    write_items(tmp_path / "items.jsonl", 6)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    quiet = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(task), "-m", stub_model], text=True,
                           capture_output=True, timeout=120)
    loud = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(task), "-m", stub_model, "--no-cache"],
                          text=True, capture_output=True, timeout=120, env={**os.environ, "LLMBUS_LOG_LEVEL": "info"})
    assert quiet.returncode == loud.returncode == 0, loud.stderr
    assert "llmbus.run.engine" not in quiet.stderr
    assert " INFO llmbus.run.engine: run " in loud.stderr and " done (" in loud.stderr


GATEWAY = """
import json, sys
from pathlib import Path
from fastapi.testclient import TestClient
from llmbus.serve.app import create_app
from llmbus.serve.gateway import Gateway, load_serve_config
from llmbus.store import Store

config, db, trace = sys.argv[1:4]
with TestClient(create_app(Gateway(load_serve_config(config), Store(db)))) as client:
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "see you at lunch"}]}
    with client.stream("POST", "/v1/chat/completions", json=body,
                       headers={"traceparent": f"00-{trace}-{'1' * 16}-01"}) as response:
        text = "".join(response.iter_text())
    Path(db + ".headers").write_text(json.dumps(dict(response.headers)))
    assert "[DONE]" in text, text
"""


def test_a_streamed_gateway_answer_nests_its_call_under_the_request(tmp_path: Path, stub_model: str):
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({"models": {"chat": {"model": stub_model}}}))
    trace = os.urandom(16).hex()
    db = str(tmp_path / "gateway.db")
    out = tmp_path / "spans.json"
    code = f"sys.argv = ['x', {str(tmp_path / 'serve.yaml')!r}, {db!r}, {trace!r}]\n" + GATEWAY
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "otel_capture.py"), str(out), "-c",
                           "import sys\n" + code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LLMBUS_OTEL": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(Path(db + ".headers").read_text())["x-trace-id"] == trace
    spans = json.loads(out.read_text())
    (request,) = [s for s in spans if s["name"] == "llmbus gateway chat"]
    (call,) = [s for s in spans if s["name"] == "chat stub-model"]
    # the pieces were pulled from other threads after the handler returned; the call span still nests here
    assert call["parent_id"] == request["span_id"] and call["trace_id"] == trace
    (row,) = list(Store(db).iter_calls(call["attributes"]["llmbus.run_id"]))
    assert call["attributes"]["llmbus.item_id"] == row["item_id"] and row["meta"]["ttft_s"] >= 0
    assert call["attributes"]["gen_ai.response.finish_reasons"] == ["stop"]


def test_telemetry_on_without_the_extra_is_one_error_line(monkeypatch: pytest.MonkeyPatch):
    from llmbus.errors import LlmbusError
    from llmbus.telemetry import _tracer

    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if `llmbus[otel]` was not installed
    with pytest.raises(LlmbusError, match=r"OpenTelemetry is not installed: pip install 'llmbus\[otel\]'"):
        _tracer.__wrapped__("llmbus")
