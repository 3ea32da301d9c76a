"""Judge-corrected quality: the pass rate of a run (or of served traffic) from a few human labels plus many judge
verdicts, with a 95% interval that stays valid however good or bad the judge is.

Three estimates of the same pass rate, from a `JudgedSample` (n items with a human label and a verdict, N items
with a verdict only):
- `ppi_mean`: prediction-powered inference, PPI++ (Angelopoulos, Duchi & Zrnic 2023, arXiv:2311.01453): the
  judge's mean on the N items plus the human-minus-judge gap measured on the n, the judge's share tuned by
  lambda ∈ [0, 1] (0 = humans only, so a useless judge costs almost nothing). Point estimate and lambda are
  ppi-python's `ppi_mean_pointestimate`, and with `small_sample=False` and no weights so is the interval
  (`ppi_mean_ci`; the tests compare them). The default interval adds two small-sample repairs that fade as n
  grows (pseudo-counts in the variance, Wilson's form): at 50 labels ppi-python's interval covered 0.89–0.91 on
  the bench's SMS answers (bench/quality_estimate.py) and 0.86 at 40 in the tests, this one 0.96–0.975.
  ppi-python itself is not imported: it brings numba, statsmodels and a Google Drive downloader, and switches
  off every warning of the process when imported.
- `rogan_gladen`: the judge's apparent pass rate q on the N items corrected by its TPR and TNR against the
  humans (Rogan & Gladen 1978): (q + TNR − 1) / (TPR + TNR − 1), with a delta-method interval whose three
  proportions are Agresti–Coull adjusted (a judge that matched all 20 positives still has an uncertain TPR).
- `human_only`: the Wilson interval of the human labels alone — what the judge is measured against.

Weights are inverse inclusion probabilities (or give the probabilities): an item sampled with probability 0.1
stands for 10. Each set's weights are normalized to mean 1 (a Hájek estimate, as ppi-python does), and the
variances are those of that self-normalized mean, Σ w²(x − x̄_w)² / (Σ w)², not ppi-python's Var(w·x)/n, which
treats the normalized weights as fixed: with weights tied to the outcome (passes labeled 6.7× as often as fails)
that interval held the truth in 44% of 300 draws, this one in 93% (tests/test_estimate.py). Without weights the
two are the same number.

Inputs that cannot give an estimate (no human labels; a Rogan–Gladen judge no better than chance) raise
EstimateError; weak ones (few labels, a judge that says one thing or agrees little, heavy weights) carry warning
lines on the estimate. `estimate_quality` gives all three with the judge's agreement; `by_slice` per key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from llmbus.errors import EstimateError
from llmbus.quality.agreement import BinaryAgreement, binary_agreement

MIN_LABELS = 30  # below this the normal approximation behind every interval is rough
MIN_KAPPA = 0.2  # a judge agreeing less than this with the humans adds (almost) nothing
MIN_YOUDEN = 0.1  # TPR + TNR − 1 below this: Rogan–Gladen divides by (nearly) zero
METHODS = ("ppi++", "rogan-gladen", "human-only")
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


def _normalized(w: np.ndarray | None, size: int) -> np.ndarray:
    """Weights scaled to mean 1 (ones when None), as ppi-python scales them."""
    return np.ones(size) if w is None else w / w.sum() * size


def _mean(x: np.ndarray, w: np.ndarray) -> float:
    return float((w * x).sum() / w.sum())


def _mean_variance(x: np.ndarray, w: np.ndarray) -> float:
    """Variance of the weighted (self-normalized) mean: Σ w²(x − x̄_w)² / (Σw)²; np.var(x) / n without weights."""
    return float(((w * (x - _mean(x, w))) ** 2).sum() / w.sum() ** 2)


def effective_n(x: np.ndarray, w: np.ndarray | None) -> float:
    """The sample size an unweighted proportion would need for the weighted one's variance (Korn & Graubard
    1998: p(1 − p) / Var), at most the item count; Kish's (Σw)² / Σw² when p is 0 or 1."""
    if w is None or len(x) == 0:
        return float(len(x))
    w = _normalized(w, len(x))
    p, var = _mean(x, w), _mean_variance(x, w)
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


def _require_labels(sample: JudgedSample, method: str) -> None:
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


