"""Judge-corrected quality: the pass rate of a run (or of served traffic) from a few human labels plus many judge
verdicts, with a 95% interval that stays valid however good or bad the judge is.

Three estimates of the same pass rate, from a `JudgedSample` (judged_sample.py: n items with a human label and a
verdict, N items with a verdict only, optional weights):
- `ppi_mean` (ppi.py): prediction-powered inference, PPI++: the judge's mean on the N plus the human-minus-judge
  gap measured on the n, the judge's share tuned (0 = humans only). Its point estimate is ppi-python's; its
  default interval adds small-sample repairs that fade as n grows.
- `rogan_gladen` (rogan_gladen.py): the judge's apparent pass rate on the N corrected by its TPR and TNR against
  the humans, with a delta-method interval.
- `human_only`: the Wilson interval of the human labels alone — what the judge is measured against.

Inputs that cannot give an estimate (no human labels; a Rogan–Gladen judge no better than chance) raise
EstimateError; weak ones (few labels, a judge that says one thing or agrees little, heavy weights) carry warning
lines on the estimate. `estimate_quality` gives all three with the judge's agreement; `by_slice` per key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmbus.errors import EstimateError
from llmbus.quality.agreement import BinaryAgreement
from llmbus.quality.judged_sample import (
    Estimate,
    JudgedSample,
    agreement_of,
    effective_n,
    judged_sample,
    label_warnings,
    normalized,
    require_labels,
    weighted_mean,
    wilson,
    z_value,
)
from llmbus.quality.ppi import ppi_mean
from llmbus.quality.rogan_gladen import rogan_gladen, rogan_gladen_from_agreement

# The estimators and the sample live in their own modules; callers import them from here.
__all__ = ["METHODS", "Estimate", "JudgedSample", "QualityEstimate", "agreement_of", "by_slice", "estimate_quality",
           "human_only", "judged_sample", "ppi_mean", "rogan_gladen", "rogan_gladen_from_agreement", "wilson"]

METHODS = ("ppi++", "rogan-gladen", "human-only")


def human_only(sample: JudgedSample, *, alpha: float = 0.05) -> Estimate:
    """The human labels alone: their (weighted) pass rate and its Wilson interval (at the effective n)."""
    require_labels(sample, "human-only")
    p = weighted_mean(sample.human, normalized(sample.weights, sample.n))
    lo, hi = wilson(p, effective_n(sample.human, sample.weights), alpha)
    return Estimate("human-only", p, lo, hi, sample.n, 0, None, tuple(label_warnings(sample)))


@dataclass(frozen=True)
class QualityEstimate:
    """All three estimates of one sample (or slice), the judge's agreement with the humans, and the methods
    that refused (method → why)."""

    estimates: dict[str, Estimate]
    agreement: BinaryAgreement | None
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def best(self) -> Estimate | None:
        """The figure to report: PPI++, else the human labels' own."""
        return self.estimates.get("ppi++") or self.estimates.get("human-only")

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return {"estimates": {k: e.as_dict() for k, e in self.estimates.items()},
                "agreement": self.agreement.as_dict() if self.agreement else None, "refused": dict(self.refused)}


def estimate_quality(sample: JudgedSample, *, alpha: float = 0.05, small_sample: bool = True) -> QualityEstimate:
    """PPI++, Rogan–Gladen and human-only estimates of the pass rate; a method that cannot answer is listed in
    `refused` with its reason (with no human labels, all three are). `small_sample`: see ppi_mean."""
    z_value(alpha)  # a bad alpha is the caller's error, not a refusal
    estimates, refused = {}, {}
    methods: dict[str, Callable[[], Estimate]] = {
        "ppi++": lambda: ppi_mean(sample, alpha=alpha, small_sample=small_sample),
        "rogan-gladen": lambda: rogan_gladen(sample, alpha=alpha),
        "human-only": lambda: human_only(sample, alpha=alpha)}
    for method, run in methods.items():
        try:
            estimates[method] = run()
        except EstimateError as exc:
            refused[method] = str(exc)
    return QualityEstimate(estimates, agreement_of(sample) if sample.n else None, refused)


def by_slice(sample: JudgedSample, keys: Sequence[str], keys_unlabeled: Sequence[str], *, alpha: float = 0.05,
             simultaneous: bool = False) -> dict[str, QualityEstimate]:
    """estimate_quality per slice key (a route, a label, a customer); `simultaneous` widens every interval so
    that all of them hold together (Bonferroni: alpha / number of slices)."""
    labeled, unlabeled = np.asarray(keys, dtype=object), np.asarray(keys_unlabeled, dtype=object)
    if len(labeled) != sample.n or len(unlabeled) != sample.n_unlabeled:
        raise EstimateError(f"slice keys: {len(labeled)} for {sample.n} labeled and {len(unlabeled)} for "
                            f"{sample.n_unlabeled} judge-only items: give one key per item")
    names = sorted({str(k) for k in labeled} | {str(k) for k in unlabeled})
    level = alpha / len(names) if simultaneous and names else alpha
    return {name: estimate_quality(sample.subset(labeled.astype(str) == name, unlabeled.astype(str) == name),
                                   alpha=level) for name in names}
