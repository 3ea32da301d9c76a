"""Which monitored answers are judged and which judged ones go to a human: the sampling probabilities of a
monitor pass (quality/monitor.py), pure functions of the answers' numbers.

A call is judged with probability p ∝ (1 − w) + w × u / mean(u), scaled so that p averages `sample`, where u is
the answer's uncertainty (1 − its confidence; 1 without one) and w the uncertain share. A judged answer goes to
a human with probability π ∝ its label worth (at least MIN_WORTH_SHARE of the largest). Both are capped at 1,
the others sharing the rest, and drawn by a hash of the call id, so a re-run decides the same.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

MIN_WORTH_SHARE = 0.1  # every judged answer keeps some chance of a human label (else its weight is unknown)


def uniform_draw(salt: str, call_id: int) -> float:
    """A deterministic uniform number in [0, 1) for one call (the same call always draws the same)."""
    digest = hashlib.sha256(f"{salt}:{call_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def uncertainty(call: dict[str, Any]) -> float:
    """1 − the answer's confidence, or 1 when the call has none."""
    confidence = call.get("confidence")
    return 1.0 if confidence is None else float(np.clip(1.0 - confidence, 0.0, 1.0))


def sampling_probabilities(u: np.ndarray, sample: float, uncertain_share: float) -> np.ndarray:
    """p_i = sample × ((1 − w) + w × u_i / mean(u)) while none passes 1; plain `sample` when no answer is
    uncertain. Past 1 a p_i is capped at 1 and the others take up the rest: the p_i always average `sample`."""
    mean = float(u.mean()) if len(u) else 0.0
    relative = u / mean if mean > 0 else np.ones(len(u))
    return capped_shares((1 - uncertain_share) + uncertain_share * relative, sample * len(u))


def capped_shares(score: np.ndarray, total: float) -> np.ndarray:
    """Probabilities proportional to `score` that sum to min(total, items): those that would exceed 1 are 1 and
    the rest share what is left (items of score 0 share it evenly once every other one is at 1)."""
    size = len(score)
    if size == 0 or total <= 0:
        return np.zeros(size)
    if total >= size:
        return np.ones(size)
    score = np.asarray(score, dtype=float)
    pi = np.zeros(size)
    capped = np.zeros(size, dtype=bool)
    while True:
        rest = ~capped
        weight = score[rest].sum()
        pi[rest] = score[rest] * (total - capped.sum()) / weight if weight > 0 else (total - capped.sum()) / rest.sum()
        over = rest & (pi >= 1)
        if not over.any():
            return pi
        capped |= over
        pi[capped] = 1.0


def label_worth(judge_pass: np.ndarray, answer_confidence: np.ndarray) -> np.ndarray:
    """How much a human label of each judged answer is worth: the judge's own uncertainty (1 at a pass
    probability of 0.5), or the answer's confidence where the judge fails it (judge and answer disagree);
    missing numbers (nan) count as 0.5 and 0."""
    judge = np.nan_to_num(judge_pass, nan=0.5)
    unsure = 1 - np.abs(2 * judge - 1)
    disagreement = np.nan_to_num(answer_confidence, nan=0.0) * (1 - judge)
    return np.maximum(unsure, disagreement)


def inclusion_probabilities(worth: np.ndarray, n: int) -> np.ndarray:
    """Probabilities proportional to worth (floored at MIN_WORTH_SHARE of the largest) that sum to min(n, items);
    those that would exceed 1 are 1 and the rest share what is left."""
    top = float(worth.max()) if len(worth) else 0.0
    return capped_shares(np.maximum(worth, MIN_WORTH_SHARE * top) if top > 0 else np.ones(len(worth)), n)
