"""The gateway's own cost: req/s and added latency of `llmbus serve` against the floor for any Python proxy and
the LiteLLM proxy, all in front of the same instant stub, at growing concurrency, in one run.

    .venv/bin/python bench/gateway.py [--concurrency 32,128,512] [--requests 2000] [--rounds 3]
                                      [--before-src ../main/src] [--no-litellm]

Every server runs under uvicorn in its own process on 127.0.0.1 (the stub too, so it is never the bottleneck:
`direct` shows how fast it answers): `direct` (the client straight at the stub), `minimal proxy` (starlette +
httpx: forward body, return body — bench/gateway_servers.py), `llmbus` (`llmbus serve` with an API key, the call
log on a fresh SQLite file and the access log on, caches off: every request goes to the backend), `llmbus
before` (the same from `--before-src`, e.g. a checkout of main) and `litellm` (the LiteLLM proxy with the same
route, installed by this bench into its own venv under ~/.cache/llmbus/bench on first use). One asyncio aiohttp
client sends `--requests` chat requests per target and concurrency level (after a warm-up), in `--rounds`
interleaved rounds (the targets' order rotated each round; medians reported), and counts req/s, p50/p99 latency,
connection errors (the connection dropped or refused) and other non-200 answers; added latency is each
proxy's percentile minus direct's. At the end the gateways are stopped with SIGTERM and each call log must
hold one row per answered request. Targets: llmbus ≥ 0.8× the minimal proxy's req/s and ≥ LiteLLM's, p99 added
≤ 10 ms over the minimal proxy's, 0 connection errors, rows == requests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

from llmbus import free_port

BENCH = Path(__file__).resolve().parent
LITELLM_VENV = Path.home() / ".cache" / "llmbus" / "bench" / "litellm-venv"
KEY = "sk-bench-key"
LITELLM_KEY = "sk-" + "b3nch" * 8  # its proxy refuses to start without a strong master key


@dataclass
class Result:
    """One target at one concurrency."""

    target: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    connection_errors: int
    other_errors: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def wait_ready(url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    """Until GET url answers (any status); fails if the process exits first."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout_s}s")


@contextmanager
def started(command: list[str], health: str, env: dict[str, str] | None = None,
            log: Path | None = None) -> Iterator[subprocess.Popen]:
    """A server process, ready; stopped with SIGTERM (and waited for) afterwards."""
    out = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(health, process)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        if log:
            out.close()  # type: ignore[union-attr]


def uvicorn_command(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), app, "--port", str(port), "--log-level",
            "warning", "--no-access-log", "--timeout-keep-alive", "75", "--backlog", "4096"]


async def drive(url: str, headers: dict[str, str], concurrency: int, requests: int) -> tuple[float, list[float],
                                                                                           int, int]:
    """Send `requests` chat requests with `concurrency` in flight; (seconds, latencies, conn errors, others).
    The client is aiohttp: httpx's connection pool itself becomes the bottleneck past ~100 connections."""
    latencies: list[float] = []
    errors = {"connection": 0, "other": 0}
    counter = iter(range(requests))
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        async def worker() -> None:
            for i in counter:
                body = {"model": "chat", "messages": [{"role": "user", "content": f"hello {i}"}], "max_tokens": 8}
                tick = time.perf_counter()
                try:
                    async with session.post(url, json=body) as response:
                        await response.read()
                        status = response.status
                except (TimeoutError, aiohttp.ClientConnectionError):
                    errors["connection"] += 1
                    continue
                if status == 200:
                    latencies.append(time.perf_counter() - tick)
                else:
                    errors["other"] += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return seconds, latencies, errors["connection"], errors["other"]


@dataclass
class Target:
    """A server under test: where to send, with which headers; `db` is an llmbus target's call log."""

    name: str
    url: str
    headers: dict[str, str]
    db: Path | None = None
    answered: int = 0


def llmbus_server(stack: ExitStack, name: str, stub_url: str, folder: Path, src: str | None) -> Target:
    """`llmbus serve` (from `src`, else this checkout) in front of the stub, with a key and a fresh call log."""
    work = folder / name.replace(" ", "-")
    work.mkdir()
    (work / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"openai:stub": {
        "base_url": stub_url, "model": "stub-model", "max_retries": 0, "timeout_s": 60}}}))
    (work / "serve.yaml").write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:stub"}},
                                                     "keys": [{"key": KEY, "name": "bench"}],
                                                     "cache": {"exact": False}}))
    port = free_port()
    env = {"LLMBUS_CONFIG": str(work / "llmbus.yaml"), "LLMBUS_THREADS": "1", **({"PYTHONPATH": src} if src else {})}
    command = [sys.executable, "-m", "llmbus.cli", "serve", "--config", str(work / "serve.yaml"), "--db",
               str(work / "calls.db"), "--port", str(port)]
    stack.enter_context(started(command, f"http://127.0.0.1:{port}/health", env, log=work / "gateway.log"))
    return Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {KEY}"},
                  work / "calls.db")


