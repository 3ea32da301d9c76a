"""The gateway's own cost: req/s and added latency of `llmbus serve` against the floor for any Python proxy and
the LiteLLM proxy, all in front of the same instant stub, at growing concurrency, in one run.

    .venv/bin/python bench/gateway.py [--concurrency 32,128,512] [--requests 3000] [--before-src /work/main/src]
                                      [--no-litellm]

Every server runs under uvicorn in its own process on 127.0.0.1 (the stub too, so it is never the bottleneck:
`direct` shows how fast it answers): `direct` (the client straight at the stub), `minimal proxy` (starlette +
httpx: forward body, return body — bench/gateway_servers.py), `llmbus` (`llmbus serve` with an API key, the call
log on a fresh SQLite file and the access log on, caches off: every request goes to the backend), `llmbus
before` (the same from `--before-src`, e.g. a checkout of main) and `litellm` (the LiteLLM proxy with the same
route, installed by this bench into its own venv under ~/.cache/llmbus/bench on first use). One asyncio aiohttp
client sends `--requests` chat requests per concurrency level (after a warm-up) and counts req/s, p50/p99
latency, connection errors (the connection dropped or refused) and other non-200 answers; added latency is
each proxy's percentile minus direct's. After each llmbus run the gateway is stopped with SIGTERM and its call
log must hold one row per request. Targets: llmbus ≥ 0.8× the minimal proxy's req/s and ≥ LiteLLM's, p99 added
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import yaml

from llmbus.providers.llamacpp import free_port

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
    rows: int | None = None  # call-log rows (llmbus targets)

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


def measure(target: str, url: str, levels: list[int], requests: int, headers: dict[str, str]) -> list[Result]:
    asyncio.run(drive(url, headers, 16, 300))  # warm-up: connections, caches, JIT-free but lazy imports
    results = []
    for concurrency in levels:
        seconds, latencies, conn, other = asyncio.run(drive(url, headers, concurrency, requests))
        results.append(Result(target, concurrency, requests, seconds, latencies, conn, other))
        print(f"  {target:14} c={concurrency:<4} {results[-1].rps:7.0f} req/s  p50 {results[-1].pct(50):6.1f} ms  "
              f"p99 {results[-1].pct(99):7.1f} ms  conn errors {conn}  other {other}", flush=True)
    return results


def llmbus_target(name: str, stub_url: str, levels: list[int], requests: int, folder: Path,
                  src: str | None) -> list[Result]:
    """`llmbus serve` (from `src`, else this checkout) in front of the stub; rows counted after SIGTERM."""
    work = folder / name.replace(" ", "-")
    work.mkdir()
    (work / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"openai:stub": {
        "base_url": stub_url, "model": "stub-model", "max_retries": 0, "timeout_s": 60}}}))
    (work / "serve.yaml").write_text(yaml.safe_dump({"models": {"chat": {"model": "openai:stub"}},
                                                     "keys": [{"key": KEY, "name": "bench"}],
                                                     "cache": {"exact": False}}))
    port = free_port()
    env = {"LLMBUS_CONFIG": str(work / "llmbus.yaml"), "LLMBUS_THREADS": "1"}
    if src:
        env["PYTHONPATH"] = src
    db = work / "calls.db"
    command = [sys.executable, "-m", "llmbus.cli", "serve", "--config", str(work / "serve.yaml"), "--db", str(db),
               "--port", str(port)]
    with started(command, f"http://127.0.0.1:{port}/health", env, log=work / "gateway.log"):
        results = measure(name, f"http://127.0.0.1:{port}/v1/chat/completions", levels, requests,
                          {"Authorization": f"Bearer {KEY}"})
    answered_rows = "select count(*) from calls where task = 'gateway:chat' and error_kind is null"
    rows = sqlite3.connect(db).execute(answered_rows).fetchone()[0]
    answered = sum(len(r.latencies) for r in results) + 300  # + the warm-up
    print(f"  {name:14} call-log rows {rows} for {answered} answered requests", flush=True)
    for result in results:
        result.rows = rows - (answered - len(result.latencies))  # this level's share: all rows minus the others
    return results


def ensure_litellm() -> Path:
    """The LiteLLM proxy's own venv (made on first use: `pip install litellm[proxy]`)."""
    litellm = LITELLM_VENV / "bin" / "litellm"
    if not litellm.exists():
        print("installing litellm[proxy] into its own venv (first run only) …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"], check=True)
    return litellm


