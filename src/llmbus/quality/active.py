"""Active learning: which unlabeled calls a human should label next.

- uncertainty: least classifier confidence. With enough human labels, a logistic head on MiniLM embeddings
  trained on them scores the candidates (smallest margin first); before that, the run's own label
  probabilities (its confidence in its answer) do.
- disagreement: the largest spread among the signals of whether the answer is right: the LLM judge's pass
  probability, the trained head's, and the run's own confidence.
- diversity: k-center greedy on MiniLM embeddings, starting from what is already labeled or queued.
- random: the baseline.

The pure functions on arrays are shared with bench/active_learning.py; `select` applies them to a labeling
project and puts the chosen items into its queue.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from llmbus.embed import embed
from llmbus.errors import LlmbusError
from llmbus.extras import require
from llmbus.providers.head import head_features
from llmbus.quality.judge import answer_text, judge_input, judge_run_info, load_verdicts, run_items
from llmbus.quality.label import consensus, enqueue, get_project, queued_ids
from llmbus.store import Store

STRATEGIES = ("uncertainty", "disagreement", "diversity", "random")
MIN_LABELS_FOR_HEAD = 8


def margin(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per row (small = uncertain)."""
    if probs.shape[1] < 2:
        return np.ones(len(probs))
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


def uncertainty_order(probs: np.ndarray) -> np.ndarray:
    """Row indices, least confident first (ties keep their order)."""
    return np.argsort(margin(probs), kind="stable")


def disagreement_scores(signals: np.ndarray) -> np.ndarray:
    """Spread (max − min) of each row's P(answer is right) estimates, ignoring missing (nan) signals."""
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(signals, axis=1) - np.nanmin(signals, axis=1)
    return np.nan_to_num(spread, nan=0.0)


def k_center(vectors: np.ndarray, chosen: list[int], n: int, seed: int = 0) -> list[int]:
    """Greedy k-center on unit vectors: repeatedly take the point farthest (by cosine distance) from all
    points in `chosen` and picked so far; starts at a seeded random point when nothing is chosen."""
    m = len(vectors)
    if m == 0 or n <= 0:
        return []
    picked: list[int] = []
    if chosen:
        nearest = np.min(1 - vectors @ vectors[chosen].T, axis=1).astype(float)
    else:
        picked = [int(np.random.default_rng(seed).integers(m))]
        nearest = (1 - vectors @ vectors[picked[0]]).astype(float)
    nearest[chosen + picked] = -np.inf
    while len(picked) < n and len(picked) + len(chosen) < m:
        nxt = int(np.argmax(nearest))
        picked.append(nxt)
        nearest = np.minimum(nearest, 1 - vectors @ vectors[nxt])
        nearest[nxt] = -np.inf
    return picked


def head_probs(train_x: np.ndarray, train_y: list[str], x: np.ndarray,
               seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """Class probabilities of `x` from a logistic head fitted on (train_x, train_y)."""
    linear_model = require("embed", "sklearn.linear_model", "label select's head")
    head = linear_model.LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed)
    head.fit(train_x, train_y)
    return head.predict_proba(x), [str(c) for c in head.classes_]


def select(store: Store, project: str, strategy: str, n: int, *, judge_run: str | None = None,
           seed: int = 0) -> list[tuple[str, float]]:
    """Choose up to n unqueued calls of the project's run with `strategy` and queue them; returns
    (item_id, priority) in queue order."""
    if strategy not in STRATEGIES:
        raise LlmbusError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    meta = get_project(store, project)
    run = store.get_run(meta["run_id"])
    queued = set(queued_ids(store, project))
    calls = list(store.iter_calls(run["id"]))
    pool = [c for c in calls if c["item_id"] not in queued]
    if not pool:
        return []
    if strategy == "random":
        order = np.random.default_rng(seed).permutation(len(pool))[:n]
        chosen = [(pool[i]["item_id"], float(n - rank)) for rank, i in enumerate(order)]
    else:
        input_field = json.loads(run["spec_json"]).get("data", {}).get("input", "text")
        fields = run_items(store, run)
        texts = [judge_input(fields.get(c["item_id"], {}), input_field, answer_text(c)) for c in pool]
        chosen = _rank(store, project, strategy, pool, texts, calls, fields, input_field, queued, n, judge_run, seed)
    enqueue(store, project, chosen, strategy)
    return chosen