def ensure_litellm() -> Path:
    """The LiteLLM proxy's own venv (made on first use: `pip install litellm[proxy]`)."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print("installing litellm[proxy] into its own venv (first run only) …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return litellm


def litellm_server(stack: ExitStack, stub_url: str, folder: Path) -> Target:
    """The LiteLLM proxy with the same route (model `chat` → the stub), its master key as the API key."""
    config = folder / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "chat", "litellm_params": {
        "model": "openai/stub-model", "api_base": stub_url, "api_key": "sk-stub"}}],
        "general_settings": {"master_key": LITELLM_KEY}}))
    port = free_port()
    command = [str(ensure_litellm()), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    env = {"LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_TELEMETRY": "False"}
    stack.enter_context(started(command, f"http://127.0.0.1:{port}/health/liveliness", env,
                                log=folder / "litellm.log"))
    return Target("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", {"Authorization": f"Bearer {LITELLM_KEY}"})


def run_rounds(targets: list[Target], levels: list[int], requests: int, rounds: int) -> list[Result]:
    """Every target at every level, `rounds` times, the targets' order rotated each round (so slow phases of
    a shared machine fall on all of them)."""
    for target in targets:  # warm-up: connections, lazy imports, first-request paths
        _, latencies, _, _ = asyncio.run(drive(target.url, target.headers, 16, 300))
        target.answered += len(latencies)
    results = []
    for round_ in range(rounds):
        order = targets[round_ % len(targets):] + targets[:round_ % len(targets)]
        for concurrency in levels:
            for target in order:
                seconds, latencies, conn, other = asyncio.run(drive(target.url, target.headers, concurrency,
                                                                    requests))
                target.answered += len(latencies)
                result = Result(target.name, concurrency, requests, seconds, latencies, conn, other)
                results.append(result)
                print(f"  round {round_ + 1} {target.name:14} c={concurrency:<4} {result.rps:7.0f} req/s  "
                      f"p50 {result.pct(50):6.1f} ms  p99 {result.pct(99):7.1f} ms  conn errors {conn}  "
                      f"other {other}", flush=True)
    return results


def report(results: list[Result], rows: dict[str, tuple[int, int]]) -> None:
    """The medians over rounds per target and level, ratios against the minimal proxy in the same rounds."""
    def median(target: str, c: int, what: str) -> float:
        values = [r.rps if what == "rps" else r.pct(float(what)) for r in results
                  if r.target == target and r.concurrency == c]
        return float(np.median(values))

    levels = sorted({r.concurrency for r in results})
    print("\n| target | conc. | req/s | × minimal proxy | p50 ms | p99 ms | p50 added | p99 added | p99 added − "
          "minimal's | conn. errors | other errors | rows == answered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for target in dict.fromkeys(r.target for r in results):
        for c in levels:
            rps, p50, p99 = median(target, c, "rps"), median(target, c, "50"), median(target, c, "99")
            floor_rps, floor_p99 = median("minimal proxy", c, "rps"), median("minimal proxy", c, "99")
            d50, d99 = p50 - median("direct", c, "50"), p99 - median("direct", c, "99")
            over = d99 - (floor_p99 - median("direct", c, "99"))
            conn = sum(r.connection_errors for r in results if r.target == target and r.concurrency == c)
            other = sum(r.other_errors for r in results if r.target == target and r.concurrency == c)
            logged = "-" if target not in rows else ("yes" if rows[target][0] == rows[target][1] else
                                                     f"NO ({rows[target][0]} of {rows[target][1]})")
            print(f"| {target} | {c} | {rps:.0f} | {rps / floor_rps:.2f}× | {p50:.1f} | {p99:.1f} | {d50:+.1f} | "
                  f"{d99:+.1f} | {over:+.1f} | {conn} | {other} | {logged} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="32,128,512")
    parser.add_argument("--requests", type=int, default=2000, help="requests per target, level and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    parser.add_argument("--before-src", help="a src/ folder of another llmbus checkout, measured as `llmbus before`")
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-gateway-") as tmp:
        folder = Path(tmp)
        stub_port, proxy_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}/v1"
        with ExitStack() as stack:
            stack.enter_context(started(uvicorn_command("gateway_servers:stub_app", stub_port), stub_url + "/models"))
            stack.enter_context(started(uvicorn_command("gateway_servers:proxy_app", proxy_port),
                                        f"http://127.0.0.1:{proxy_port}/", {"BENCH_UPSTREAM": stub_url}))
            targets = [Target("direct", stub_url + "/chat/completions", {}),
                       Target("minimal proxy", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", {}),
                       llmbus_server(stack, "llmbus", stub_url, folder, None)]
            if args.before_src:
                targets.append(llmbus_server(stack, "llmbus before", stub_url, folder, args.before_src))
            if not args.no_litellm:
                targets.append(litellm_server(stack, stub_url, folder))
            results = run_rounds(targets, levels, args.requests, args.rounds)
        # the servers are stopped (SIGTERM): every llmbus call log must hold a row per answered request
        answered_rows = "select count(*) from calls where task = 'gateway:chat' and error_kind is null"
        rows = {t.name: (sqlite3.connect(t.db).execute(answered_rows).fetchone()[0], t.answered)
                for t in targets if t.db is not None}
    report(results, rows)


if __name__ == "__main__":
    main()
