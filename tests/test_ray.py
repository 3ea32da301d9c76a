"""`--executor ray` on a real two-node Ray cluster on 127.0.0.1 with the real PostgreSQL call log: a node dies
mid-run and every item is still answered exactly once; the driver dies and `--resume` answers only the rest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import sqlalchemy as sa

from conftest import write_items, write_spec
from llmbus.errors import LlmbusError
from llmbus.providers.llamacpp import free_port
from llmbus.run.engine import run_task
from llmbus.run.options import RunHooks, RunOptions, ScaleOptions
from llmbus.store import Store
from llmbus.store.schema import calls
from llmbus.task.spec import load_spec

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).with_name("ray"))


def _raylets() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}


def _ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=120,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A head node and a second node, one CPU each, bound to 127.0.0.1: (address, the second raylet's PID).
    Token authentication stays on (Ray's default): every process of the test, the driver too, uses the token."""
    token = tmp_path_factory.mktemp("ray") / "auth_token"
    token.write_text(os.urandom(24).hex())
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_AUTH_MODE", "token")
    mp.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    port = free_port()
    before = _raylets()
    _ray("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
         "--include-dashboard", "false", "--disable-usage-stats")
    head = _raylets() - before
    try:
        _ray("start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1")
        second = _raylets() - before - head
        assert len(head) == len(second) == 1
        yield f"127.0.0.1:{port}", second.pop()
    finally:
        _ray("stop", "--force")
        mp.undo()


def _rows(url: str, run_id: str) -> list[str]:
    engine = sa.create_engine("postgresql+psycopg://" + url.split("://", 1)[1])
    with engine.connect() as conn:
        found = [row[0] for row in conn.execute(sa.select(calls.c.item_id).where(calls.c.run_id == run_id))]
    engine.dispose()
    return found


def _task(tmp_path: Path, n: int) -> Path:
    write_items(tmp_path / "items.jsonl", n)
    return write_spec(tmp_path / "task.yaml", "items.jsonl")


def test_a_node_dies_mid_run_and_every_item_is_answered_once(cluster: tuple[str, int], tmp_path: Path, stub,
                                                              stub_model: str, postgres_url: str):
    address, second_raylet = cluster
    spec = load_spec(_task(tmp_path, 2000))
    with pytest.raises(LlmbusError, match=r"SQLite .* one machine's file"):
        run_task(spec, stub_model, Store(str(tmp_path / "local.db")),
                 scale=ScaleOptions(executor="ray", ray_address=address))
    stub.state.delay_s = 0.01
    store = Store(postgres_url)
    killed = []

    def kill_second_node(progress) -> None:  # a third of the way in
        if not killed and progress.done >= progress.total // 3:
            os.kill(second_raylet, signal.SIGKILL)
            killed.append(progress.done)

    run_id = run_task(spec, stub_model, store, RunOptions(concurrency=4),
                      scale=ScaleOptions(executor="ray", ray_address=address, workers=2),
                      hooks=RunHooks(on_progress=kill_second_node))
    run = store.get_run(run_id)
    rows = _rows(postgres_url, run_id)
    assert killed and run["status"] == "done"
    assert len(rows) == len(set(rows)) == run["n_planned"] > 1500  # every item, exactly once
    assert all(call["error_kind"] is None for call in store.iter_calls(run_id))


def test_the_driver_dies_and_resume_answers_only_the_missing(cluster: tuple[str, int], tmp_path: Path, stub,
                                                             stub_model: str, postgres_url: str):
    address, _ = cluster
    task = _task(tmp_path, 1200)
    stub.state.delay_s = 0.02
    command = [sys.executable, "-m", "llmbus.cli", "run", str(task), "--model", stub_model, "--executor", "ray",
               "--ray-address", address, "--db", postgres_url, "--json"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    store = Store(postgres_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = [r for r in store.list_runs() if r["task_path"] == str(task)]
        if runs and len(_rows(postgres_url, runs[0]["id"])) >= 200:
            break
        time.sleep(0.2)
    driver.kill()
    driver.wait(timeout=30)
    run_id = runs[0]["id"]
    logged = set(_rows(postgres_url, run_id))
    assert 200 <= len(logged) < runs[0]["n_planned"]
    asked_before = sum(stub.state.attempts.values())
    resumed = subprocess.run([*command, "--resume", run_id], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = _rows(postgres_url, run_id)
    assert len(rows) == len(set(rows)) == runs[0]["n_planned"]
    # Only the items missing from the log were asked again.
    assert sum(stub.state.attempts.values()) - asked_before == runs[0]["n_planned"] - len(logged)
