"""A LoRA student for a generate task, and its precisions compared, as ratios from one run.

    .venv/bin/python bench/lora_student.py [--teacher MODEL] [--items 209] [--epochs 3] [--threads 2]

The teacher (default: the embedded Gemma 3 270M with 6 nearest few-shot examples) answers the packaged trivia
questions; `project.distill(..., student="lora")` teaches the same-size base model those answers with LoRA,
reading only the question, then merges, converts and quantizes. Printed, all on the same held-out test items,
answered one at a time:
  student (chosen precision) vs teacher: quality, latency per item, prompt tokens, cost per item
  cascade (student, teacher when the student's answer probability is below a threshold picked on validation)
  LoRA vs the untrained base model with the same short prompt (what the training bought)
  Q8_0 and Q4_K_M vs F16: file size, quality, and raw decode / prompt speed from llama-bench (interleaved rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import llmbus
from llmbus import LoraSettings, RunOptions, find_binary

ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "examples" / "trivia" / "task.yaml"


def line(name: str, value: float, note: str = "") -> None:
    print(f"{name:<62} {value:9.3f}   {note}")


def llama_bench(gguf: str, threads: int) -> tuple[float, float]:
    """(prompt tokens/s over 64 tokens, decode tokens/s over 32 tokens) from llama-bench."""
    out = subprocess.run([str(find_binary("llama-bench")), "-m", gguf, "-t", str(threads), "-p", "64", "-n", "32",
                          "-r", "2", "-o", "json"], capture_output=True, text=True, check=True)
    rows = json.loads(out.stdout)
    prompt = next(float(r["avg_ts"]) for r in rows if r["n_prompt"] > 0)
    decode = next(float(r["avg_ts"]) for r in rows if r["n_gen"] > 0)
    return prompt, decode


def speed_ratios(paths: dict[str, str], threads: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median over interleaved rounds of each file's (prompt, decode) speed divided by F16's in that round."""
    ratios: dict[str, list[tuple[float, float]]] = {q: [] for q in paths if q != "F16"}
    for _ in range(rounds):
        speeds = {q: llama_bench(p, threads) for q, p in paths.items()}
        for quant in ratios:
            ratios[quant].append((speeds[quant][0] / speeds["F16"][0], speeds[quant][1] / speeds["F16"][1]))
    return {q: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for q, rs in ratios.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="local:gemma-3-270m")
    parser.add_argument("--items", type=int, default=209, help="teacher answers to distill from")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="llama-bench rounds")
    args = parser.parse_args()
    os.environ["LLMBUS_THREADS"] = str(args.threads)
    work = Path(tempfile.mkdtemp(prefix="llmbus-bench-lora-"))
    os.environ["LLMBUS_CONFIG"] = str(work / "llmbus.yaml")
    spec = llmbus.load_task(TASK)
    print(f"teacher: {args.teacher} on {args.items} trivia questions; work dir {work}")
    with llmbus.open(str(work / "bench.db")) as project:
        teacher_run = project.run(spec, args.teacher, RunOptions(limit=args.items, concurrency=4))
        report = project.distill(spec, teacher_run, work / "distill", student="lora",
                                 settings=LoraSettings(epochs=args.epochs, threads=args.threads))
    assert isinstance(report, llmbus.LoraDistillReport)
    rows = {v["quant"]: v for v in report.variants}
    teacher, student, base, f16 = rows["teacher"], rows[report.chosen], rows["base"], rows["F16"]
    print(f"\n{report.n_train} train / {report.n_val} val / {report.n_test} test items; metric {report.metric}; "
          f"student = {report.chosen} (chosen on validation); LoRA {report.train['steps']} steps in "
          f"{report.train['seconds']:.0f} s, loss {report.train['first_loss']:.2f} → {report.train['last_loss']:.2f}")
    print(f"teacher {report.metric} {teacher['quality']:.3f} · student {student['quality']:.3f} · "
          f"base {base['quality']:.3f}\n")
    line("student/teacher quality", student["quality"] / teacher["quality"])
    line("teacher/student latency per item (one at a time)", teacher["latency_ms"] / student["latency_ms"])
    line("teacher/student prompt tokens", teacher["prompt_tokens"] / student["prompt_tokens"])
    line("student/teacher cost per item", student["cost_per_1k"] / teacher["cost_per_1k"])
    line("student/base quality (what LoRA bought, same prompt)", student["quality"] / max(base["quality"], 1e-9))
    line(f"cascade/teacher quality ({report.cascade_escalation_rate:.0%} escalated)",
         report.cascade_quality / teacher["quality"])
    line("cascade/teacher cost per item", report.cascade_cost_per_1k / teacher["cost_per_1k"])
    paths = {q: rows[q]["path"] for q in ("F16", "Q8_0", "Q4_K_M")}
    speeds = speed_ratios(paths, args.threads, args.rounds)
    for quant in ("Q8_0", "Q4_K_M"):
        line(f"{quant}/F16 file size", rows[quant]["size_mb"] / f16["size_mb"])
        line(f"{quant}/F16 quality", rows[quant]["quality"] / max(f16["quality"], 1e-9))
        line(f"{quant}/F16 prompt speed (llama-bench pp64)", speeds[quant][0])
        line(f"{quant}/F16 decode speed (llama-bench tg32)", speeds[quant][1])


if __name__ == "__main__":
    main()
