"""Runs written straight into a real store (no model) for the stop-3 tests: known answers, exact metrics."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from llmbus.store import Store, now
from llmbus.store.schema import calls


def add_run(store: Store, rows: list[dict[str, Any]], *, task: str = "t", kind: str = "classify",
            labels: list[str] | None = None, metric: str = "accuracy", model: str = "openai:stub",
            extra_spec: dict[str, Any] | None = None, task_path: str = "") -> str:
    """A finished run whose calls are `rows` (item_id, parsed, expected, optional error_kind, confidence,
    label_probs), bulk-inserted in one transaction."""
    spec: dict[str, Any] = {"name": task, "kind": kind, "prompt": "x", "output": {"labels": labels} if labels else {},
                            "data": {"path": "items.jsonl", "expected": "label"}, **(extra_spec or {})}
    run_id = store.create_run(task=task, task_path=task_path, spec_version="v1", spec_json=json.dumps(spec),
                              model=model, metric=metric, n_planned=len(rows), concurrency=1)
    stamp = now()
    values = [{"run_id": run_id, "task": task, "spec_version": "v1", "item_id": r["item_id"], "model": model,
               "prompt": r.get("prompt", "p"), "raw_output": r.get("raw", json.dumps(r.get("parsed"))),
               "parsed_json": json.dumps(r.get("parsed")), "expected_json": json.dumps(r.get("expected")),
               "confidence": r.get("confidence"),
               "label_probs_json": json.dumps(r["label_probs"]) if r.get("label_probs") else None,
               "error_kind": r.get("error_kind"), "tokens_in": 10, "tokens_out": 1, "latency_s": 0.01,
               "cost_usd": 0.0, "cache_hit": False, "started_at": stamp, "finished_at": stamp} for r in rows]
    with store.engine.begin() as conn:
        for start in range(0, len(values), 5000):
            conn.execute(sa.insert(calls), values[start:start + 5000])
    store.update_run(run_id, status="done", finished_at=now())
    return run_id


def classify_rows(predicted: list[str | None], expected: list[str]) -> list[dict[str, Any]]:
    """Rows for a classify run; a None prediction is a failed call."""
    return [{"item_id": f"i{i}", "parsed": p, "expected": e,
             "error_kind": None if p is not None else "label_not_in_set"}
            for i, (p, e) in enumerate(zip(predicted, expected, strict=True))]


def add_judge_run(store: Store, target: str, verdicts_by_item: dict[str, str | None],
                  labels: list[str] | None = None, mode: str = "pointwise",
                  pass_probs: dict[str, float] | None = None) -> str:
    """A pointwise judge run over `target` with the given verdicts (None = broken), linked to its calls;
    `pass_probs` gives each verdict's probability of the first label."""
    from llmbus.store.schema import judge_runs, verdicts

    labels = labels or ["pass", "fail"]
    judged = {c["item_id"]: c["id"] for c in store.iter_calls(target)}
    run_id = add_run(store, [{"item_id": i, "parsed": v, "expected": None} for i, v in verdicts_by_item.items()],
                     task="judge", labels=labels)
    with store.engine.begin() as conn:
        conn.execute(judge_runs.insert().values(run_id=run_id, mode=mode, target_run_id=target,
                                                labels_json=json.dumps(labels), positive=labels[0]))
        conn.execute(sa.insert(verdicts), [
            {"judge_run_id": run_id, "item_id": i, "call_id": judged[i], "verdict": v, "confidence": 0.9,
             "score": None, "probs_json": json.dumps({labels[0]: pass_probs[i], labels[1]: 1 - pass_probs[i]})
             if pass_probs else None, "error_kind": None if v else "label_not_in_set", "created_at": now()}
            for i, v in verdicts_by_item.items()])
    return run_id