def power_tuning(sample: JudgedSample) -> float:
    """PPI++'s lambda for a mean, as ppi-python computes it: Cov(Y, Ŷ) / ((1 + n/N) Var(Ŷ)) over the
    weighted gradients at the lambda = 1 estimate, clipped to [0, 1]; 0 when the judge never varies."""
    n, big_n = sample.n, sample.n_unlabeled
    if big_n == 0 or n < 2 or np.ptp(np.concatenate([sample.judge, sample.judge_unlabeled])) == 0:
        return 0.0  # a constant judge: its variance is rounding noise, and noise over noise is any lambda
    w, wu = _normalized(sample.weights, n), _normalized(sample.weights_unlabeled, big_n)
    y, yhat, yhat_u = sample.human, sample.judge, sample.judge_unlabeled
    theta = _mean(yhat_u, wu) + _mean(y - yhat, w)
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
    _require_labels(sample, "ppi++")
    n, big_n = sample.n, sample.n_unlabeled
    notes = label_warnings(sample) + judge_warnings(sample)
    if big_n == 0:
        lam = 0.0  # nothing to impute: the rectifier alone would be the human mean minus a judge mean
    elif lam is None:
        lam = power_tuning(sample)
    w, wu = _normalized(sample.weights, n), _normalized(sample.weights_unlabeled, big_n)
    z = z_value(alpha)
    rectifier = sample.human - lam * sample.judge
    value = _mean(rectifier, w)
    var = _rectifier_variance(rectifier, w, lam, z * z / 16 if small_sample else 0.0)
    if big_n:
        imputed = lam * sample.judge_unlabeled
        value, var = value + _mean(imputed, wu), var + _mean_variance(imputed, wu)
    if small_sample and 0 < value < 1 and var > 0:
        lo, hi = wilson(value, min(value * (1 - value) / var, n + big_n), alpha)
    else:
        lo, hi = value - z * np.sqrt(var), value + z * np.sqrt(var)
    if sample.human.min() == sample.human.max():
        # One label value: the rectifier's variance is (nearly) 0 and the normal interval would claim certainty.
        wlo, whi = wilson(_mean(sample.human, w), effective_n(sample.human, sample.weights), alpha)
        lo, hi = min(lo, wlo), max(hi, whi)
        notes.append(f"every human label is {'pass' if sample.human[0] else 'fail'}: the interval is widened to "
                     "the human labels' Wilson interval")
    return Estimate("ppi++", _clip(value), _clip(lo), _clip(hi), n, big_n, lam, tuple(notes))


def _rectifier_variance(rectifier: np.ndarray, w: np.ndarray, lam: float, pseudo: float) -> float:
    """Variance of the rectifier's weighted mean, Σ w²(r − m)² / (Σw)², with `pseudo` of an item in each
    (human, judge) cell of {1, 0}²: they add to the spread (numerator) but not to the sample size."""
    if pseudo == 0:
        return _mean_variance(rectifier, w)
    cells = np.array([1.0, 1.0, 0.0, 0.0]) - lam * np.array([1.0, 0.0, 1.0, 0.0])
    centre = float(((w * rectifier).sum() + pseudo * cells.sum()) / (w.sum() + 4 * pseudo))
    spread = ((w * (rectifier - centre)) ** 2).sum() + pseudo * ((cells - centre) ** 2).sum()
    return float(spread / w.sum() ** 2)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


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
    _require_labels(sample, "rogan-gladen")
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
    return _mean(x, _normalized(w, len(x))), effective_n(x, w)


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
    pi = _clip(raw)
    if pi != raw:
        notes = [*notes, f"the judge's pass rate {r.q:.3f} lies outside [1 − TNR, TPR] = [{1 - r.tnr:.3f}, "
                         f"{r.tpr:.3f}]: the correction ({raw:.3f}) was clipped to {pi:g}"]
    z = z_value(alpha)
    var = (_ac_variance(r.q, r.n_q, z) + pi**2 * _ac_variance(r.tpr, r.n_pos, z)
           + (1 - pi) ** 2 * _ac_variance(r.tnr, r.n_neg, z)) / youden**2
    half = z * float(np.sqrt(var))
    return Estimate("rogan-gladen", pi, _clip(pi - half), _clip(pi + half), n, big_n, None, tuple(notes))


def human_only(sample: JudgedSample, *, alpha: float = 0.05) -> Estimate:
    """The human labels alone: their (weighted) pass rate and its Wilson interval (at the effective n)."""
    _require_labels(sample, "human-only")
    p = _mean(sample.human, _normalized(sample.weights, sample.n))
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
