"""What judge-corrected quality is estimated from: a `JudgedSample` (n items with a human label and a judge
verdict, N items with a verdict only, optional weights), its checks, the weighted-mean arithmetic the estimators
share, and the warnings about weak inputs (few labels, a judge that says one thing or agrees little, heavy
weights).

Weights are inverse inclusion probabilities (or give the probabilities): an item sampled with probability 0.1
stands for 10. Each set's weights are normalized to mean 1 (a Hájek estimate, as ppi-python does), and the
variances are those of that self-normalized mean, Σ w²(x − x̄_w)² / (Σ w)², not ppi-python's Var(w·x)/n, which
treats the normalized weights as fixed: with weights tied to the outcome (passes labeled 6.7× as often as fails)
that interval held the truth in 44% of 300 draws, this one in 93% (tests/test_estimate.py). Without weights the
two are the same number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from llmbus.errors import EstimateError
from llmbus.quality.agreement import BinaryAgreement, binary_agreement

MIN_LABELS = 30  # below this the normal approximation behind every interval is rough
MIN_KAPPA = 0.2  # a judge agreeing less than this with the humans adds (almost) nothing
Values = Sequence[float] | np.ndarray  # per-item numbers: a list or an array


@dataclass(frozen=True)
class Estimate:
    """A pass-rate estimate with its (1 − alpha) interval, how it was made, and what makes it weak."""

    method: str
    value: float
    lo: float
    hi: float
    n: int  # human labels used
    n_unlabeled: int  # judge-only items used
    lam: float | None = None  # PPI++: the judge's share (0 = humans only, 1 = plain PPI)
    warnings: tuple[str, ...] = ()

    @property
    def width(self) -> float:
        """hi − lo."""
        return self.hi - self.lo

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return {**asdict(self), "warnings": list(self.warnings), "width": self.width}


@dataclass(frozen=True, eq=False)
class JudgedSample:
    """n labeled items (human: 1 pass / 0 fail; judge: its verdict 1/0 or its pass probability) and the judge on
    N items no human labeled; weights are inverse inclusion probabilities (None: every item counts the same)."""

    human: np.ndarray
    judge: np.ndarray
    judge_unlabeled: np.ndarray
    weights: np.ndarray | None = None
    weights_unlabeled: np.ndarray | None = None

    @property
    def n(self) -> int:
        """Human-labeled items."""
        return len(self.human)

    @property
    def n_unlabeled(self) -> int:
        """Judge-only items."""
        return len(self.judge_unlabeled)

    def subset(self, labeled: np.ndarray, unlabeled: np.ndarray) -> JudgedSample:
        """The items selected by two boolean masks (one per set)."""
        return JudgedSample(self.human[labeled], self.judge[labeled], self.judge_unlabeled[unlabeled],
                            None if self.weights is None else self.weights[labeled],
                            None if self.weights_unlabeled is None else self.weights_unlabeled[unlabeled])


def judged_sample(human: Values, judge: Values, judge_unlabeled: Values, *,
                  weights: Values | None = None, weights_unlabeled: Values | None = None,
                  probabilities: Values | None = None,
                  probabilities_unlabeled: Values | None = None) -> JudgedSample:
    """A checked JudgedSample: human labels 0/1, verdicts in [0, 1], weights > 0 or probabilities in (0, 1]."""
    y = _values(human, "human label", binary=True)
    yhat = _values(judge, "judge verdict", binary=False)
    if len(yhat) != len(y):
        raise EstimateError(f"{len(y)} human labels but {len(yhat)} judge verdicts on the labeled items: give one "
                            "verdict per labeled item")
    yhat_u = _values(judge_unlabeled, "judge verdict (unlabeled)", binary=False)
    return JudgedSample(y, yhat, yhat_u, _weights_of(weights, probabilities, len(y), "labeled"),
                        _weights_of(weights_unlabeled, probabilities_unlabeled, len(yhat_u), "unlabeled"))


def _floats(raw: Values, what: str) -> np.ndarray:
    try:
        return np.asarray(raw, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise EstimateError(f"{what}s must be numbers: {list(raw)[:5]!r}…") from None


def _values(raw: Values, what: str, binary: bool) -> np.ndarray:
    values = _floats(raw, what)
    bad = ~np.isin(values, (0.0, 1.0)) if binary else ~((values >= 0) & (values <= 1))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        allowed = "1 (pass) or 0 (fail)" if binary else "a verdict 1/0 or a pass probability in [0, 1]"
        raise EstimateError(f"{what} {k}: {values[k]:g} is not {allowed}")
    return values


def _weights_of(weights: Values | None, probabilities: Values | None, size: int,
                which: str) -> np.ndarray | None:
    if weights is not None and probabilities is not None:
        raise EstimateError(f"{which} items: give weights or sampling probabilities, not both")
    raw, what = (weights, "weight") if weights is not None else (probabilities, "sampling probability")
    if raw is None:
        return None
    values = _floats(raw, f"{which} {what}")
    if len(values) != size:
        raise EstimateError(f"{which} items: {len(values)} {what}s for {size} items")
    ok = (values > 0) & np.isfinite(values) & ((values <= 1) if probabilities is not None else True)
    if not ok.all():
        k = int(np.flatnonzero(~ok)[0])
        need = "in (0, 1]" if probabilities is not None else "a positive number"
        raise EstimateError(f"{which} item {k}: {what} {values[k]:g} is not {need}")
    return values if probabilities is None else 1.0 / values


def normalized(w: np.ndarray | None, size: int) -> np.ndarray:
    """Weights scaled to mean 1 (ones when None), as ppi-python scales them."""
    return np.ones(size) if w is None else w / w.sum() * size


def weighted_mean(x: np.ndarray, w: np.ndarray) -> float:
    """Σ w·x / Σ w."""
    return float((w * x).sum() / w.sum())


def mean_variance(x: np.ndarray, w: np.ndarray) -> float:
    """Variance of the weighted (self-normalized) mean: Σ w²(x − x̄_w)² / (Σw)²; np.var(x) / n without weights."""
    return float(((w * (x - weighted_mean(x, w))) ** 2).sum() / w.sum() ** 2)


def effective_n(x: np.ndarray, w: np.ndarray | None) -> float:
    """The sample size an unweighted proportion would need for the weighted one's variance (Korn & Graubard
    1998: p(1 − p) / Var), at most the item count; Kish's (Σw)² / Σw² when p is 0 or 1."""
    if w is None or len(x) == 0:
        return float(len(x))
    w = normalized(w, len(x))
    p, var = weighted_mean(x, w), mean_variance(x, w)
    if 0 < p < 1 and var > 0:
        return min(float(len(x)), p * (1 - p) / var)
    return float(w.sum() ** 2 / (w**2).sum())