def litellm_target(stub_url: str, levels: list[int], requests: int, folder: Path) -> list[Result]:
    config = folder / "litellm.yaml"
    config.write_text(yaml.safe_dump({"model_list": [{"model_name": "chat", "litellm_params": {
        "model": "openai/stub-model", "api_base": stub_url, "api_key": "sk-stub"}}],
        "general_settings": {"master_key": LITELLM_KEY}}))
    port = free_port()
    command = [str(ensure_litellm()), "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    env = {"LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true", "LITELLM_TELEMETRY": "False"}
    with started(command, f"http://127.0.0.1:{port}/health/liveliness", env, log=folder / "litellm.log"):
        return measure("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", levels, requests,
                       {"Authorization": f"Bearer {LITELLM_KEY}"})


def report(results: list[Result]) -> None:
    by = {(r.target, r.concurrency): r for r in results}
    levels = sorted({r.concurrency for r in results})
    print("\n| target | conc. | req/s | × minimal proxy | p50 ms | p99 ms | p50 added | p99 added | p99 added − "
          "minimal's | conn. errors | other errors | rows == requests |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for target in dict.fromkeys(r.target for r in results):
        for c in levels:
            r, direct, floor = by.get((target, c)), by[("direct", c)], by.get(("minimal proxy", c))
            if r is None:
                continue
            ratio = f"{r.rps / floor.rps:.2f}×" if floor else "-"
            added50, added99 = r.pct(50) - direct.pct(50), r.pct(99) - direct.pct(99)
            over = f"{added99 - (floor.pct(99) - direct.pct(99)):+.1f}" if floor else "-"
            rows = "-" if r.rows is None else ("yes" if r.rows == len(r.latencies) else f"NO ({r.rows})")
            print(f"| {target} | {c} | {r.rps:.0f} | {ratio} | {r.pct(50):.1f} | {r.pct(99):.1f} | {added50:+.1f} | "
                  f"{added99:+.1f} | {over} | {r.connection_errors} | {r.other_errors} | {rows} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="32,128,512")
    parser.add_argument("--requests", type=int, default=3000, help="requests per target and concurrency level")
    parser.add_argument("--before-src", help="a src/ folder of another llmbus checkout, measured as `llmbus before`")
    parser.add_argument("--no-litellm", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-gateway-") as tmp:
        folder = Path(tmp)
        stub_port, proxy_port = free_port(), free_port()
        stub_url = f"http://127.0.0.1:{stub_port}/v1"
        with started(uvicorn_command("gateway_servers:stub_app", stub_port), stub_url + "/models"), \
                started(uvicorn_command("gateway_servers:proxy_app", proxy_port),
                        f"http://127.0.0.1:{proxy_port}/", {"BENCH_UPSTREAM": stub_url}):
            results += measure("direct", stub_url + "/chat/completions", levels, args.requests, {})
            results += measure("minimal proxy", f"http://127.0.0.1:{proxy_port}/v1/chat/completions", levels,
                               args.requests, {})
            results += llmbus_target("llmbus", stub_url, levels, args.requests, folder, None)
            if args.before_src:
                results += llmbus_target("llmbus before", stub_url, levels, args.requests, folder, args.before_src)
            if not args.no_litellm:
                results += litellm_target(stub_url, levels, args.requests, folder)
    report(results)


if __name__ == "__main__":
    main()
