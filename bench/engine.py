"""The run engine's own cost: `llmbus run` vs a plain httpx thread pool sending the same bodies to a stub that
answers instantly, at growing sizes — items/s, their ratio and peak RSS, from one run; then the nearest-shot
path with a cold and a warm embedding cache.

    .venv/bin/python bench/engine.py [--sizes 2000,8000,32000] [--concurrency 8] [--nearest 2000]

Both sides send the same requests (llmbus's own `to_payload` builds the plain pool's bodies) to the same
OpenAI-compatible stub (tests/openai_stub.py) running in its own process on 127.0.0.1. llmbus runs as the real
CLI in a subprocess (a fresh SQLite call log, no cache) and reports items/s over its answering time; its peak RSS
comes from the kernel (wait4). Targets: ratio ≥ 0.8 at every size, RSS at the largest size within 20 MB of the
smallest.

The nearest line runs a classify task with `fewshot: {k: 8, strategy: nearest}` over --nearest items twice on
one SQLite store: cold (fresh DB, every pool and query text embedded by MiniLM) and warm (the same DB, --no-cache
so answers are asked again, every vector read from the store's embeddings table) — items/s, wall time, ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

from llmbus.providers.base import Request
from llmbus.providers.llamacpp import free_port
from llmbus.providers.openai import to_payload
from llmbus.run.adapter import item_request
from llmbus.run.engine import eval_items
from llmbus.run.executors import render_items
from llmbus.task.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
STUB = f"""
import sys, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
from openai_stub import StubServer
with StubServer(port=int(sys.argv[1])):
    while True:
        time.sleep(3600)
"""


def write_task(folder: Path, n: int, fewshot: dict[str, object] | None = None) -> Path:
    """A classify task of n short items with two fixed shots (one shared prompt prefix) unless `fewshot`."""
    with (folder / "items.jsonl").open("w") as handle:
        for i in range(n):
            label = "spam" if i % 3 == 0 else "ham"
            text = f"win a free prize now {i}" if label == "spam" else f"see you at lunch {i}"
            handle.write(json.dumps({"id": f"m{i}", "text": text, "label": label}) + "\n")
    spec = {"name": "bench", "kind": "classify",
            "prompt": "{% for ex in examples %}SMS: {{ ex.text }}\nLabel: {{ ex.label }}\n{% endfor %}"
                      "SMS: {{ item.text }}\nLabel:",
            "output": {"labels": ["ham", "spam"]}, "data": {"path": "items.jsonl", "expected": "label", "id": "id"},
            "fewshot": fewshot or {"k": 2, "strategy": "fixed", "pool_fraction": 0.01}, "params": {"max_tokens": 2}}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def plain_pool(base_url: str, bodies: list[dict[str, object]], concurrency: int) -> float:
    """Items/s of a bare httpx thread pool posting the bodies."""
    with httpx.Client(base_url=base_url, timeout=30,
                      limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)) as c:
        def post(body: dict[str, object]) -> None:
            c.post("/chat/completions", json=body).raise_for_status()

        tick = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(post, bodies))
        return len(bodies) / (time.perf_counter() - tick)


# The CLI in a process that writes its own peak RSS at exit. VmHWM belongs to the process's own memory since its
# exec; the kernel's ru_maxrss would also count the bench's memory copied by fork before the exec.
CLI_WITH_PEAK = """
import atexit, re, sys
PEAK_FILE = sys.argv.pop(1)
def peak():
    status = open("/proc/self/status").read()
    open(PEAK_FILE, "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
atexit.register(peak)
from llmbus.cli import main
main()
"""


def llmbus_run(task: Path, folder: Path, concurrency: int) -> tuple[float, float]:
    """(items/s, peak RSS MB) of `llmbus run` in its own process."""
    summary, _wall = llmbus_summary(task, folder, concurrency)
    return float(summary["items_per_s"]), int((folder / "peak_kb").read_text()) / 1024


def llmbus_summary(task: Path, folder: Path, concurrency: int) -> tuple[dict[str, object], float]:
    """`llmbus run --no-cache --json`'s summary and the command's wall seconds (its process start included)."""
    env = {**os.environ, "LLMBUS_CONFIG": str(folder / "llmbus.yaml"), "LLMBUS_DB": str(folder / "calls.db")}
    peak_file = folder / "peak_kb"
    tick = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", CLI_WITH_PEAK, str(peak_file), "run", str(task), "--model",
                             "openai:bench", "--concurrency", str(concurrency), "--no-cache", "--json"],
                            capture_output=True, env=env, text=True)
    wall = time.perf_counter() - tick
    if result.returncode != 0:
        raise SystemExit(f"llmbus run failed: {result.stderr.strip()[-300:]}")
    return json.loads(result.stdout), wall


def nearest_bench(base_url: str, n: int, concurrency: int) -> None:
    """Print the nearest-shot path's items/s and wall time with a cold then a warm embedding cache."""
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-") as tmp:
        folder = Path(tmp)
        task = write_task(folder, n, {"k": 8, "strategy": "nearest", "pool_fraction": 0.2})
        write_config(folder, base_url)
        lines = {}
        for name in ("cold", "warm"):
            summary, wall = llmbus_summary(task, folder, concurrency)
            items = int(str(summary["items"]))
            lines[name] = (float(str(summary["items_per_s"])), wall, items)
            print(f"nearest k=8, {n} items ({items} answered, {n - items} in the pool), {name} embedding cache: "
                  f"{lines[name][0]:.0f} items/s answering, wall {wall:.1f} s ({items / wall:.0f} items/s)",
                  flush=True)
        print(f"nearest warm/cold: {lines['warm'][0] / lines['cold'][0]:.2f}x items/s answering, "
              f"{lines['cold'][1] / lines['warm'][1]:.2f}x faster wall")


def write_config(folder: Path, base_url: str) -> None:
    """The bench's model config: the stub as `openai:bench`."""
    (folder / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"openai:bench": {
        "base_url": base_url, "model": "stub-model", "timeout_s": 30}}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--nearest", type=int, default=2000, help="items of the nearest-shot line (0: skip it)")
    args = parser.parse_args()
    port = free_port()
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(port)])
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base_url}/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"{'items':>7} {'plain items/s':>14} {'llmbus items/s':>15} {'ratio':>6} {'llmbus RSS MB':>14}")
        rss = []
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="llmbus-bench-") as tmp:
                folder = Path(tmp)
                task = write_task(folder, n)
                write_config(folder, base_url)
                os.environ["LLMBUS_CONFIG"] = str(folder / "llmbus.yaml")
                spec = load_spec(task)
                items, selector = eval_items(spec)
                requests: list[Request] = [item_request(spec, item, prompt)
                                           for item, prompt, _ in render_items(spec, items, selector)]
                bodies = [to_payload("stub-model", "chat", r) for r in requests]
                plain = plain_pool(base_url, bodies, args.concurrency)
                ours, peak = llmbus_run(task, folder, args.concurrency)
                rss.append(peak)
                print(f"{len(items):>7} {plain:>14.0f} {ours:>15.0f} {ours / plain:>6.2f} {peak:>14.0f}", flush=True)
        print(f"RSS growth, largest vs smallest size: {rss[-1] - rss[0]:+.0f} MB (target ≤ 20)")
        if args.nearest:
            nearest_bench(base_url, args.nearest, args.concurrency)
    finally:
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
