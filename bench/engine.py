"""The run engine's own cost: `llmbus run` vs a plain httpx thread pool sending the same bodies to a stub that
answers instantly, at growing sizes — items/s, their ratio and peak RSS, from one run; then the nearest-shot
path with a cold and a warm embedding cache.

    .venv/bin/python bench/engine.py [--sizes 2000,8000,32000] [--concurrency 8] [--nearest 2000]
                                     [--baseline OLD_SRC] [--repeat 1]

The stub (bench/instant_stub.py: Starlette under uvicorn) runs in its own process on 127.0.0.1 and is never the
bottleneck: the bench first measures the plain pool against the old stdlib test stub (tests/openai_stub.py,
which capped both sides near 180 items/s and made llmbus look 0.95×) and stops unless the pool reaches at least
3× that rate against the instant stub. Both sides send the same requests (the plain pool's bodies are built from
`llmbus.render_requests`). llmbus runs as the real CLI in a subprocess (a fresh SQLite call log, no cache); its
items/s is over its answering time (the run's wall_s), "wall" over the whole command (start-up, loading and
checking the dataset included); its peak RSS is the process's own VmHWM. `--baseline` also runs another llmbus
source tree (e.g. `git archive BASE src | tar -x -C /tmp/base`) the same way, so before and after come from one
run on one machine. Targets: llmbus ≥ 0.8× the pool at every size, RSS at the largest size within 10 MB of the
smallest.

The nearest line runs a classify task with `fewshot: {k: 8, strategy: nearest}` over --nearest items twice on
one SQLite store: cold (fresh DB, every pool and query text embedded by MiniLM) and warm (the same DB, --no-cache
so answers are asked again, every vector read from the store's embeddings table) — items/s, wall time, ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

import llmbus
from llmbus import free_port
from peak import CLI_WITH_PEAK

ROOT = Path(__file__).resolve().parents[1]
OLD_STUB = f"""
import sys, time
sys.path.insert(0, {str(ROOT / 'tests')!r})
from openai_stub import StubServer
with StubServer(port=int(sys.argv[1])):
    while True:
        time.sleep(3600)
"""
STUB_HEADROOM = 3.0  # the plain pool against the instant stub vs against the old stub, at least


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


def request_bodies(task: Path) -> list[dict[str, object]]:
    """The chat bodies llmbus sends for the task's eval items (what the plain pool posts): the rendered turns,
    the task's params, and the logprobs a classify answer is scored from."""
    return [{"model": "stub-model", "messages": [dict(turn) for turn in request.messages],
             "max_tokens": request.max_tokens, **request.options(),
             **({"logprobs": True, "top_logprobs": 20} if request.labels else {})}
            for request in llmbus.render_requests(task)]


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


@dataclass
class Measured:
    """One `llmbus run` of the bench task."""

    items_per_s: float  # over the run's answering time (its wall_s)
    wall_items_per_s: float  # over the whole command
    peak_mb: float


def llmbus_run(task: Path, folder: Path, concurrency: int, src: Path | None = None) -> Measured:
    """`llmbus run` in its own process (from the source tree `src` when given) on a fresh call log."""
    (folder / "calls.db").unlink(missing_ok=True)
    summary, wall = llmbus_summary(task, folder, concurrency, src)
    items = int(str(summary["items"]))
    return Measured(float(str(summary["items_per_s"])), items / wall, int((folder / "peak_kb").read_text()) / 1024)


def llmbus_summary(task: Path, folder: Path, concurrency: int,
                   src: Path | None = None) -> tuple[dict[str, object], float]:
    """`llmbus run --no-cache --json`'s summary and the command's wall seconds (its process start included)."""
    env = {**os.environ, "LLMBUS_CONFIG": str(folder / "llmbus.yaml"), "LLMBUS_DB": str(folder / "calls.db")}
    if src is not None:
        env["PYTHONPATH"] = str(src)
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


@contextmanager
def stub_process(args: list[str]) -> Iterator[str]:
    """A stub server in its own process on a free 127.0.0.1 port; yields its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen([sys.executable, *args, str(port)])
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(200):
            try:
                httpx.get(f"{base_url}/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield base_url
    finally:
        process.terminate()
        process.wait()


def check_headroom(instant_url: str, concurrency: int) -> None:
    """Stop unless the plain pool gets ≥ STUB_HEADROOM× more from the instant stub than from the old stub."""
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-") as tmp:
        bodies = request_bodies(write_task(Path(tmp), 2000))
    with stub_process(["-c", OLD_STUB]) as old_url:
        old = plain_pool(old_url, bodies, concurrency)
    new = plain_pool(instant_url, bodies, concurrency)
    print(f"stub check: plain pool {new:.0f} items/s against the instant stub, {old:.0f} against the old stdlib "
          f"stub: {new / old:.1f}x (need ≥ {STUB_HEADROOM:g}x)", flush=True)
    if new < STUB_HEADROOM * old:
        raise SystemExit("the stub limits the plain pool: measure on a quieter machine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,32000")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--nearest", type=int, default=2000, help="items of the nearest-shot line (0: skip it)")
    parser.add_argument("--baseline", type=Path, help="another llmbus source tree (its src/ folder) to run too")
    parser.add_argument("--repeat", type=int, default=1, help="rounds per size (medians are shown)")
    args = parser.parse_args()
    sides = {"llmbus": None, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with stub_process([str(ROOT / "bench" / "instant_stub.py")]) as base_url:
        check_headroom(base_url, args.concurrency)
        header = f"{'items':>7} {'plain/s':>8}" + "".join(f" {name + '/s':>11} {'ratio':>6} {'wall/s':>7} {'RSS MB':>7}"
                                                          for name in sides)
        print(header)
        peaks: dict[str, list[float]] = {name: [] for name in sides}
        for n in (int(s) for s in args.sizes.split(",")):
            with tempfile.TemporaryDirectory(prefix="llmbus-bench-") as tmp:
                folder = Path(tmp)
                task = write_task(folder, n)
                write_config(folder, base_url)
                bodies = request_bodies(task)
                plain: list[float] = []
                runs: dict[str, list[Measured]] = {name: [] for name in sides}
                for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every side
                    plain.append(plain_pool(base_url, bodies, args.concurrency))
                    for name, src in sides.items():
                        runs[name].append(llmbus_run(task, folder, args.concurrency, src))
                pool = statistics.median(plain)
                line = f"{len(bodies):>7} {pool:>8.0f}"
                for name in sides:
                    rate = statistics.median(m.items_per_s for m in runs[name])
                    wall = statistics.median(m.wall_items_per_s for m in runs[name])
                    peak = statistics.median(m.peak_mb for m in runs[name])
                    peaks[name].append(peak)
                    line += f" {rate:>11.0f} {rate / pool:>6.2f} {wall:>7.0f} {peak:>7.0f}"
                print(line, flush=True)
        for name, values in peaks.items():
            print(f"{name} RSS growth, largest vs smallest size: {values[-1] - values[0]:+.1f} MB (target ≤ 10)")
        if args.nearest:
            nearest_bench(base_url, args.nearest, args.concurrency)


if __name__ == "__main__":
    main()
