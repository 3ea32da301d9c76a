"""Active learning: the selection functions, and each strategy queueing a project's calls."""

from pathlib import Path

import numpy as np
import pytest

from llmbus.errors import LlmbusError
from llmbus.quality import active, label
from llmbus.store import Store
from quality_helpers import add_judge_run, add_run


def test_uncertainty_and_disagreement_orders():
    probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.5, 0.5]])
    assert active.uncertainty_order(probs).tolist() == [3, 1, 2, 0]
    signals = np.array([[0.9, 0.1, np.nan], [0.5, 0.6, 0.55], [np.nan, np.nan, 0.7]])
    assert active.disagreement_scores(signals) == pytest.approx([0.8, 0.1, 0.0])


def test_k_center_covers_every_cluster_first():
    rng = np.random.default_rng(0)
    centers = np.eye(4)[:3]
    points = np.vstack([c + 0.05 * rng.standard_normal((20, 4)) for c in centers])
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    picked = active.k_center(points, [], 3, seed=1)
    assert sorted(i // 20 for i in picked) == [0, 1, 2]
    # With cluster 0 already labeled, the next two come from clusters 1 and 2, never repeating.
    more = active.k_center(points, [0, 1], 2)
    assert sorted(i // 20 for i in more) == [1, 2] and not set(more) & {0, 1}
    assert len(set(active.k_center(points, [], 60))) == 60


def _project(store: Store, tiny_task: Path) -> str:
    conf = [0.99, 0.51, 0.9, 0.6, 0.97, 0.55, 0.8, 0.95, 0.7, 0.99, 0.52, 0.85]
    rows = [{"item_id": f"m{i}", "parsed": "spam" if i % 3 == 0 else "ham", "expected": "ham", "confidence": c}
            for i, c in enumerate(conf)]
    run_id = add_run(store, rows, task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    label.create_project(store, "p", run_id, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    return run_id


def test_strategies_queue_items(store: Store, tiny_task: Path):
    run_id = _project(store, tiny_task)
    # Cold start: no human labels yet, so uncertainty is the run's own confidence, lowest first.
    assert [i for i, _ in active.select(store, "p", "uncertainty", 3)] == ["m1", "m10", "m5"]
    assert label.queued_ids(store, "p") == ["m1", "m10", "m5"]
    assert label.next_item(store, "p", "ann")["strategy"] == "uncertainty"
    randomly = active.select(store, "p", "random", 2, seed=3)
    assert len(randomly) == 2 and not {i for i, _ in randomly} & {"m1", "m10", "m5"}
    diverse = active.select(store, "p", "diversity", 3)
    assert len({i for i, _ in diverse}) == 3 and len(label.queued_ids(store, "p")) == 8
    # Eight human labels, both verdicts: the logistic head on MiniLM now scores the remaining candidates.
    for item_id in label.queued_ids(store, "p"):
        number = int(item_id[1:])
        label.save_label(store, "p", "ann", item_id, "fail" if number % 3 == 0 else "pass")
    rest = active.select(store, "p", "uncertainty", 2)
    assert len(rest) == 2 and all(0 <= p <= 1 for _, p in rest)
    with pytest.raises(LlmbusError, match="use one of"):
        active.select(store, "p", "smart", 1)
    judge = add_judge_run(store, run_id, {f"m{i}": "pass" for i in range(12)},
                          pass_probs={f"m{i}": 0.5 + 0.04 * i for i in range(12)})
    picked = active.select(store, "p", "disagreement", 2, judge_run=judge)
    assert len(picked) == 2 and picked[0][1] >= picked[1][1] > 0
    assert len(label.queued_ids(store, "p")) == 12
    assert active.select(store, "p", "random", 5) == []  # nothing left to choose from