def _rank(store: Store, project: str, strategy: str, pool: list[dict[str, Any]], texts: list[str],
          calls: list[dict[str, Any]], fields: dict[str, dict[str, Any]], input_field: str, queued: set[str],
          n: int, judge_run: str | None, seed: int) -> list[tuple[str, float]]:
    if strategy == "diversity":
        vectors = embed(texts)
        done = [c for c in calls if c["item_id"] in queued]
        done_vectors = embed([judge_input(fields.get(c["item_id"], {}), input_field, answer_text(c)) for c in done])
        both = np.vstack([done_vectors, vectors]) if len(done) else vectors
        picked = [i - len(done) for i in k_center(both, list(range(len(done))), n, seed)]
        return [(pool[i]["item_id"], float(n - rank)) for rank, i in enumerate(picked) if i >= 0]
    own = np.array([c["confidence"] if c["confidence"] is not None else np.nan for c in pool], dtype=float)
    head = _head_pass_probs(store, project, calls, fields, input_field, texts, seed)
    if strategy == "uncertainty":
        certainty = np.abs(head - 0.5) * 2 if head is not None else np.nan_to_num(own, nan=0.0)
        order = np.argsort(certainty, kind="stable")[:n]
        return [(pool[i]["item_id"], float(1 - certainty[i])) for i in order]
    judge = _judge_pass_probs(store, judge_run, pool) if judge_run else np.full(len(pool), np.nan)
    signals = np.column_stack([judge, head if head is not None else np.full(len(pool), np.nan), own])
    if np.sum(~np.isnan(signals).all(axis=0)) < 2:
        raise LlmbusError("disagreement needs two signals: give --judge-run, or label enough items "
                          f"(≥ {MIN_LABELS_FOR_HEAD}, both verdicts) for the trained head")
    scores = disagreement_scores(signals)
    order = np.argsort(-scores, kind="stable")[:n]
    return [(pool[i]["item_id"], float(scores[i])) for i in order]


def _head_pass_probs(store: Store, project: str, calls: list[dict[str, Any]], fields: dict[str, dict[str, Any]],
                     input_field: str, texts: list[str], seed: int) -> np.ndarray | None:
    """P(first/positive human label) per pool call from a head on the human labels, or None with too few."""
    human = consensus(store, project)
    labeled = [c for c in calls if c["item_id"] in human]
    if len(labeled) < MIN_LABELS_FOR_HEAD or len({human[c["item_id"]] for c in labeled}) < 2:
        return None
    train_x = head_features([judge_input(fields.get(c["item_id"], {}), input_field, answer_text(c))
                             for c in labeled])
    probs, classes = head_probs(train_x, [human[c["item_id"]] for c in labeled], head_features(texts), seed)
    schema = get_project(store, project)["schema"]
    positive = next((v for v in schema.values if v.lower() in {"pass", "yes", "good", "correct"}),
                    schema.values[0] if schema.values else classes[0])
    return probs[:, classes.index(positive)] if positive in classes else probs.max(axis=1)


def _judge_pass_probs(store: Store, judge_run: str, pool: list[dict[str, Any]]) -> np.ndarray:
    info = judge_run_info(store, judge_run)
    by_item = {v["item_id"]: v for v in load_verdicts(store, info["run_id"])}
    out = np.full(len(pool), np.nan)
    for i, call in enumerate(pool):
        verdict = by_item.get(call["item_id"])
        if verdict and verdict["probs"]:
            out[i] = verdict["probs"].get(info["positive"], np.nan)
    return out
