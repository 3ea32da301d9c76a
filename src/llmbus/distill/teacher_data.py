"""The answers a student learns from: a teacher run's logged calls joined with the dataset's inputs (or a served
model's traffic: traffic.py), filtered, split train/val/test by a hash of the item id, and exported as JSONL.

Too few usable answers to train and test on is refused here, before any training.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.distill.examples import Example
from llmbus.distill.teacher_filter import decisions
from llmbus.errors import LlmbusError
from llmbus.store import Store
from llmbus.store.traffic import GATEWAY_PREFIX
from llmbus.task.data import Item, load_items, split_items
from llmbus.task.spec import TaskSpec


def split_of(item_id: str, seed: int = 0) -> str:
    """train (70%) / val (15%) / test (15%) by a hash of the item id: stable across runs and students."""
    bucket = int(hashlib.sha256(f"distill:{seed}:{item_id}".encode()).hexdigest(), 16) % 100
    return "train" if bucket < 70 else "val" if bucket < 85 else "test"


@dataclass
class TeacherData:
    """The answers a student learns from, wherever they were logged: a teacher run, or a served model's traffic."""

    ref: str  # the teacher run's id, or gateway:NAME for traffic
    what: str  # for messages: "teacher run 1a2b3c4d", "the traffic of gateway:sms"
    model: str
    examples: list[Example]
    latency_s: float  # median seconds per uncached teacher call
    answered: int  # items the teacher answered, usable or not (for the learning curve's answers per item)
    items_left: int | None = None  # dataset eval items it has not answered (None for traffic)
    reference: str = "gold"  # what held-out quality is measured against (DistillReport.reference)
    how: str = "none"
    more: str = "run the teacher on more items"  # the fix when there are too few answers
    warnings: list[str] = field(default_factory=list)

    @property
    def runs_teacher(self) -> bool:
        """More answers come from running the teacher (a teacher run), not from serving or labeling traffic."""
        return not self.ref.startswith(GATEWAY_PREFIX)


def run_teacher(spec: TaskSpec, store: Store, teacher_run: str, how: str = "none") -> TeacherData:
    """A teacher run's usable answers (after the filter) and what distill reports about it."""
    run = store.get_run(teacher_run)
    examples = collect_examples(spec, store, run["id"], how)
    answered = {c["item_id"] for c in store.iter_calls(run["id"])}
    left = sum(1 for item in split_items(spec, load_items(spec)).eval if item.id not in answered)
    return TeacherData(run["id"], f"teacher run {run['id']}", run["model"], examples,
                       teacher_latency_s(store, run["id"]), len(answered), left, how=how)


def teacher_answer(spec: TaskSpec, parsed: Any) -> Any:
    """What a student learns from a parsed answer (extraction: its entity list)."""
    return parsed["entities"] if spec.kind == "extract" and isinstance(parsed, dict) else parsed


def collect_examples(spec: TaskSpec, store: Store, teacher_run: str, how: str = "none") -> list[Example]:
    """Teacher answers from the call log joined with the dataset's inputs; failed calls are left out, and so are
    answers the filter (`judge` verdicts, `human` labels) rejects; human corrections replace the teacher's."""
    run = store.get_run(teacher_run)
    if run["task"] != spec.name:
        raise LlmbusError(f"run {run['id']} is of task {run['task']}, not {spec.name}")
    decided = decisions(spec, store, run["id"], how)
    items: dict[str, Item] = {item.id: item for item in load_items(spec)}
    examples = []
    for call in store.iter_calls(run["id"]):
        item = items.get(call["item_id"])
        if call["error_kind"] is not None or item is None or call["parsed"] is None:
            continue
        teacher = teacher_answer(spec, call["parsed"])
        text = (call["raw_output"] or "").strip() or None
        if decided is not None:
            decision = decided.get(item.id)
            if decision is None or not decision.keep:
                continue
            if decision.text is not None:
                teacher, text = decision.answer, decision.text
        tokens = item.fields.get("tokens") if spec.kind == "extract" else None
        examples.append(Example(id=item.id, input=item.text(spec.data.input), teacher=teacher, gold=item.expected,
                                teacher_confidence=call["confidence"], split=split_of(item.id), tokens=tokens,
                                teacher_text=text))
    return examples


def distillation_data(spec: TaskSpec, store: Store, teacher_run: str, out_dir: Path, how: str = "none"
                      ) -> tuple[list[Example], dict[str, list[Example]], dict[str, str]]:
    """The teacher's usable answers, split train/val/test and exported as JSONL under out_dir/data."""
    return split_examples(collect_examples(spec, store, teacher_run, how), f"run {teacher_run}", how, out_dir)


def split_examples(examples: list[Example], what: str, how: str, out_dir: Path,
                   more: str = "run the teacher on more items"
                   ) -> tuple[list[Example], dict[str, list[Example]], dict[str, str]]:
    """Examples by split (exported as JSONL under out_dir/data); too few to train and test on is refused."""
    by_split = {s: [e for e in examples if e.split == s] for s in ("train", "val", "test")}
    if len(by_split["train"]) < 10 or not by_split["test"]:
        raise LlmbusError(f"{what} has {len(examples)} usable answers"
                          f"{'' if how == 'none' else f' after --filter {how}'}: distillation needs at least ~20 "
                          f"({more})")
    return examples, by_split, export_jsonl(examples, out_dir / "data")


def teacher_latency_s(store: Store, teacher_run: str) -> float:
    """Median seconds per uncached teacher call."""
    return float(np.median([c["latency_s"] for c in store.iter_calls(teacher_run)
                            if not c["cache_hit"]] or [float("nan")]))


def export_jsonl(examples: list[Example], out_dir: Path) -> dict[str, str]:
    """Write one JSONL file per split; returns {split: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in ("train", "val", "test"):
        path = out_dir / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for ex in examples:
                if ex.split == split:
                    handle.write(json.dumps(asdict(ex), ensure_ascii=False) + "\n")
        paths[split] = str(path)
    return paths
