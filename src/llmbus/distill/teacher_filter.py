"""Which teacher answers a student may learn from: judge verdicts and human labels from stop 3.

    --filter judge   keep the items the latest pointwise judge run on the teacher run passed (for a served
                     model's traffic: the latest on each of its gateway runs)
    --filter human   use the human labels of label projects on the teacher run: a task label or a free-text
                     correction replaces the teacher's answer, a pass (or a 1–5 score of 4–5) keeps it, any
                     other verdict (fail, 1–3) drops the item; unlabeled items are dropped too
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from llmbus.errors import LlmbusError
from llmbus.quality.calibrate import binarize
from llmbus.quality.judge import SCORE_LABELS
from llmbus.quality.label import consensus, label_rows
from llmbus.store import Store
from llmbus.store.schema import judge_runs, label_projects, runs, verdicts
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec

FILTERS = ("none", "judge", "human")


@dataclass(frozen=True)
class Decision:
    """Keep the item or not; `answer` replaces the teacher's when a human corrected it."""

    keep: bool
    answer: Any = None
    text: str | None = None


def decisions(spec: TaskSpec, store: Store, teacher_run: str | list[str], how: str) -> dict[str, Decision] | None:
    """Per item id, what the filter decided over a teacher run (or several: a served model's gateway runs,
    whose item ids are request ids); None for `none` (keep every usable teacher answer)."""
    if how not in FILTERS:
        raise LlmbusError(f"--filter {how!r}: use one of {', '.join(FILTERS)}")
    if how == "none":
        return None
    run_ids = [teacher_run] if isinstance(teacher_run, str) else teacher_run
    where = f"run {run_ids[0]}" if len(run_ids) == 1 else f"the {len(run_ids)} runs {', '.join(run_ids)}"
    if how == "judge":
        found = judge_decisions(store, run_ids)
        if not found:
            raise LlmbusError(f"--filter judge: no pointwise judge run on {where} "
                              f"(run `llmbus judge run JUDGE.yaml --on {run_ids[-1]}` first)")
        return found
    if not label_projects_on(store, run_ids):
        raise LlmbusError(f"--filter human: no label project on {where} "
                          f"(create one with `llmbus label create … --run {run_ids[-1]}`)")
    return human_decisions(spec, store, run_ids)


def judge_decisions(store: Store, run_ids: list[str]) -> dict[str, Decision]:
    """Pass/fail per item from the most recent pointwise judge run on each run ({} when none was judged)."""
    out: dict[str, Decision] = {}
    for run_id in run_ids:
        query = (sa.select(judge_runs.c.run_id, judge_runs.c.positive, judge_runs.c.labels_json)
                 .join(runs, runs.c.id == judge_runs.c.run_id)
                 .where(judge_runs.c.target_run_id == run_id, judge_runs.c.mode == "pointwise")
                 .order_by(runs.c.created_at.desc()).limit(1))
        with store.engine.connect() as conn:
            judge = conn.execute(query).mappings().first()
            if judge is None:
                continue
            rows = conn.execute(sa.select(verdicts.c.item_id, verdicts.c.verdict)
                                .where(verdicts.c.judge_run_id == judge["run_id"])).all()
        labels = list(json.loads(judge["labels_json"]))
        positive = judge["positive"] or "pass"
        out |= {item: Decision(keep=verdict is not None and binarize(verdict, labels, positive) == positive)
                for item, verdict in rows}
    return out


def label_projects_on(store: Store, run_ids: list[str]) -> list[str]:
    """Names of the label projects over any of the runs."""
    with store.engine.connect() as conn:
        return list(conn.scalars(sa.select(label_projects.c.name).where(label_projects.c.run_id.in_(run_ids))))


def human_decisions(spec: TaskSpec, store: Store, run_ids: list[str]) -> dict[str, Decision]:
    """Majority human label (and the latest correction) per item over the label projects on the runs."""
    task_labels = set(spec.output.labels or ())
    out: dict[str, Decision] = {}
    for project in label_projects_on(store, run_ids):
        corrections = {row["item_id"]: row["correction"] for row in label_rows(store, project) if row["correction"]}
        majority = consensus(store, project)
        for item in set(majority) | set(corrections):
            label = majority.get(item)
            if item in corrections:
                text = corrections[item].strip()
                out[item] = Decision(keep=True, answer=parse_output(spec, text).value, text=text)
            elif label in task_labels:
                out[item] = Decision(keep=True, answer=label, text=label)
            else:
                out[item] = Decision(keep=label is not None and binarize(label, SCORE_LABELS, "pass") == "pass")
    return out
