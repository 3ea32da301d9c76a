"""A stop never drops a paid answer and never waits past its grace period: the reliability probe B5 (a run
stopped while a 25 s backend is answering) as tests, plus the pieces it rests on (aborting calls in flight)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.errors import ProviderError
from llmbus.providers.base import Request
from llmbus.providers.config import resolve_model
from llmbus.providers.openai import OpenAIProvider
from llmbus.run.engine import eval_items
from llmbus.store import Store
from llmbus.task.spec import load_spec

SLOW_S = 25.0  # the backend's answer time for the items marked SLOW (first attempt only)
GRACE_S = 2.0


def _patient_model(stub, tmp_path: Path) -> str:
    """The stub as a model whose timeout outlasts its slowest answer (the stop, not a timeout, must end it)."""
    config = {"models": {"openai:patient": {"base_url": stub.base_url, "model": "stub-model", "timeout_s": 60,
                                            "max_retries": 3, "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0}}}
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
    return "openai:patient"


def _task_with_slow_first_items(tmp_path: Path, n: int, slow: int) -> Path:
    """A task whose first `slow` items in sample order take SLOW_S at the backend (the others its delay)."""
    write_items(tmp_path / "items.jsonl", n)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    order = [item.id for item in eval_items(load_spec(task))[0]]
    # The order depends on ids and labels only, so marking texts keeps it.
    write_items(tmp_path / "items.jsonl", n, {int(item_id[1:]): "SLOW" for item_id in order[:slow]})
    assert [item.id for item in eval_items(load_spec(task))[0]] == order
    return task


def _start_run(task: Path, model: str, db: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "llmbus.cli", "run", str(task), "--model", model, "--db", str(db),
                             "--concurrency", "4", "--grace", str(GRACE_S), "--json", *extra],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(condition, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def _rows(db: Path) -> tuple[dict[str, object], list[dict[str, object]]]:
    store = Store(str(db))
    run = store.list_runs()[0]
    return run, list(store.iter_calls(run["id"]))


def test_sigterm_while_a_25s_backend_answers_exits_within_the_grace_and_logs_every_answer(tmp_path: Path, stub):
    stub.state.delay_s, stub.state.slow_s = 1.0, SLOW_S
    model = _patient_model(stub, tmp_path)
    task = _task_with_slow_first_items(tmp_path, 30, slow=2)
    db = tmp_path / "b5.db"
    proc = _start_run(task, model, db)
    _wait(lambda: stub.state.answered >= 2)  # the first quick answers are in; the 25 s ones are at the backend
    stopped = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    took = time.monotonic() - stopped
    assert proc.returncode == 130, stderr
    assert took <= GRACE_S + 2, f"exit {took:.1f}s after SIGTERM with a {GRACE_S}s grace"
    assert "interrupted" in stderr and "Traceback" not in stderr
    run, rows = _rows(db)
    assert run["status"] == "interrupted"
    answered = [r for r in rows if r["error_kind"] is None]
    interrupted = [r for r in rows if r["error_kind"] == "interrupted"]
    assert len(answered) == stub.state.answered >= 3  # every answer the backend sent is logged, those in the grace too
    assert len(interrupted) == 2 and len(rows) == stub.requests  # every request is a row
    for row in interrupted:
        assert "SLOW" in str(row["prompt"]) and row["raw_output"] is None
        assert GRACE_S - 0.5 <= float(row["latency_s"]) < SLOW_S and row["started_at"] < row["finished_at"]
    # --resume asks the interrupted items again (the backend is quick the second time) and finishes the run
    resumed = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(task), "--resume", str(run["id"]),
                              "--db", str(db), "--json"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    run, rows = _rows(db)
    assert run["status"] == "done" and len(rows) == 27 and all(r["error_kind"] is None for r in rows)


def test_a_second_ctrl_c_stops_waiting_at_once_and_keeps_what_arrived(tmp_path: Path, stub):
    stub.state.delay_s, stub.state.slow_s = 0.2, SLOW_S
    model = _patient_model(stub, tmp_path)
    task = _task_with_slow_first_items(tmp_path, 30, slow=2)
    db = tmp_path / "twice.db"
    proc = _start_run(task, model, db, "--grace", "30")  # a grace the test would notice
    _wait(lambda: stub.state.answered >= 4)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.8)  # the quick calls in flight answer within this part of the grace
    second = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - second <= 2, "the second Ctrl-C did not end the wait"
    _, rows = _rows(db)
    assert sum(r["error_kind"] is None for r in rows) == stub.state.answered
    assert sum(r["error_kind"] == "interrupted" for r in rows) == 2 and len(rows) == stub.requests


def test_closing_the_provider_cancels_a_call_in_flight_without_sending_it_again(stub, tmp_path: Path):
    stub.state.delay_s = 5.0
    provider = OpenAIProvider(resolve_model(_patient_model(stub, tmp_path)))
    outcome: dict[str, object] = {}

    def call() -> None:
        tick = time.monotonic()
        try:
            provider.complete(Request(prompt="SMS: hi\nLabel:", max_tokens=2))
        except (ProviderError, RuntimeError) as exc:  # RuntimeError: httpx's "the client has been closed"
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - tick

    thread = threading.Thread(target=call)
    thread.start()
    _wait(lambda: stub.requests == 1)
    provider.close()
    thread.join(timeout=10)
    assert not thread.is_alive() and float(outcome["took"]) < 2.0 and "error" in outcome  # not the 5 s answer
    time.sleep(0.3)
    assert stub.requests == 1  # the retry after the abort found the client closed: nothing sent twice


@pytest.mark.parametrize("stream", [False, True])
def test_the_abort_hook_sees_the_connections_httpx_opens(stream: bool, tmp_path: Path, stub):
    """track_sockets reaches into httpx's default transport: an httpx upgrade that moves it fails here."""
    provider = OpenAIProvider(resolve_model(_patient_model(stub, tmp_path)))
    try:
        [sockets] = provider._sockets
        request = Request(prompt="SMS: hi\nLabel:", max_tokens=2)
        text = "".join(provider.stream(request)) if stream else provider.complete(request).text
        assert text == "ham"
        _wait(lambda: stub.state.answered == 1, 5)  # the stub counts a stream once its last chunk is out
        assert len(sockets._open) == 1  # the kept-alive connection of that call
    finally:
        provider.close()
    assert sockets.aborted
