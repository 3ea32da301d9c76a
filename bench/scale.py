"""Scale-out: the local executor vs Ray on 1 node vs Ray on 2 nodes, against 1 or 2 stub replicas.

Each replica is an OpenAI-compatible stub in its own process with a fixed service time (40 ms per request, at
most 8 in flight; more wait their turn): a stand-in for a GPU endpoint, so the figures show how well each
executor keeps the replicas busy, not the stub's speed. The same task runs through `llmbus run` (in this
process, the call log in a PostgreSQL server the bench starts — SQLite is refused on 2 nodes — no cache) as:
  local  · 1 replica   (the baseline: --concurrency 8)
  ray 1 node · 1 replica  (1 worker, 8 in flight)
  ray 2 nodes · 2 replicas (2 workers, 8 in flight each; base_urls lists both replicas)
and prints items/s and the ratios against the baseline measured in the same run, plus the peak RSS of the Ray
worker processes. Targets: Ray on 1 node ≥ 0.9× local; 2 nodes + 2 replicas ≥ 1.7× 1 node + 1 replica.

    .venv/bin/python bench/scale.py [--items 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import llmbus
from engine import write_task
from llmbus import free_port
from pg_server import postgres_server

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
# A replica: the test stub's answers behind a fixed service time and a cap on requests in service.
REPLICA = f"""
import sys, threading, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
import openai_stub
slots = threading.Semaphore(8)
real_attempt = openai_stub.StubState.attempt
def attempt(self, key):
    with slots:
        time.sleep(0.040)
    return real_attempt(self, key)
openai_stub.StubState.attempt = attempt
with openai_stub.StubServer(port=int(sys.argv[1])):
    while True:
        time.sleep(3600)
"""


def start_replica() -> tuple[subprocess.Popen[bytes], str]:
    """A replica process and its base URL, once it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", REPLICA, str(port)])
    url = f"http://127.0.0.1:{port}/v1"
    import httpx

    for _ in range(100):
        try:
            httpx.get(url + "/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit("a stub replica did not start")


def ray_cmd(*args: str) -> None:
    """Run the `ray` command line (the cluster is started and stopped by this bench)."""
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=120)


class WorkerPeak:
    """Peak RSS of Ray Data worker processes (ray::MapWorker…), sampled every 0.2 s."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WorkerPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            for proc in psutil.process_iter(["name", "cmdline"]):
                try:
                    title = " ".join(proc.info["cmdline"] or []) or proc.info["name"] or ""
                    if "MapWorker" in title:
                        self.peak_mb = max(self.peak_mb, proc.memory_info().rss / 2**20)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue


def timed_run(folder: Path, task: Path, urls: list[str], db: str,
              scale: llmbus.ScaleOptions | None = None) -> tuple[float, float]:
    """(steady items/s from the first answer to the last, seconds before the first answer) of one run: Ray's
    start-up (connecting, starting actors) is a fixed cost, shown apart."""
    config = {"model": "stub-model", "timeout_s": 30, "max_concurrency": 64}
    config.update({"base_urls": urls} if len(urls) > 1 else {"base_url": urls[0]})
    (folder / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"openai:bench": config}}))
    seen: list[tuple[float, int]] = []
    tick = time.perf_counter()
    with llmbus.open(db) as project:
        project.run(task, "openai:bench", llmbus.RunOptions(use_cache=False, concurrency=8), scale=scale,
                    hooks=llmbus.RunHooks(on_progress=lambda p: seen.append((time.perf_counter(), p.done))))
    (t0, n0), (t1, n1) = seen[0], seen[-1]
    return (n1 - n0) / (t1 - t0), t0 - tick


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    token_dir = tempfile.mkdtemp(prefix="llmbus-ray-")
    (Path(token_dir) / "token").write_text(os.urandom(24).hex())
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(Path(token_dir) / "token"),
                       "RAY_USAGE_STATS_ENABLED": "0"})
    replicas = [start_replica(), start_replica()]
    urls = [url for _, url in replicas]
    port = free_port()
    try:
        with tempfile.TemporaryDirectory(prefix="llmbus-scale-") as tmp, postgres_server() as db:
            folder = Path(tmp)
            os.environ["LLMBUS_CONFIG"] = str(folder / "llmbus.yaml")
            task = write_task(folder, args.items)
            local, local_start = timed_run(folder, task, urls[:1], db)
            print(f"local · 1 replica: {local:.0f} items/s (first answer after {local_start:.1f} s)", flush=True)
            ray_cmd("start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                    "--include-dashboard", "false", "--disable-usage-stats")
            address = f"127.0.0.1:{port}"
            with WorkerPeak() as one_peak:
                one, one_start = timed_run(folder, task, urls[:1], db, llmbus.ScaleOptions("ray", address, 1))
            print(f"ray 1 node · 1 replica: {one:.0f} items/s (first answer after {one_start:.1f} s; worker peak "
                  f"RSS {one_peak.peak_mb:.0f} MB)", flush=True)
            ray_cmd("start", "--address", address, "--node-ip-address", "127.0.0.1", "--num-cpus", "1")
            with WorkerPeak() as two_peak:
                two, two_start = timed_run(folder, task, urls, db, llmbus.ScaleOptions("ray", address, 2))
            print(f"ray 2 nodes · 2 replicas: {two:.0f} items/s (first answer after {two_start:.1f} s; worker "
                  f"peak RSS {two_peak.peak_mb:.0f} MB)", flush=True)
            print(f"ratios ({args.items} items, 40 ms per request, 8 in flight per replica): "
                  f"ray 1 node / local {one / local:.2f}x (target >= 0.9); "
                  f"2 nodes + 2 replicas / 1 node + 1 replica {two / one:.2f}x (target >= 1.7)")
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        for proc, _ in replicas:
            proc.kill()


if __name__ == "__main__":
    main()
