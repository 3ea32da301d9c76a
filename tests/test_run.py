"""The run engine against the OpenAI-compatible stub: faults are logged per item, none lost; resume; cache."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for_calls, write_items, write_spec
from llmbus.providers import Request, open_provider
from llmbus.providers.config import resolve_model
from llmbus.run.engine import eval_items, run_task
from llmbus.run.summary import summarize
from llmbus.store import Store
from llmbus.task.spec import load_spec


def test_faults_are_retried_or_logged_and_no_item_is_lost(tmp_path: Path, stub, stub_model: str, store: Store):
    markers = {1: "FAIL500", 2: "RATE429", 4: "SLOW", 5: "BADJSON", 7: "ALWAYS500", 8: "NONSENSE"}
    write_items(tmp_path / "items.jsonl", 30, markers)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl"))
    items, _ = eval_items(spec)
    run_id = run_task(spec, stub_model, store, concurrency=4)
    calls = {c["item_id"]: c for c in store.iter_calls(run_id)}
    assert set(calls) == {i.id for i in items}  # every item ends logged
    by_marker = {markers[int(i.id[1:])]: calls[i.id] for i in items if int(i.id[1:]) in markers}
    for recovered in ("FAIL500", "RATE429", "SLOW", "BADJSON"):
        if recovered in by_marker:
            assert by_marker[recovered]["error_kind"] is None, recovered
    if "ALWAYS500" in by_marker:
        assert by_marker["ALWAYS500"]["error_kind"] == "http_500"
    if "NONSENSE" in by_marker:
        row = by_marker["NONSENSE"]
        assert row["error_kind"] == "label_not_in_set" and row["raw_output"] == "maybe"
    ok = [c for c in calls.values() if c["error_kind"] is None]
    assert all(c["parsed"] == c["expected"] for c in ok)
    assert all(0.5 < c["confidence"] <= 1 for c in ok)  # from the stub's logprobs: 0.8 / (0.8 + 0.15)
    summary = summarize(store, store.get_run(run_id))
    assert summary.items == len(items) and summary.errors == sum(c["error_kind"] is not None for c in calls.values())
    assert summary.cost_usd > 0 and summary.tokens_in > 0


def test_second_run_is_served_from_cache(tiny_task: Path, stub, stub_model: str, store: Store):
    spec = load_spec(tiny_task)
    first = run_task(spec, stub_model, store, limit=10)
    requests_after_first = sum(stub.state.attempts.values())
    second = run_task(spec, stub_model, store, limit=10)
    assert sum(stub.state.attempts.values()) == requests_after_first
    rows = list(store.iter_calls(second))
    assert all(r["cache_hit"] for r in rows) and sum(r["cost_usd"] for r in rows) == 0
    third = run_task(spec, stub_model, store, limit=10, use_cache=False)
    assert sum(stub.state.attempts.values()) == 2 * requests_after_first
    assert not any(r["cache_hit"] for r in store.iter_calls(third))
    assert first != second != third


def test_resume_after_kill_9_answers_only_missing_items(tmp_path: Path, stub, stub_model: str):
    stub.state.delay_s = 0.15
    write_items(tmp_path / "items.jsonl", 40)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    db = tmp_path / "kill.db"
    cmd = [sys.executable, "-m", "llmbus.cli", "run", str(task), "--model", stub_model, "--db", str(db),
           "--concurrency", "2", "--json"]
    proc = subprocess.Popen(cmd, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_calls(db, 8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(str(db))
    run = store.list_runs()[0]
    before = {c["item_id"]: c["prompt"] for c in store.iter_calls(run["id"])}
    assert 8 <= len(before) < run["n_planned"]
    attempts_before = dict(stub.state.attempts)
    stub.state.delay_s = 0
    resumed = subprocess.run([*cmd[:5], "--db", str(db), "--resume", run["id"], "--json", "--no-cache"],
                             env=os.environ.copy(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    rows = list(store.iter_calls(run["id"]))
    assert len(rows) == run["n_planned"] == len({r["item_id"] for r in rows})
    assert store.get_run(run["id"])["status"] == "done"
    # Items answered before the kill were not asked again.
    again = [p for p in before.values() if stub.state.attempts[_last(p)] > attempts_before.get(_last(p), 0)]
    assert again == []


def _last(prompt: str) -> str:
    lines = [ln for ln in prompt.strip().splitlines() if ln.strip()]
    return " ".join(lines[-2:])


@pytest.mark.parametrize("api", ["chat", "completions"])
def test_remote_free_text_reports_its_probability_when_asked(stub, stub_model: str, api: str):
    provider = open_provider(resolve_model(stub_model).model_copy(update={"api": api}))
    try:
        assert provider.complete(Request("Q: hi\nA:")).answer_prob is None  # not asked: no logprobs requested
        sure = provider.complete(Request("Q: hi\nA:", want_confidence=True))
        unsure = provider.complete(Request("Q: hi UNSURE\nA:", want_confidence=True))
        assert sure.confidence == pytest.approx(0.8) and unsure.confidence == pytest.approx(0.3)
    finally:
        provider.close()
