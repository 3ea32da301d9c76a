"""The flow engine against the OpenAI stub: durable steps, pause for review, resume without repeating paid
calls, and the faults (a step that raises, a provider timeout, a hung tool, kill -9) leave a resumable run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from llmbus.cli import app
from llmbus.errors import LlmbusError
from llmbus.flows.engine import FlowContext, FlowSettings, flow, load_flow, resume, start
from llmbus.flows.log import FlowLog
from llmbus.flows.review import ReviewQueue
from llmbus.store import Store


def slow_tool(seconds: float) -> str:
    time.sleep(seconds)
    return "woke"


def shout(text: str) -> str:
    return text.upper()


@flow("classify_and_review")
def review_flow(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
    upper = ctx.tool("upper", shout, text=value["text"])
    label = ctx.llm("label", f"SMS: {value['text']}\nLabel:", labels=("ham", "spam")).text
    if label == "spam":  # plain Python branching: only spam goes to a human
        decision = ctx.review("check", {"question": upper, "draft": label, "reasons": ["spam needs a human"]})
        return {"label": decision.answer, "by": decision.reviewer}
    return {"label": label}


def stub_calls(stub: Any) -> int:
    return sum(stub.state.attempts.values())


def test_steps_are_durable_and_review_pauses_then_resumes_without_repeating_calls(stub, stub_model, store: Store):
    settings = FlowSettings(model=stub_model)
    ham = start(store, review_flow, {"text": "see you at lunch"}, settings)
    assert ham.status == "done" and ham.output == {"label": "ham"}
    spam = start(store, review_flow, {"text": "win a free spam prize"}, settings)
    assert spam.status == "waiting_review"
    steps = {s["key"]: s for s in FlowLog(store).steps(spam.run_id)}
    assert steps["upper"]["output"] == "WIN A FREE SPAM PRIZE" and steps["upper"]["kind"] == "tool"
    llm = steps["label"]
    assert llm["status"] == "done" and llm["model"] == stub_model and llm["tokens_in"] > 0 and llm["cost_usd"] > 0
    assert "SMS: win a free spam prize" in llm["detail"]["prompt"] and llm["output"]["label_probs"]["spam"] > 0.5
    assert steps["check"]["status"] == "waiting"
    calls_before = stub_calls(stub)

    assert resume(store, spam.run_id).status == "waiting_review"  # still undecided: pauses again
    queue = ReviewQueue(store)
    [item] = queue.items()
    assert item["payload"]["draft"] == "spam" and item["flow_run_id"] == spam.run_id
    queue.claim(item["id"], "alice")
    queue.decide(item["id"], "alice", "edit", answer="ham", comment="a friend's joke")
    done = resume(store, spam.run_id)
    assert done.status == "done" and done.output == {"label": "ham", "by": "alice"}
    assert stub_calls(stub) == calls_before  # the LLM step was replayed, not called again
    steps = {s["key"]: s for s in FlowLog(store).steps(spam.run_id)}
    assert steps["label"]["attempts"] == 1 and steps["check"]["status"] == "done"
    assert FlowLog(store).get_run(spam.run_id)["status"] == "done"



def flaky(marker: str) -> str:
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        raise ValueError("the warehouse API said no")
    return "fine"


@flow("flaky")
def flaky_flow(ctx: FlowContext, value: dict[str, Any]) -> str:
    label = ctx.llm("label", f"SMS: {value['text']}\nLabel:", labels=("ham", "spam")).text
    checked = ctx.tool("check", flaky, marker=value["marker"])
    return f"{label}/{checked}"


def test_a_step_that_raises_fails_the_run_clearly_and_resume_finishes_it(tmp_path, stub, stub_model, store):
    outcome = start(store, flaky_flow, {"text": "hello", "marker": str(tmp_path / "m")}, FlowSettings(model=stub_model))
    assert outcome.status == "failed"
    assert "step 'check' failed" in outcome.error and "warehouse API said no" in outcome.error
    run = FlowLog(store).get_run(outcome.run_id)
    assert run["status"] == "failed" and "warehouse" in run["error"]
    step = FlowLog(store).get_step(outcome.run_id, "check")
    assert step["status"] == "failed" and step["error_kind"] == "raised"
    calls = stub_calls(stub)
    again = resume(store, outcome.run_id, flaky_flow)
    assert again.status == "done" and again.output == "ham/fine"
    assert stub_calls(stub) == calls
    assert FlowLog(store).get_step(outcome.run_id, "check")["attempts"] == 2


@flow("timeouts")
def timeout_flow(ctx: FlowContext, value: dict[str, Any]) -> str:
    return ctx.llm("ask", f"SMS: {value['text']}\nLabel:", labels=("ham", "spam")).text


def test_a_provider_timeout_is_a_failed_step_and_resume_retries_it(stub, stub_model, store, tmp_path):
    config = yaml.safe_load(Path(os.environ["LLMBUS_CONFIG"]).read_text())
    config["models"]["openai:stub"]["max_retries"] = 0  # the first (slow) attempt is the only one
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
    outcome = start(store, timeout_flow, {"text": "hello SLOW"}, FlowSettings(model=stub_model))
    assert outcome.status == "failed" and "(timeout)" in outcome.error
    assert FlowLog(store).get_step(outcome.run_id, "ask")["error_kind"] == "timeout"
    assert resume(store, outcome.run_id, timeout_flow).output == "ham"


@flow("hung")
def hung_flow(ctx: FlowContext, value: dict[str, Any]) -> str:
    return str(ctx.tool("sleep", slow_tool, timeout_s=0.5, seconds=value["seconds"]))


def test_a_hung_tool_is_killed_and_the_run_fails_with_a_clear_state(store):
    tick = time.monotonic()
    outcome = start(store, hung_flow, {"seconds": 60})
    assert time.monotonic() - tick < 10
    assert outcome.status == "failed" and "did not finish within 0.5s" in outcome.error
    assert FlowLog(store).get_step(outcome.run_id, "sleep")["error_kind"] == "timeout"


@flow("twice")
def twice_flow(ctx: FlowContext, value: Any) -> None:
    ctx.tool("same", shout, text="a")
    ctx.tool("same", shout, text="b")


def test_reusing_a_step_key_is_an_error(store):
    outcome = start(store, twice_flow, {})
    assert outcome.status == "failed" and "used twice" in outcome.error


FLOW_FILE = '''
import time
from pathlib import Path
from llmbus.flows.engine import flow

def nap(marker: str) -> str:
    if not Path(marker).exists():
        Path(marker).write_text("slept")
        time.sleep(120)
    return "rested"

@flow("killable")
def killable(ctx, value):
    label = ctx.llm("label", "SMS: " + value["text"] + "\\nLabel:", labels=("ham", "spam")).text
    rest = ctx.tool("nap", nap, timeout_s=300, marker=value["marker"])
    return {"label": label, "rest": rest}
'''


def llmbus_cli(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True,
                          env=env or dict(os.environ), timeout=120, **kwargs)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_mid_run_then_resume_continues_without_repeating_the_llm_call(tmp_path, stub, stub_model, sig):
    flow_file = tmp_path / "killable.py"
    flow_file.write_text(FLOW_FILE)
    db = str(tmp_path / "flows.db")
    value = json.dumps({"text": "win a spam prize", "marker": str(tmp_path / "napped")})
    proc = subprocess.Popen([sys.executable, "-m", "llmbus.cli", "flow", "run", str(flow_file), "--input", value,
                             "--model", stub_model, "--db", db], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    store = Store(db)
    deadline = time.time() + 60
    while not (tmp_path / "napped").exists() and time.time() < deadline:
        time.sleep(0.2)
    [run] = FlowLog(store).list_runs()
    time.sleep(0.5)  # the tool step is running in its child process now
    proc.send_signal(sig)
    proc.wait(30)
    if sig == signal.SIGTERM:  # a clean stop says so on the run; kill -9 leaves it "running" with a dead lease
        assert FlowLog(store).get_run(run["id"])["status"] == "interrupted"
        assert b"flow resume" in proc.stderr.read()
    assert FlowLog(store).get_step(run["id"], "label")["status"] == "done"
    assert FlowLog(store).get_step(run["id"], "nap")["status"] == "running"
    calls = stub_calls(stub)
    result = llmbus_cli("flow", "resume", run["id"][:6], "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["output"] == {"label": "spam", "rest": "rested"}
    assert stub_calls(stub) == calls
    shown = llmbus_cli("flow", "show", run["id"], "--db", db)
    assert shown.returncode == 0 and "label" in shown.stdout and "nap" in shown.stdout and "done" in shown.stdout


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    flow_file = tmp_path / "killable.py"
    flow_file.write_text(FLOW_FILE)
    runner = CliRunner()
    bad = runner.invoke(app, ["flow", "run", str(flow_file), "--input", "{oops"])
    assert bad.exit_code == 2 and "--input: not JSON" in bad.output
    data = tmp_path / "items.jsonl"
    data.write_text('{"text": "a", "marker": "x"}\n{"text": \n')
    bad = runner.invoke(app, ["flow", "run", str(flow_file), "--dataset", str(data)])
    assert bad.exit_code == 2 and f"{data}:2: not JSON" in bad.output
    missing = runner.invoke(app, ["flow", "run", str(tmp_path / "nope.py"), "--input", "{}"])
    assert missing.exit_code == 2 and "flow file not found" in missing.output
    listed = runner.invoke(app, ["flow", "list", "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output) == []
    unknown = runner.invoke(app, ["flow", "show", "zzzz"])
    assert unknown.exit_code == 2 and "not found" in unknown.output
    assert load_flow(flow_file).name == "killable"


def test_dataset_runs_one_flow_run_per_line(tmp_path, stub, stub_model):
    flow_file = tmp_path / "killable.py"
    flow_file.write_text(FLOW_FILE)
    for name in ("n1", "n2"):
        (tmp_path / name).write_text("already")
    data = tmp_path / "items.jsonl"
    data.write_text("".join(json.dumps({"text": t, "marker": str(tmp_path / m)}) + "\n"
                            for t, m in (("spam offer", "n1"), ("lunch?", "n2"))))
    result = llmbus_cli("flow", "run", str(flow_file), "--dataset", str(data), "--model", stub_model, "--json")
    assert result.returncode == 0, result.stderr
    outputs = [o["output"]["label"] for o in json.loads(result.stdout)]
    assert outputs == ["spam", "ham"]


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_review_outcomes_reach_the_flow(stub, stub_model, store, action):
    outcome = start(store, review_flow, {"text": "spam spam"}, FlowSettings(model=stub_model))
    queue = ReviewQueue(store)
    [item] = queue.items()
    queue.decide(item["id"], "bob", action)
    done = resume(store, outcome.run_id, review_flow)
    assert done.output == {"label": "spam" if action == "approve" else None, "by": "bob"}


def test_flows_and_review_on_postgres(postgres_url: str, stub, stub_model):
    store = Store(postgres_url)
    try:
        outcome = start(store, review_flow, {"text": "spam on postgres"}, FlowSettings(model=stub_model))
        assert outcome.status == "waiting_review"
        queue = ReviewQueue(store)
        item = queue.for_step(outcome.run_id, "check")
        queue.claim(item["id"], "alice")
        queue.decide(item["id"], "alice", "approve")
        assert resume(store, outcome.run_id, review_flow).output == {"label": "spam", "by": "alice"}
        assert [s["status"] for s in FlowLog(store).steps(outcome.run_id)] == ["done", "done", "done"]
    finally:
        store.close()


def test_a_run_held_by_a_live_process_is_not_executed_twice(stub, stub_model, store: Store):
    outcome = start(store, review_flow, {"text": "spam twice"}, FlowSettings(model=stub_model))
    FlowLog(store).acquire(outcome.run_id, "another-host:4242")  # e.g. the review server resuming it
    with pytest.raises(LlmbusError, match="is being executed by another-host:4242"):
        resume(store, outcome.run_id, review_flow)
    FlowLog(store).release(outcome.run_id)
    assert resume(store, outcome.run_id, review_flow).status == "waiting_review"
