"""Rogan–Gladen (1978): the judge's apparent pass rate q on the N judge-only items corrected by its TPR and TNR
against the humans, (q + TNR − 1) / (TPR + TNR − 1), with a delta-method interval whose three proportions are
Agresti–Coull adjusted (a judge that matched all 20 positives still has an uncertain TPR). A judge no better than
chance (TPR + TNR − 1 < MIN_YOUDEN) is refused: the correction would divide by (nearly) zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmbus.errors import EstimateError
from llmbus.quality.agreement import BinaryAgreement
from llmbus.quality.judged_sample import (
    MIN_LABELS,
    Estimate,
    JudgedSample,
    clip01,
    effective_n,
    judge_warnings,
    label_warnings,
    normalized,
    require_labels,
    weighted_mean,
    z_value,
)

MIN_YOUDEN = 0.1  # TPR + TNR − 1 below this: Rogan–Gladen divides by (nearly) zero


def _ac_variance(p: float, n: float, z: float) -> float:
    """Variance of a proportion with Agresti–Coull's z²/2 pseudo-successes and failures: never 0 at p = 0 or 1."""
    adjusted = (p * n + z * z / 2) / (n + z * z)
    return adjusted * (1 - adjusted) / (n + z * z)


@dataclass(frozen=True)
class _Rates:
    """What Rogan–Gladen needs: the judge's apparent pass rate and its TPR/TNR, each with its (effective) n."""

    q: float
    n_q: float
    tpr: float
    n_pos: float
    tnr: float
    n_neg: float


def rogan_gladen(sample: JudgedSample, *, alpha: float = 0.05) -> Estimate:
    """Rogan–Gladen estimate from a sample: the judge's (weighted) pass rate on the N judge-only items corrected
    by its (weighted) TPR and TNR against the n human labels; verdicts must be 1/0."""
    require_labels(sample, "rogan-gladen")
    if sample.n_unlabeled == 0:
        raise EstimateError("rogan-gladen: no judge-only items: it corrects the judge's pass rate on items no "
                            "human labeled, and there are none")
    if not np.isin(np.concatenate([sample.judge, sample.judge_unlabeled]), (0.0, 1.0)).all():
        raise EstimateError("rogan-gladen: needs verdicts 1/0, not pass probabilities (threshold them first)")
    y, yhat, w = sample.human, sample.judge, sample.weights
    pos, neg = y == 1, y == 0
    for mask, which, rate in ((pos, "pass", "TPR"), (neg, "fail", "TNR")):
        if not mask.any():
            raise EstimateError(f"rogan-gladen: no human label is {which}, so the judge's {rate} is unknown")
    q, tpr, tnr = (_rate(sample.judge_unlabeled, sample.weights_unlabeled), _rate(yhat[pos], _part(w, pos)),
                   _rate(1 - yhat[neg], _part(w, neg)))
    rates = _Rates(q=q[0], n_q=q[1], tpr=tpr[0], n_pos=tpr[1], tnr=tnr[0], n_neg=tnr[1])
    return _rogan_gladen(rates, alpha, sample.n, sample.n_unlabeled, label_warnings(sample) + judge_warnings(sample))


def _part(w: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if w is None else w[mask]


def _rate(x: np.ndarray, w: np.ndarray | None) -> tuple[float, float]:
    """A (weighted) proportion and its effective n."""
    return weighted_mean(x, normalized(w, len(x))), effective_n(x, w)


def rogan_gladen_from_agreement(agreement: BinaryAgreement, judged_pass: int, judged: int, *,
                                alpha: float = 0.05) -> Estimate:
    """Rogan–Gladen from a calibration (`calibrate(store, JUDGE_RUN, PROJECT).agreement`: TPR and TNR against the
    humans) and the judge's pass count on `judged` items no human labeled."""
    n_pos, n_neg = agreement.tp + agreement.fn, agreement.tn + agreement.fp + agreement.other
    if judged <= 0 or not 0 <= judged_pass <= judged:
        raise EstimateError(f"rogan-gladen: {judged_pass} passes out of {judged} judged items is not a pass count")
    if n_pos == 0 or n_neg == 0:
        raise EstimateError(f"rogan-gladen: the calibration has {n_pos} human passes and {n_neg} fails: the judge's "
                            f"{'TPR' if n_pos == 0 else 'TNR'} is unknown")
    notes = [] if agreement.n >= MIN_LABELS else [f"only {agreement.n} human labels (< {MIN_LABELS}): the 95% "
                                                  "interval is approximate"]
    rates = _Rates(judged_pass / judged, judged, agreement.tp / n_pos, n_pos, agreement.tn / n_neg, n_neg)
    return _rogan_gladen(rates, alpha, agreement.n, judged, notes)


def _rogan_gladen(r: _Rates, alpha: float, n: int, big_n: int, notes: list[str]) -> Estimate:
    """(q + TNR − 1) / J with J = TPR + TNR − 1, and the delta-method interval
    sqrt(Var q + π² Var TPR + (1 − π)² Var TNR) / J (Greenland 1996)."""
    youden = r.tpr + r.tnr - 1
    if youden < MIN_YOUDEN:
        raise EstimateError(f"rogan-gladen: the judge is no better than chance (TPR {r.tpr:.2f} + TNR {r.tnr:.2f} "
                            f"− 1 = {youden:.2f} < {MIN_YOUDEN}): its verdicts cannot be corrected into a pass rate")
    raw = (r.q + r.tnr - 1) / youden
    pi = clip01(raw)
    if pi != raw:
        notes = [*notes, f"the judge's pass rate {r.q:.3f} lies outside [1 − TNR, TPR] = [{1 - r.tnr:.3f}, "
                         f"{r.tpr:.3f}]: the correction ({raw:.3f}) was clipped to {pi:g}"]
    z = z_value(alpha)
    var = (_ac_variance(r.q, r.n_q, z) + pi**2 * _ac_variance(r.tpr, r.n_pos, z)
           + (1 - pi) ** 2 * _ac_variance(r.tnr, r.n_neg, z)) / youden**2
    half = z * float(np.sqrt(var))
    return Estimate("rogan-gladen", pi, clip01(pi - half), clip01(pi + half), n, big_n, None, tuple(notes))
