"""Stop 5 savings, as ratios from one run on the same held-out SMS items.

    .venv/bin/python bench/savings.py [--teacher MODEL] [--train 200] [--heldout 100] [--threads 2]

The teacher is the strongest model available: `--teacher` (e.g. a configured openai: endpoint), else the
embedded Gemma 3 270M. Targets (from issue 5):
  student quality ≥ 0.95× teacher at ≥ 20× lower latency per item
  cascade quality ≥ 0.98× teacher at ≤ 0.3× teacher cost
  exact-cache hit p50 ≤ 2 ms
  gateway overhead ≤ 5% vs calling llama.cpp directly
  8-concurrent throughput ≥ 2× sequential
  a repeated few-shot prefix processed ≥ 3× faster the second time
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
import llmbus
from llmbus import Request, RunOptions, free_port
from provider_overhead import LocalProvider, concurrency_ratio

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def line(name: str, value: float, target: str) -> None:
    print(f"{name:<58} {value:9.3f}   ({target})")


def quality_cost_latency(project: llmbus.Project, run: llmbus.Run) -> tuple[float, float, float]:
    s = project.summary(run)
    return s.value, s.cost_per_1k, s.latency_p50_s


def gateway_overhead(threads: int, rounds: int = 12) -> float:
    """Median latency ratio: the same 32-token generation through the gateway vs straight to its llama-server."""
    config = {"models": {"gemma": {"model": "local:gemma-3-270m"}}, "cache": {"exact": False}}
    os.environ["LLMBUS_THREADS"] = str(threads)
    project = llmbus.open(str(OUT / "gateway.db"))
    app = project.serve_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    provider = app.state.gateway.providers["local:gemma-3-270m"]
    ratios = []
    with httpx.Client(timeout=120) as client:
        for i in range(rounds):
            prompt = f"Write a short note number {i} about the sea."
            body = {"prompt": prompt, "n_predict": 32, "temperature": 0, "top_k": 1, "samplers": ["top_k"]}
            tick = time.perf_counter()
            client.post(provider.server.base_url + "/completion", json=body)
            direct = time.perf_counter() - tick
            tick = time.perf_counter()
            client.post(f"http://127.0.0.1:{port}/v1/completions",
                        json={"model": "gemma", "prompt": prompt, "max_tokens": 32})
            through = time.perf_counter() - tick
            ratios.append(through / direct)
    server.should_exit = True
    thread.join(timeout=30)
    project.close()
    return statistics.median(ratios[2:])  # the first rounds warm both paths


def prefix_speedup(provider: LocalProvider) -> float:
    """Prompt-processing time of a long few-shot prefix the first time vs the second (llama-server timings)."""
    spec = llmbus.load_task(ROOT / "examples" / "sms_spam" / "task.yaml")
    shots = "".join(f"SMS: example message number {i} about lunch, meetings and the weather today\n"
                    f"Label: {'ham' if i % 3 else 'spam'}\n" for i in range(40))
    prefix = f"[{uuid.uuid4().hex}] {spec.description}\n{shots}"  # a fresh prefix nobody cached
    times = []
    for ending in ("SMS: are we still on for tonight?\nLabel:", "SMS: WIN a free cruise now!!\nLabel:"):
        data = provider.server.post("/completion", {"prompt": prefix + ending, "n_predict": 1, "cache_prompt": True,
                                                    "temperature": 0})
        times.append(float(data["timings"]["prompt_ms"]))
    return times[0] / times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="local:gemma-3-270m")
    parser.add_argument("--train", type=int, default=200, help="items the teacher answers for distillation")
    parser.add_argument("--heldout", type=int, default=100, help="held-out items every configuration answers")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("LLMBUS_THREADS", str(args.threads))
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["LLMBUS_CONFIG"] = str(OUT / "llmbus.yaml")
    spec = llmbus.load_task(ROOT / "examples" / "sms_spam" / "task.yaml")
    print(f"teacher: {args.teacher} · task {spec.name} · {args.train} distillation items, "
          f"{args.heldout} held-out items · {args.threads} threads", flush=True)
    with llmbus.open(str(OUT / f"savings-{uuid.uuid4().hex[:6]}.db")) as project:
        held_out_figures(project, spec, args)
    after_held_out(args)


def held_out_figures(project: llmbus.Project, spec: llmbus.TaskSpec, args: argparse.Namespace) -> None:
    """Distil on the first items, then teacher, student, cascade and the cached teacher on the held-out ones."""
    train_run = project.run(spec, args.teacher, RunOptions(limit=args.train, concurrency=4))
    # register=True: the student and cascade go into llmbus.yaml, where the runs below find them
    report = project.distill(spec, train_run, OUT / "distill", register=True)
    assert isinstance(report, llmbus.DistillReport)

    def held(concurrency: int) -> RunOptions:
        return RunOptions(limit=args.heldout, offset=args.train, concurrency=concurrency)

    teacher_run = project.run(spec, args.teacher, held(4))
    student_run = project.run(spec, report.student, held(1))
    cascade_run = project.run(spec, report.cascade, held(2))
    cached_run = project.run(spec, args.teacher, held(4))  # the teacher's answers, cached

    tq, tc, tl = quality_cost_latency(project, teacher_run)
    sq, _, sl = quality_cost_latency(project, student_run)
    cq, cc, _ = quality_cost_latency(project, cascade_run)
    hits = [c.latency_s for c in project.calls(cached_run) if c.cache_hit]
    print(f"held-out accuracy: teacher {tq:.3f} · student {sq:.3f} · cascade {cq:.3f} "
          f"(threshold {report.cascade_threshold:.3f})")
    line("student quality / teacher quality", sq / tq, "target ≥ 0.95")
    line("teacher latency / student latency (p50 per item)", tl / sl, "target ≥ 20")
    line("cascade quality / teacher quality", cq / tq, "target ≥ 0.98")
    line("cascade cost / teacher cost (per 1k items)", cc / tc, "target ≤ 0.3")
    line("exact-cache hit p50 (ms)", 1000 * float(np.median(hits)) if hits else float("nan"), "target ≤ 2")


def after_held_out(args: argparse.Namespace) -> None:
    """Concurrency, the prompt-prefix cache and the gateway's overhead on the embedded model."""
    with llmbus.get_model("local:gemma-3-270m", threads=args.threads, parallel=8) as model:
        provider = model.provider
        provider.check()
        provider.complete(Request("warm up", max_tokens=4))
        ratio = concurrency_ratio(provider, 128, 16, rounds=3)
        speedup = prefix_speedup(provider)
    line("8-concurrent / sequential throughput (median of 3 rounds)", ratio, "target ≥ 2")
    line("repeated few-shot prefix: first / second prompt time", speedup, "target ≥ 3")
    line("gateway latency / direct llama-server latency", gateway_overhead(args.threads), "target ≤ 1.05")


if __name__ == "__main__":
    main()
