"""Agreement statistics: Cohen's kappa between two raters, Fleiss' kappa among many, and binary rates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float:
    """Cohen's kappa of two raters over the same items (nan when there are none; 1 when both are constant
    and equal, as there is nothing to disagree about)."""
    n = len(a)
    if n == 0 or n != len(b):
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if expected == 1:
        return 1.0 if observed == 1 else 0.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(ratings: Sequence[Sequence[str]]) -> float:
    """Fleiss' kappa over items each rated by two or more raters (the per-item agreement uses each item's own
    number of raters, so items may have different counts; with a constant count it is Fleiss' 1971 formula)."""
    items = [r for r in ratings if len(r) >= 2]
    if not items:
        return float("nan")
    totals: Counter[str] = Counter()
    agreement = 0.0
    for item in items:
        counts = Counter(item)
        totals.update(counts)
        n = len(item)
        agreement += sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))
    p_bar = agreement / len(items)
    all_ratings = sum(totals.values())
    p_e = sum((c / all_ratings) ** 2 for c in totals.values())
    if p_e == 1:
        return 1.0 if p_bar == 1 else 0.0
    return (p_bar - p_e) / (1 - p_e)


@dataclass
class BinaryAgreement:
    """A judge's verdicts against human labels, with one label taken as positive."""

    n: int
    kappa: float
    accuracy: float
    tpr: float  # of the items humans call positive, the share the judge calls positive
    tnr: float  # of the items humans call negative, the share the judge calls negative
    tp: int
    fn: int
    fp: int
    tn: int  # the judge gave the human's (negative) label
    other: int = 0  # human negative, judge neither positive nor that label (e.g. a broken verdict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def binary_agreement(judge: Sequence[str], human: Sequence[str], positive: str) -> BinaryAgreement:
    """TPR, TNR, accuracy, kappa and the 2×2 confusion of `judge` against `human` (the reference)."""
    pairs = list(zip(judge, human, strict=True))
    tp = sum(j == positive and h == positive for j, h in pairs)
    fn = sum(j != positive and h == positive for j, h in pairs)
    fp = sum(j == positive and h != positive for j, h in pairs)
    tn = sum(j == h and h != positive for j, h in pairs)
    other = sum(j != h and j != positive and h != positive for j, h in pairs)
    n = len(pairs)
    return BinaryAgreement(n=n, kappa=cohen_kappa(list(judge), list(human)),
                           accuracy=(sum(j == h for j, h in pairs) / n) if n else float("nan"),
                           tpr=tp / (tp + fn) if tp + fn else float("nan"),
                           tnr=tn / (tn + fp + other) if tn + fp + other else float("nan"),
                           tp=tp, fn=fn, fp=fp, tn=tn, other=other)
