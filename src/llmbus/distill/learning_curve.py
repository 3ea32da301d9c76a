"""How many teacher answers a student needs: a learning curve over train fractions and its log-linear trend.

A student trained on 25/50/75/100% of the teacher's training answers is scored on the held-out items; the
share of the teacher's quality there it reaches is fitted as `share = a + b·ln(n)`, and the fit says where it
crosses the target share, or that it is flat: it gains too little per doubling, or crosses only beyond FAR times
the answers there are (a few noisy points extrapolated that far would give an absurd count).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TARGET_SHARE = 0.9  # the student's quality as a share of the teacher's that the curve aims at
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the training answers
FLAT_GAIN = 0.01  # a trend gaining less than this share of the teacher per doubling of answers is flat
FAR = 20  # projections beyond this many times the present answers are out of reach, whatever the fit says


@dataclass
class CurvePoint:
    """The student trained on `n` training answers, scored on the held-out items."""

    n: int
    quality: float
    share: float  # quality / the teacher's quality on the same items

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json."""
        return asdict(self)


@dataclass
class Projection:
    """The log-linear trend through a curve: the gain per doubling and where it reaches the target share."""

    gain_per_doubling: float
    n_needed: float | None  # training answers at the target share; None when the curve is (nearly) flat


def stratified_order(labels: list[str], seed: int = 0) -> list[int]:
    """Row indices such that every prefix holds each label at about its share (nested curve subsets)."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[int]] = defaultdict(list)
    for row, label in enumerate(labels):
        rows[label].append(row)
    keyed = []
    for members in rows.values():
        shuffled = rng.permutation(members).tolist()
        keyed += [((rank + 0.5) / len(shuffled), row) for rank, row in enumerate(shuffled)]
    return [row for _, row in sorted(keyed)]


def measure_curve(labels: list[str], score_rows: Callable[[list[int]], float], teacher_quality: float,
                  full: CurvePoint, progress: Callable[[str, int | None, int | None], None] | None = None,
                  seed: int = 0) -> list[CurvePoint]:
    """The student retrained (by `score_rows`: training rows → held-out quality) on nested, stratified
    fractions of the training answers; `full` is the point already measured on all of them."""
    order = stratified_order(labels, seed)
    points = []
    sizes = sorted({max(2, round(f * len(labels))) for f in FRACTIONS[:-1]} - {len(labels)})
    for k, size in enumerate(sizes, 1):
        if progress:
            progress("learning curve (retraining on part of the answers)", k - 1, len(sizes))
        rows = sorted(order[:size])
        if len({labels[r] for r in rows}) < 2:
            continue  # a one-label subset teaches nothing to compare
        quality = score_rows(rows)
        points.append(CurvePoint(size, quality, quality / teacher_quality))
    if progress:
        progress("learning curve (retraining on part of the answers)", len(sizes), len(sizes))
    return [*points, full]


def project(points: list[CurvePoint], target: float = TARGET_SHARE) -> Projection:
    """Least-squares fit of share = a + b·ln(n); the n where it reaches `target` (None when flat, or when that n
    lies beyond FAR times the largest point's)."""
    if len(points) < 2:
        return Projection(0.0, None)
    slope, intercept = np.polyfit(np.log([p.n for p in points]), [p.share for p in points], 1)
    gain = float(slope * math.log(2))
    if gain < FLAT_GAIN:
        return Projection(gain, None)
    needed = float(math.exp(min(700.0, (target - intercept) / slope)))  # exp overflows past ~709
    return Projection(gain, needed if needed <= FAR * max(p.n for p in points) else None)


def about(n: float) -> int:
    """n rounded up to two significant digits (a projection is not a count)."""
    if n <= 0:
        return 0
    step = 10 ** max(0, math.floor(math.log10(n)) - 1)
    return int(math.ceil(n / step) * step)


def curve_message(share: float, n_train: int, n_answers: int, items_per_answer: float,
                  projection: Projection | None, n_held_out: int, items_left: int | None = None,
                  target: float = TARGET_SHARE, more: str | None = None) -> str:
    """One sentence: where the student stands against the teacher on held-out items, and what more answers buy.

    `n_answers` are the teacher's usable answers (all splits), `items_per_answer` the items run per usable answer,
    `items_left` the dataset's eval items the teacher has not answered; `more` how to get more answers when
    they do not come from running the teacher (served traffic: "serve more requests, …")."""
    head = (f"the student reached {share:.2f}× the teacher on the {n_held_out} held-out items from {n_train} "
            f"training answers (of {n_answers} teacher answers)")
    if share >= target:
        return f"{head}: at or above the {target}× target"
    if projection is None:
        return f"{head}, short of the {target}× target"
    better = "try better teacher answers, --filter judge|human, or let the cascade escalate"
    if projection.n_needed is None and projection.gain_per_doubling < FLAT_GAIN:
        return (f"{head}; the learning curve is flat ({projection.gain_per_doubling:+.2f}× per doubling of the "
                f"answers): more teacher answers are unlikely to reach {target}× ({better})")
    if projection.n_needed is None:
        return (f"{head}; the learning curve is nearly flat ({projection.gain_per_doubling:+.2f}× per doubling of "
                f"the answers): it would reach {target}× only beyond {FAR}× the answers it has, so more data alone "
                f"is unlikely to get there ({better})")
    total = projection.n_needed * n_answers / n_train
    if total <= n_answers:
        return (f"{head}; the fitted curve reaches {target}× at about this size, so the gap is within the noise of "
                f"{n_held_out} items: {_get_more(about(n_answers * items_per_answer), more)} to measure it")
    n_more = about((total - n_answers) * items_per_answer)
    left = "" if items_left is None or items_left >= n_more else (
        f" (the dataset has {items_left} eval items the teacher has not answered: add data)")
    return (f"{head}; the learning curve projects ~{about(total)} teacher answers for {target}×: "
            f"{_get_more(n_more, more)}{left}")


def _get_more(n: int, how: str | None) -> str:
    return f"run the teacher on ~{n} more items" if how is None else f"~{n} more answers ({how})"
