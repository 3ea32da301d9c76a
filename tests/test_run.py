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
from llmbus.run.options import RunOptions
from llmbus.run.summary import summarize
from llmbus.store import Store
from llmbus.task.spec import load_spec


def test_faults_are_retried_or_logged_and_no_item_is_lost(tmp_path: Path, stub, stub_model: str, store: Store):
    markers = {1: "FAIL500", 2: "RATE429", 4: "SLOW", 5: "BADJSON", 7: "ALWAYS500", 8: "NONSENSE"}
    write_items(tmp_path / "items.jsonl", 30, markers)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl"))
    items, _ = eval_items(spec)
    run_id = run_task(spec, stub_model, store, RunOptions(concurrency=4))
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
    first = run_task(spec, stub_model, store, RunOptions(limit=10))
    requests_after_first = sum(stub.state.attempts.values())
    second = run_task(spec, stub_model, store, RunOptions(limit=10))
    assert sum(stub.state.attempts.values()) == requests_after_first
    rows = list(store.iter_calls(second))
    assert all(r["cache_hit"] for r in rows) and sum(r["cost_usd"] for r in rows) == 0
    third = run_task(spec, stub_model, store, RunOptions(limit=10, use_cache=False))
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


def test_verbalized_labels_are_shown_scored_and_parsed_back(tmp_path: Path, stub, stub_model: str, store: Store):
    write_items(tmp_path / "items.jsonl", 30)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl",
                                output={"labels": ["ham", "spam"], "verbalizer": {"Spam": "spam", "Ham": "ham"}}))
    rows = list(store.iter_calls(run_task(spec, stub_model, store, RunOptions(limit=12))))
    assert all("Label: Spam" in r["prompt"] or "Label: Ham" in r["prompt"] for r in rows)
    assert not any("Label: spam" in r["prompt"] or "Label: ham" in r["prompt"] for r in rows)
    assert all(r["error_kind"] is None and r["parsed"] == r["expected"] for r in rows)
    assert all(set(r["label_probs"]) == {"ham", "spam"} and r["confidence"] == r["label_probs"][r["parsed"]]
               for r in rows)


def test_content_free_calibration_divides_by_the_na_distribution(tmp_path: Path, stub, stub_model: str,
                                                                  store: Store):
    from llmbus.experiments.optimize import calls_spent

    # UNSURE: the stub answers ham at 0.3 (spam gets 0.525): calibration against "N/A" (ham 0.8) flips it.
    write_items(tmp_path / "items.jsonl", 40, {i: "UNSURE" for i in range(1, 40, 3)})
    plain = load_spec(write_spec(tmp_path / "plain.yaml", "items.jsonl"))
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl",
                                output={"labels": ["ham", "spam"], "calibrate": ["N/A"]}))
    calibrated_run = run_task(spec, stub_model, store, RunOptions(limit=20, concurrency=4))
    spent, hits = calls_spent(store, calibrated_run)
    assert spent == sum(stub.state.attempts.values()) and hits == 0  # every request the stub saw, counted
    rows = {r["item_id"]: r for r in store.iter_calls(calibrated_run)}
    # Fixed shots: one content-free prompt for all, asked again only by the calls in flight before it was cached.
    assert 1 <= sum(r["meta"]["calibration"]["calls"] for r in rows.values()) <= 2 * 4
    before = {r["item_id"]: r for r in store.iter_calls(run_task(plain, stub_model, store, RunOptions(limit=20)))}
    flipped = [i for i, r in rows.items() if "UNSURE" in r["prompt"].splitlines()[-2]]
    assert flipped and all(before[i]["parsed"] == "ham" and rows[i]["parsed"] == "spam" for i in flipped)
    for item_id, row in rows.items():
        calibration = row["meta"]["calibration"]
        assert calibration["applied"] and calibration["uncalibrated"] == pytest.approx(before[item_id]["label_probs"])
        free = calibration["content_free"]
        assert free["ham"] > 0.8 and sum(free.values()) == pytest.approx(1.0)
        raw = {k: v / free[k] for k, v in calibration["uncalibrated"].items()}
        assert row["label_probs"] == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
        assert row["parsed"] == max(row["label_probs"], key=row["label_probs"].get)


def test_content_free_calls_are_rows_of_the_run_but_not_items(tmp_path: Path, stub, stub_model: str, store: Store):
    from llmbus.experiments.browse import run_rows
    from llmbus.run.summary import summarize

    write_items(tmp_path / "items.jsonl", 60)
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl", fewshot={"k": 2, "strategy": "random"},
                                output={"labels": ["ham", "spam"], "calibrate": ["N/A", "[MASK]"]}))
    run_id = run_task(spec, stub_model, store, RunOptions(limit=20, concurrency=4))
    items = list(store.iter_calls(run_id))
    every = list(store.iter_calls(run_id, content_free=True))
    free = [r for r in every if r["item_id"].startswith("content-free:")]
    assert len(items) == 20 and len(every) == 20 + len(free)  # items are what they were
    assert len(free) == sum(r["meta"]["calibration"]["calls"] for r in items) == stub.requests - 20 > 20
    for row in free:  # random shots: two content-free prompts per item (shared ones are asked once)
        index, _, item_id = row["item_id"].removeprefix("content-free:").partition(":")
        text = ["N/A", "[MASK]"][int(index)]
        assert row["meta"]["for_item"] == item_id and row["meta"]["content_free"] == text
        assert row["prompt"].splitlines()[-2] == f"SMS: {text}" and row["error_kind"] is None
        assert row["cost_usd"] > 0 and set(row["label_probs"]) == {"ham", "spam"} and row["expected"] is None
    summary = summarize(store, store.get_run(run_id))
    assert summary.items == 20 and summary.cost_usd == pytest.approx(sum(r["cost_usd"] for r in items))
    assert run_rows(store, run_id)[0].items == 20
    assert store.answered_items(run_id) == {r["item_id"] for r in items}


def test_a_run_over_items_its_caller_chose_is_tagged_and_cannot_be_resumed(tiny_task: Path, stub, stub_model: str,
                                                                            store: Store):
    from llmbus.errors import LlmbusError
    from llmbus.task.data import Split, load_items, split_items

    spec = load_spec(tiny_task)
    split = split_items(spec, load_items(spec))
    run_id = run_task(spec, stub_model, store, RunOptions(tag="optimize:x"),
                      subset=Split(pool=split.pool, eval=split.eval[:3]))
    assert [r["id"] for r in store.list_runs(tag="optimize:x")] == [run_id]
    assert len(list(store.iter_calls(run_id))) == 3
    with pytest.raises(LlmbusError, match="cannot be resumed"):
        run_task(spec, stub_model, store, RunOptions(resume=run_id))
