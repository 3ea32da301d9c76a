"""`llmbus optimize` on the packaged tasks with the embedded model: the hand-written spec vs the optimizer's output
vs a plain client, all on the same held-out eval items, in one run.

    .venv/bin/python bench/optimize.py [--tasks sms_spam,topics] [--budget 3000] [--eval 400] [--objective quality]

For each task (a fresh call log, so nothing comes from an earlier run's cache):
1. `optimize(TASK, local:gemma-3-270m, budget)` with `--confirm EVAL`: its confirmation runs are the hand-written
   spec and the winner on the first EVAL eval items (never the validation items); quality with 95% CIs, prompt
   tokens per item, wall seconds per 200 items, and evaluate's paired test of winner vs hand-written.
2. Baseline: a plain httpx client sending a naive fixed 4-shot completion prompt to a default llama-server
   (`-t THREADS --parallel 4`, no `--swa-full`, so Gemma 3 cannot reuse the shared prefix), 4 requests in flight,
   the first word of 3 generated tokens taken as the label. Its answers are logged afterwards (outside its timing)
   as a run, so its CI and the paired test against the winner come from the same quality/evaluate code.
Target (SMS): optimized ≥ 0.95 accuracy at wall per 200 ≤ the baseline's, never worse than the input spec beyond
its CI.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

import llmbus
from llmbus import (
    CallRecord,
    Item,
    TaskSpec,
    balanced_pick,
    find_binary,
    free_port,
    load_items,
    match_label,
    split_items,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "local:gemma-3-270m"
FIELDS = {"sms_spam": ("SMS", "Label"), "topics": ("Question", "Topic")}


def naive_prompt(spec: TaskSpec, shots: list[Item], item: Item) -> str:
    """The fixed 4-shot completion prompt a first script would send: examples, then the item."""
    shown, answer = FIELDS[spec.name]
    lines = [f"{shown}: {' '.join(s.text(spec.data.input).split())}\n{answer}: {s.expected}\n" for s in shots]
    return "".join(lines) + f"{shown}: {' '.join(item.text(spec.data.input).split())}\n{answer}:"


def baseline(spec: TaskSpec, items: list[Item], pool: list[Item], threads: int,
             project: llmbus.Project) -> tuple[str, float]:
    """Answer `items` through a default llama-server with plain httpx; returns (its logged run id, wall s)."""
    with llmbus.get_model(MODEL) as unstarted:  # the embedded GGUF's path
        gguf = unstarted.provider.server.gguf
    port = free_port()
    server = subprocess.Popen([str(find_binary("llama-server")), "-m", str(gguf), "-t", str(threads),
                               "--parallel", "4", "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shots = balanced_pick(pool, 4, 0)
    prompts = [naive_prompt(spec, shots, item) for item in items]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)

            def ask(prompt: str) -> dict:
                tick = time.perf_counter()
                data = client.post("/completion", json={"prompt": prompt, "n_predict": 3, "temperature": 0.0,
                                                        "cache_prompt": True}).json()
                return {**data, "latency": time.perf_counter() - tick}

            tick = time.perf_counter()
            with ThreadPoolExecutor(4) as pool_:
                answers = list(pool_.map(ask, prompts))
            wall = time.perf_counter() - tick
    finally:
        server.terminate()
        server.wait()
    store = project.store
    run_id = store.create_run(task=spec.name, task_path=str(spec.source), spec_version="naive-4shot",
                              spec_json=spec.model_dump_json(by_alias=True), model="llama-server (httpx)",
                              metric=spec.main_metric, n_planned=len(items), concurrency=4, tag="bench:baseline")
    records = []
    for item, prompt, data in zip(items, prompts, answers, strict=True):
        text = str(data.get("content", ""))
        label = match_label(text, tuple(spec.output.labels or []))
        records.append(CallRecord(run_id=run_id, task=spec.name, spec_version="naive-4shot", item_id=item.id,
                                  model="llama-server (httpx)", prompt=prompt, started_at=now(), finished_at=now(),
                                  raw_output=text, parsed=label, expected=item.expected,
                                  tokens_in=int(data.get("tokens_evaluated", 0)), latency_s=data["latency"],
                                  error_kind=None if label else "label_not_in_set"))
    store.record_calls(records)
    store.update_run(run_id, status="done", wall_s=wall, finished_at=now())
    return run_id, wall


def now() -> datetime:
    return datetime.now(UTC)


def row(project: llmbus.Project, name: str, run_id: str) -> str:
    report = project.evaluate(run_id)
    run = project.get_run(run_id)
    calls = list(project.calls(run))
    tokens = sum(c.tokens_in for c in calls) / max(1, len(calls))
    value = report.values[report.metric]
    per_200 = run.wall_s * 200 / max(1, report.n)
    return (f"  {name:<44} {value.value:.3f} [{value.lo:.3f}, {value.hi:.3f}]   {tokens:7.0f}   {per_200:8.1f}"
            f"   {report.errors:4d}")


def bench_task(name: str, budget: int, n_eval: int, objective: str, threads: int, workdir: Path) -> None:
    with llmbus.open(str(workdir / f"{name}.db")) as project:
        bench_task_in(project, name, budget, n_eval, objective, threads, workdir)


def bench_task_in(project: llmbus.Project, name: str, budget: int, n_eval: int, objective: str, threads: int,
                  workdir: Path) -> None:
    """`bench_task` on an open call log."""
    spec = llmbus.load_task(ROOT / "examples" / name / "task.yaml")
    tick = time.perf_counter()
    with llmbus.get_model(MODEL) as model:
        result = project.optimize(spec, [MODEL], budget=budget, objective=objective, confirm=n_eval,
                                  output=workdir / f"{name}.opt.yaml", providers={MODEL: model.provider},
                                  on_plan=lambda p: print("\n".join(f"  plan: {line}" for line in p.lines()),
                                                          flush=True),
                                  on_stage=lambda text: print(f"    {time.strftime('%H:%M:%S')} {text}",
                                                              file=sys.stderr, flush=True))
    optimizer_wall = time.perf_counter() - tick
    split = split_items(spec, load_items(spec))
    items = split.eval[:result.confirmation.items]
    base_run, _ = baseline(spec, items, split.pool, threads, project)
    c = result.confirmation
    print(f"\n{name}: {c.items} held-out eval items, {MODEL}, {threads} threads, objective {objective}")
    print(f"  {'system':<44} {spec.main_metric} [95% CI]      tok/item  s/200 items  errors")
    print(row(project, "baseline: httpx → llama-server, naive 4-shot", base_run))
    print(row(project, f"hand-written spec ({spec.fewshot.k} {spec.fewshot.strategy})", c.original_run))
    if c.winner_run != c.original_run:
        print(row(project, f"optimized ({result.winner.candidate.name})", c.winner_run))
    print(f"  optimizer: {result.spent} model calls of {budget} ({result.cache_hits} answers from the cache), "
          f"{len([t for t in result.trials if t.deepest])} of {len(result.trials)} candidates tried, "
          f"{optimizer_wall:.0f} s in all")
    print(f"  winner vs hand-written: {c.verdict}")
    versus = project.paired(base_run, c.winner_run)
    print(f"  winner vs baseline: {versus.verdict} (Δ {versus.delta.value:+.3f}, "
          f"95% CI {versus.delta.lo:+.3f} to {versus.delta.hi:+.3f})")
    if name == "sms_spam":
        wall = {run: project.get_run(run).wall_s for run in (base_run, c.winner_run)}
        met = c.winner.value >= 0.95 and wall[c.winner_run] <= wall[base_run]
        print(f"  target (≥ 0.95 and wall ≤ baseline): {'met' if met else 'not met'}; "
              f"worse than the input beyond its CI: {'yes' if c.comparison and c.comparison.delta.hi < 0 else 'no'}")
    print("  diff:\n" + "\n".join(f"    {line}" for line in result.diff.splitlines()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="sms_spam,topics")
    parser.add_argument("--budget", type=int, default=3000, help="SMS budget; topics gets --topics-budget")
    parser.add_argument("--topics-budget", type=int, default=None, help="default: --budget")
    parser.add_argument("--eval", type=int, default=400, help="held-out eval items every system answers")
    parser.add_argument("--topics-eval", type=int, default=None, help="default: --eval")
    parser.add_argument("--objective", default="quality")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("LLMBUS_THREADS", "2")))
    args = parser.parse_args()
    os.environ["LLMBUS_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-optimize-") as tmp:
        for name in args.tasks.split(","):
            topics = name == "topics"
            budget = args.topics_budget if topics and args.topics_budget else args.budget
            n_eval = args.topics_eval if topics and args.topics_eval else args.eval
            bench_task(name, budget, n_eval, args.objective, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
