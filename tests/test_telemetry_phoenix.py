"""OpenTelemetry into a real receiver: Arize Phoenix on 127.0.0.1 (its own venv, scripts/install-phoenix.sh) gets
llmbus's spans over OTLP/HTTP from a run, a gateway request and a flow, and they are read back through Phoenix's
own client: the parent/child structure, and call spans whose attributes equal the call log's rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.providers.llamacpp import free_port
from llmbus.store import Store
from openai_stub import StubServer

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Phoenix:
    url: str
    python: str

    def spans(self, trace_id: str | None = None, run_id: str | None = None, want: int = 1,
              timeout_s: float = 30) -> list[dict[str, Any]]:
        """The spans of one trace (or of every trace that holds a span of `run_id`), once at least `want` are in."""
        deadline, found = time.time() + timeout_s, []
        while time.time() < deadline:
            done = subprocess.run([self.python, str(ROOT / "tests" / "phoenix_spans.py"), self.url],
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr[-2000:]
            every = json.loads(done.stdout)
            traces = {trace_id} if trace_id else {s["trace_id"] for s in every
                                                  if s["attributes"].get("llmbus.run_id") == run_id}
            found = [s for s in every if s["trace_id"] in traces]
            if len(found) >= want:
                return found
            time.sleep(0.5)
        return found


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    """Phoenix serving on free 127.0.0.1 ports (installed once into its own cached venv), stopped by PID."""
    installed = subprocess.run(["bash", str(ROOT / "scripts" / "install-phoenix.sh")], capture_output=True,
                               text=True, timeout=1200)
    assert installed.returncode == 0, installed.stderr[-3000:]
    bin_dir = Path(installed.stdout.strip().splitlines()[-1])
    work = tmp_path_factory.mktemp("phoenix")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("OTEL_", "LLMBUS_"))}
    # its gRPC receiver binds every interface (Phoenix 20 has no host setting for it): nothing is sent there, the
    # spans go over OTLP/HTTP to 127.0.0.1 only, and the process lives for this module's tests
    env.update(PHOENIX_WORKING_DIR=str(work), PHOENIX_HOST="127.0.0.1", PHOENIX_PORT=str(port),
               PHOENIX_GRPC_PORT=str(free_port()), PHOENIX_TELEMETRY_ENABLED="false")
    with (work / "phoenix.log").open("w") as log:
        process = subprocess.Popen([str(bin_dir / "phoenix"), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            assert process.poll() is None, (work / "phoenix.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("phoenix did not start: " + (work / "phoenix.log").read_text()[-3000:])
        yield Phoenix(url, str(bin_dir / "python"))
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def otel_env(tmp_path: Path, stub: StubServer, phoenix: Phoenix) -> dict[str, str]:
    """The environment of an llmbus process exporting to Phoenix, with `openai:stub` (no retries) configured."""
    config = {"models": {"openai:stub": {"base_url": stub.base_url, "model": "stub-model", "max_retries": 0,
                                         "timeout_s": 2.0, "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0}},
              "otel": {"capture_content": True}}
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump(config))
    return {**os.environ, "LLMBUS_CONFIG": str(tmp_path / "llmbus.yaml"), "LLMBUS_DB": str(tmp_path / "calls.db"),
            "LLMBUS_OTEL": "1", "OTEL_EXPORTER_OTLP_ENDPOINT": phoenix.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
            "LLMBUS_THREADS": "1"}


def llmbus(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "llmbus.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_call_span_matches(span: dict[str, Any], row: dict[str, Any], route: str) -> None:
    """A call span's attributes are the call log row's values."""
    attributes = span["attributes"]
    assert span["span_kind"] == "LLM"  # Phoenix read the gen_ai.* attributes as an LLM call
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.provider.name"] == "openai"
    assert attributes["gen_ai.request.model"] == "stub-model"
    assert attributes["llmbus.model"] == row["model"] and attributes["llmbus.task"] == row["task"]
    assert attributes["llmbus.item_id"] == row["item_id"] and attributes["llmbus.spec_version"] == row["spec_version"]
    assert attributes["gen_ai.usage.input_tokens"] == row["tokens_in"]
    assert attributes["gen_ai.usage.output_tokens"] == row["tokens_out"]
    assert attributes["llmbus.cost_usd"] == pytest.approx(row["cost_usd"], rel=1e-9, abs=1e-15)
    assert attributes["llmbus.cache_hit"] == bool(row["cache_hit"]) and attributes["llmbus.route"] == route
    assert attributes.get("error.type") == row["error_kind"]
    if row["error_kind"] is None:
        assert span["status"] != "ERROR"
        if not row["cache_hit"]:  # a cached answer keeps its text, not why its generation stopped
            assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
        assert json.loads(attributes["gen_ai.output.messages"])[0]["parts"][0]["content"] == row["raw_output"]
    else:
        assert span["status"] == "ERROR"
    assert json.loads(attributes["gen_ai.input.messages"])[0]["parts"][0]["content"] == row["prompt"]


def test_a_run_is_one_trace_its_calls_nest_under_it_with_the_call_log_values(tmp_path: Path, otel_env: dict[str, str],
                                                                              phoenix: Phoenix):
    write_items(tmp_path / "items.jsonl", 16, {5: "ALWAYS500"})
    write_spec(tmp_path / "task.yaml", "items.jsonl")
    done = llmbus(otel_env, "run", str(tmp_path / "task.yaml"), "-m", "openai:stub", "-c", "3", "--json")
    run_id = json.loads(done.stdout)["run_id"]
    rows = {row["item_id"]: row for row in Store(otel_env["LLMBUS_DB"]).iter_calls(run_id)}
    assert any(row["error_kind"] for row in rows.values())
    spans = phoenix.spans(run_id=run_id, want=len(rows) + 1)
    runs = [s for s in spans if s["name"] == "llmbus run tiny"]
    assert len(runs) == 1 and runs[0]["parent_id"] is None and runs[0]["attributes"]["llmbus.run_id"] == run_id
    calls = [s for s in spans if s is not runs[0]]
    assert sorted(s["attributes"]["llmbus.item_id"] for s in calls) == sorted(rows)  # one span per row
    for span in calls:  # answered on 3 threads, every one under the run span
        assert span["parent_id"] == runs[0]["span_id"] and span["name"] == "chat stub-model"
        assert_call_span_matches(span, rows[span["attributes"]["llmbus.item_id"]], "backend")


def test_the_gateway_honours_traceparent_and_returns_the_trace_id(tmp_path: Path, otel_env: dict[str, str],
                                                                  phoenix: Phoenix):
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:stub"}}}))
    port = free_port()
    with (tmp_path / "gateway.log").open("w") as log:
        gateway = subprocess.Popen([sys.executable, "-m", "llmbus.cli", "serve", "--config",
                                    str(tmp_path / "serve.yaml"), "--port", str(port)], env=otel_env, stdout=log,
                                   stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    trace_id, caller_span = os.urandom(16).hex(), os.urandom(8).hex()
    try:
        deadline = time.time() + 60
        while True:
            assert gateway.poll() is None and time.time() < deadline, (tmp_path / "gateway.log").read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {"model": "chat", "messages": [{"role": "user", "content": "win a free spam prize"}]}
        headers = {"traceparent": f"00-{trace_id}-{caller_span}-01"}
        answers = [httpx.post(f"{base}/v1/chat/completions", json=body, headers=headers, timeout=30)
                   for _ in range(2)]  # the second is an exact-cache hit
        untraced = httpx.post(f"{base}/v1/chat/completions", json={**body, "model": "nope"}, timeout=30)
    finally:
        gateway.terminate()  # uvicorn shuts down cleanly: the last spans are flushed at exit
        gateway.wait(timeout=60)
    assert [a.status_code for a in answers] == [200, 200]
    assert all(a.headers["x-trace-id"] == trace_id for a in answers)  # the caller's trace goes on
    assert all(a.headers["traceresponse"].startswith(f"00-{trace_id}-") for a in answers)
    assert untraced.status_code == 404 and len(untraced.headers["x-trace-id"]) == 32  # refusals say theirs too
    assert untraced.headers["x-trace-id"] != trace_id
    rows = {row["item_id"]: row for row in Store(otel_env["LLMBUS_DB"]).iter_calls(
        next(r["id"] for r in Store(otel_env["LLMBUS_DB"]).list_runs("gateway:chat")))}
    spans = phoenix.spans(trace_id=trace_id, want=2 * 3)
    by_id = {s["span_id"]: s for s in spans}
    requests = [s for s in spans if s["name"] == "llmbus gateway chat"]
    calls = [s for s in spans if s["name"] == "chat stub-model"]
    assert len(requests) == 2 and len(calls) == 2
    for request in requests:  # under FastAPI's own spans (endpoint < HTTP server), the server's under the caller's
        chain = [request]
        while chain[-1]["parent_id"] in by_id:
            chain.append(by_id[chain[-1]["parent_id"]])
        assert [s["name"] for s in chain[1:]] == ["fastapi.endpoint", "POST /v1/chat/completions"]
        assert chain[-1]["parent_id"] == caller_span and chain[-1]["attributes"]["http.request.method"] == "POST"
    assert {c["parent_id"] for c in calls} == {r["span_id"] for r in requests}
    for span in calls:
        row = rows[span["attributes"]["llmbus.item_id"]]
        assert_call_span_matches(span, row, row["meta"]["route"])
    assert sorted(s["attributes"]["llmbus.route"] for s in calls) == ["backend", "cache_exact"]


FLOW = '''
from llmbus import flow


@flow("triage")
def triage(ctx, value):
    label = ctx.llm("classify", "SMS: " + value["text"] + "\\nLabel:", labels=("ham", "spam"))
    return {"label": label.text}
'''


def test_a_flow_run_nests_step_and_call_spans(tmp_path: Path, otel_env: dict[str, str], phoenix: Phoenix):
    (tmp_path / "triage.py").write_text(FLOW)
    done = llmbus(otel_env, "flow", "run", str(tmp_path / "triage.py"), "--input", '{"text": "free spam prize"}',
                  "-m", "openai:stub", "--json")
    outcome = json.loads(done.stdout)[0]
    assert outcome["status"] == "done" and outcome["output"] == {"label": "spam"}
    store = Store(otel_env["LLMBUS_DB"])
    (row,) = [r for run in store.list_runs("flow:triage") for r in store.iter_calls(run["id"])]
    every = phoenix.spans(run_id=row["run_id"], want=3)
    flows = [s for s in every if s["name"] == "llmbus flow triage"]
    assert len(flows) == 1 and flows[0]["attributes"]["llmbus.flow_run_id"] == outcome["run_id"]
    (step,) = [s for s in every if s["name"] == "llmbus step classify"]
    (call,) = [s for s in every if s["name"] == "chat stub-model"]
    assert step["parent_id"] == flows[0]["span_id"] and call["parent_id"] == step["span_id"]
    assert call["attributes"]["llmbus.flow_step"] == "classify"
    assert_call_span_matches(call, row, "backend")
