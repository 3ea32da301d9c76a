"""A run never ends `running` with paid answers unlogged: bad rows stop it before the first call; on SIGTERM or
an error the calls in flight are logged; weak samples are named; --stratify balances and survives --resume."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import wait_for_calls, write_items, write_spec
from llmbus.errors import DataError
from llmbus.providers import Request, open_provider
from llmbus.providers.base import Completion
from llmbus.providers.config import resolve_model
from llmbus.run.engine import eval_items, run_task
from llmbus.run.options import RunHooks, RunOptions
from llmbus.run.summary import summarize
from llmbus.store import Store
from llmbus.task.spec import load_spec
from test_cli import assert_one_line_error, llmbus


def _sorted_items(path: Path, counts: dict[str, int]) -> Path:
    rows = [{"id": f"{label}{i}", "text": f"{'win a free spam prize' if label == 'spam' else 'see you'} {i}",
             "label": label} for label, n in counts.items() for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_row_missing_a_prompt_field_stops_the_run_before_any_call(tmp_path: Path, stub, stub_model: str):
    rows = [{"id": f"m{i}", "text": f"see you {i}", "subject": "hi", "label": "ham"} for i in range(30)]
    del rows[17]["subject"]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = write_spec(tmp_path / "task.yaml", "items.jsonl", fewshot={"k": 0, "pool_fraction": 0.01},
                      prompt="Subject: {{ item.subject }}\nSMS: {{ item.text }}\nLabel:")
    result = llmbus("run", str(task), "--model", stub_model)
    assert_one_line_error(result, "items.jsonl:18", "item 'm17'", "subject")
    assert sum(stub.state.attempts.values()) == 0  # nothing was spent
    assert Store().list_runs() == []  # and no run is left behind as `running`
    with pytest.raises(DataError, match=r"items\.jsonl:18"):
        run_task(load_spec(task), stub_model, Store())


def test_sigterm_logs_the_answers_in_flight_and_marks_the_run_interrupted(tmp_path: Path, stub, stub_model: str):
    stub.state.delay_s = 0.3  # under the client timeout (0.5 s): one request per item
    write_items(tmp_path / "items.jsonl", 60)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    db = tmp_path / "term.db"
    proc = subprocess.Popen([sys.executable, "-m", "llmbus.cli", "run", str(task), "--model", stub_model,
                             "--db", str(db), "--concurrency", "4", "--json"],
                            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_calls(db, 4)
    time.sleep(0.15)  # mid-flight: requests are at the stub
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    store = Store(str(db))
    run = store.list_runs()[0]
    assert run["status"] == "interrupted"
    logged = len(list(store.iter_calls(run["id"])))
    asked = sum(stub.state.attempts.values())
    assert 4 <= logged < 60
    assert logged == asked  # every request the model answered (and billed) is in the log


class _BreaksOnItem:
    """The real OpenAI-compatible provider, with a bug injected: one item raises a non-provider error."""

    def __init__(self, model: str, poison: str):
        self.inner = open_provider(resolve_model(model))
        self.poison = poison

    def complete(self, request: Request) -> Completion:
        if request.prompt.splitlines()[-2].endswith(self.poison):
            time.sleep(0.2)  # let the other calls in flight finish first
            raise RuntimeError("bug")
        return self.inner.complete(request)

    def check(self) -> None:
        self.inner.check()

    def close(self) -> None:
        self.inner.close()


def test_an_error_mid_run_marks_it_failed_and_keeps_what_was_answered(tiny_task: Path, stub, stub_model: str,
                                                                      store: Store):
    spec = load_spec(tiny_task)
    items, _ = eval_items(spec)
    provider = _BreaksOnItem(stub_model, items[5].fields["text"])
    with pytest.raises(RuntimeError):
        run_task(spec, stub_model, store, RunOptions(concurrency=2), provider=provider)  # type: ignore[arg-type]
    provider.close()
    run = store.list_runs()[0]
    assert run["status"] == "failed"
    assert len(list(store.iter_calls(run["id"]))) == sum(stub.state.attempts.values()) > 0


def test_a_sample_missing_labels_is_named_before_the_first_call_and_in_the_summary(tmp_path: Path, stub,
                                                                                   stub_model: str, store: Store):
    _sorted_items(tmp_path / "items.jsonl", {"ham": 40, "spam": 0})
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl"))
    heard: list[str] = []
    run_id = run_task(spec, stub_model, store, hooks=RunHooks(on_warning=heard.append))
    assert any("never expected: spam" in w for w in heard)
    summary = summarize(store, store.get_run(run_id))
    assert summary.value == 1.0 and any("never expected: spam" in w for w in summary.warnings)
    result = llmbus("run", str(tmp_path / "task.yaml"), "--model", stub_model, "--limit", "20")
    assert result.returncode == 0 and "warning:" in result.stderr and "never expected: spam" in result.stderr


def test_limit_on_a_label_sorted_file_is_a_representative_sample(tmp_path: Path, stub, stub_model: str,
                                                                 store: Store):
    _sorted_items(tmp_path / "items.jsonl", {"ham": 150, "spam": 50})
    spec = load_spec(write_spec(tmp_path / "task.yaml", "items.jsonl"))
    run_id = run_task(spec, stub_model, store, RunOptions(limit=40))
    counts = Counter(c["expected"] for c in store.iter_calls(run_id))
    assert 25 <= counts["ham"] <= 35 and 5 <= counts["spam"] <= 15  # 3:1 like the file, not 40 hams


def test_stratify_balances_classes_and_resume_keeps_the_same_items(tmp_path: Path, stub, stub_model: str):
    _sorted_items(tmp_path / "items.jsonl", {"ham": 150, "spam": 30})
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    db = str(tmp_path / "s.db")
    result = llmbus("run", str(task), "--model", stub_model, "--limit", "40", "--stratify", "--db", db, "--json")
    assert result.returncode == 0, result.stderr
    store = Store(db)
    run = store.list_runs()[0]
    assert run["sampling"] == "balanced"
    first = {c["item_id"]: c["expected"] for c in store.iter_calls(run["id"])}
    assert Counter(first.values()) == {"ham": 20, "spam": 20}
    with store.engine.begin() as conn:  # lose half the answers, then resume
        conn.execute(sa.text("delete from calls where id % 2 = 0"))
    resumed = llmbus("run", str(task), "--resume", run["id"], "--db", db, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert {c["item_id"] for c in store.iter_calls(run["id"])} == set(first)