def z_value(alpha: float) -> float:
    """The two-sided normal quantile for a (1 − alpha) interval."""
    if not 0 < alpha < 1:
        raise EstimateError(f"alpha {alpha!r}: the error level of an interval lies between 0 and 1 (0.05 for 95%)")
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson(p: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over n (possibly effective) trials."""
    z = z_value(alpha)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def require_labels(sample: JudgedSample, method: str) -> None:
    """Refuse (EstimateError) a sample without human labels: a judge's own pass rate is no estimate."""
    if sample.n == 0:
        seen = f" (the judge passed {sample.judge_unlabeled.mean():.3f} of {sample.n_unlabeled} items)" \
            if sample.n_unlabeled else ""
        raise EstimateError(f"{method}: no human labels{seen}: a judge's own pass rate is not an estimate of "
                            "quality; label some items first (llmbus label create … --run RUN)")


def label_warnings(sample: JudgedSample) -> list[str]:
    """Warning lines about the human labels alone: too few, or weights that leave few."""
    out = []
    if sample.n < MIN_LABELS:
        out.append(f"only {sample.n} human labels (< {MIN_LABELS}): the 95% interval is approximate")
    out += _weight_warnings(sample.weights, "human labels")
    return out


def judge_warnings(sample: JudgedSample) -> list[str]:
    """Warning lines about what the judge can add: nothing when it says one thing, little when it agrees little
    with the humans, nothing without judge-only items."""
    out = []
    everything = np.concatenate([sample.judge, sample.judge_unlabeled])
    if len(everything) and everything.min() == everything.max():
        out.append(f"the judge gave the same verdict ({everything[0]:g}) on every item: it carries no information "
                   "about quality")
    elif sample.n >= 2:
        stats = agreement_of(sample)
        if not stats.kappa >= MIN_KAPPA:  # nan (one verdict on the labeled items) fails too
            out.append(f"the judge agrees with the humans little (Cohen's kappa {stats.kappa:.2f} on {sample.n} "
                       "labeled items): the estimate rests on the human labels")
    if sample.n_unlabeled == 0:
        out.append("no judge-only items: the judge cannot add anything to the human labels")
    out += _weight_warnings(sample.weights_unlabeled, "judge-only items")
    return out


def _weight_warnings(w: np.ndarray | None, name: str) -> list[str]:
    if w is None or not len(w):
        return []
    kish = float(w.sum() ** 2 / (w**2).sum())
    return [f"the weights leave an effective {kish:.0f} of {len(w)} {name}"] if kish < len(w) / 2 else []


def agreement_of(sample: JudgedSample) -> BinaryAgreement:
    """The judge against the humans on the labeled items (a probability ≥ 0.5 is a pass), unweighted."""
    judged = ["pass" if v >= 0.5 else "fail" for v in sample.judge]
    return binary_agreement(judged, ["pass" if h else "fail" for h in sample.human], "pass")


def clip01(x: float) -> float:
    """x clipped to [0, 1], as a float."""
    return float(min(1.0, max(0.0, x)))
