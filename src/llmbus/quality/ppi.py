"""PPI++, prediction-powered inference (Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453): the judge's mean
on the N judge-only items plus the human-minus-judge gap measured on the n labeled ones, the judge's share tuned
by lambda ∈ [0, 1] (0 = humans only, so a useless judge costs almost nothing). Point estimate and lambda are
ppi-python's `ppi_mean_pointestimate`, and with `small_sample=False` and no weights so is the interval
(`ppi_mean_ci`; the tests compare them). The default interval adds two small-sample repairs that fade as n
grows (pseudo-counts in the variance, Wilson's form): at 50 labels ppi-python's interval covered 0.89–0.91 on
the bench's SMS answers (bench/quality_estimate.py) and 0.86 at 40 in the tests, this one 0.96–0.975.
ppi-python itself is not imported: it brings numba, statsmodels and a Google Drive downloader, and switches off
every warning of the process when imported.
"""

from __future__ import annotations

import numpy as np

from llmbus.quality.judged_sample import (
    Estimate,
    JudgedSample,
    clip01,
    effective_n,
    judge_warnings,
    label_warnings,
    mean_variance,
    normalized,
    require_labels,
    weighted_mean,
    wilson,
    z_value,
)


def power_tuning(sample: JudgedSample) -> float:
    """PPI++'s lambda for a mean, as ppi-python computes it: Cov(Y, Ŷ) / ((1 + n/N) Var(Ŷ)) over the
    weighted gradients at the lambda = 1 estimate, clipped to [0, 1]; 0 when the judge never varies."""
    n, big_n = sample.n, sample.n_unlabeled
    if big_n == 0 or n < 2 or np.ptp(np.concatenate([sample.judge, sample.judge_unlabeled])) == 0:
        return 0.0  # a constant judge: its variance is rounding noise, and noise over noise is any lambda
    w, wu = normalized(sample.weights, n), normalized(sample.weights_unlabeled, big_n)
    y, yhat, yhat_u = sample.human, sample.judge, sample.judge_unlabeled
    theta = weighted_mean(yhat_u, wu) + weighted_mean(y - yhat, w)
    grads, grads_hat = w * (y - theta), w * (yhat - theta)
    cov = float(((grads - grads.mean()) * (grads_hat - grads_hat.mean())).mean())
    var = float(np.var(np.concatenate([grads_hat, wu * (yhat_u - theta)]), ddof=1))
    if not var > 0:
        return 0.0
    return float(np.clip(cov / ((1 + n / big_n) * var), 0.0, 1.0))


def ppi_mean(sample: JudgedSample, *, alpha: float = 0.05, lam: float | None = None,
             small_sample: bool = True) -> Estimate:
    """PPI++ estimate of the pass rate: λ·(judge mean on the N) + (human − λ·judge mean on the n), with its
    (1 − alpha) interval; lam None tunes it (see power_tuning), 0 is the humans alone, 1 plain PPI.

    The point estimate is ppi-python's. `small_sample` (default) makes two changes to its normal interval, both
    fading as n grows: z²/16 of an item joins each (human, judge) cell in the rectifier's variance (about one item
    in all; Agresti & Min's idea for paired proportions), so 50 labels that happened to show no disagreement do not
    make the judge look perfect; and the interval
    is Wilson's at the effective n the variance amounts to, θ(1 − θ)/Var, so a pass rate near 0 or 1 gets the
    skewed interval a proportion needs (with a useless judge, lambda 0, that is the human labels' own Wilson
    interval). False gives ppi-python's interval exactly."""
    require_labels(sample, "ppi++")
    n, big_n = sample.n, sample.n_unlabeled
    notes = label_warnings(sample) + judge_warnings(sample)
    if big_n == 0:
        lam = 0.0  # nothing to impute: the rectifier alone would be the human mean minus a judge mean
    elif lam is None:
        lam = power_tuning(sample)
    w, wu = normalized(sample.weights, n), normalized(sample.weights_unlabeled, big_n)
    z = z_value(alpha)
    rectifier = sample.human - lam * sample.judge
    value = weighted_mean(rectifier, w)
    var = _rectifier_variance(rectifier, w, lam, z * z / 16 if small_sample else 0.0)
    if big_n:
        imputed = lam * sample.judge_unlabeled
        value, var = value + weighted_mean(imputed, wu), var + mean_variance(imputed, wu)
    if small_sample and 0 < value < 1 and var > 0:
        lo, hi = wilson(value, min(value * (1 - value) / var, n + big_n), alpha)
    else:
        lo, hi = value - z * np.sqrt(var), value + z * np.sqrt(var)
    if sample.human.min() == sample.human.max():
        # One label value: the rectifier's variance is (nearly) 0 and the normal interval would claim certainty.
        wlo, whi = wilson(weighted_mean(sample.human, w), effective_n(sample.human, sample.weights), alpha)
        lo, hi = min(lo, wlo), max(hi, whi)
        notes.append(f"every human label is {'pass' if sample.human[0] else 'fail'}: the interval is widened to "
                     "the human labels' Wilson interval")
    return Estimate("ppi++", clip01(value), clip01(lo), clip01(hi), n, big_n, lam, tuple(notes))


def _rectifier_variance(rectifier: np.ndarray, w: np.ndarray, lam: float, pseudo: float) -> float:
    """Variance of the rectifier's weighted mean, Σ w²(r − m)² / (Σw)², with `pseudo` of an item in each
    (human, judge) cell of {1, 0}²: they add to the spread (numerator) but not to the sample size."""
    if pseudo == 0:
        return mean_variance(rectifier, w)
    cells = np.array([1.0, 1.0, 0.0, 0.0]) - lam * np.array([1.0, 0.0, 1.0, 0.0])
    centre = float(((w * rectifier).sum() + pseudo * cells.sum()) / (w.sum() + 4 * pseudo))
    spread = ((w * (rectifier - centre)) ** 2).sum() + pseudo * ((cells - centre) ** 2).sum()
    return float(spread / w.sum() ** 2)
