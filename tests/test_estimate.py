"""Judge-corrected quality: PPI++ equals ppi-python on random data, intervals cover a known truth over many
seeded draws (good, random and constant judges; weights tied to the outcome), Rogan–Gladen and Wilson equal
their formulas, and degenerate inputs give warnings or refusals, never a silent number."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, norm

from llmbus.errors import EstimateError
from llmbus.quality import label
from llmbus.quality.calibrate import calibrate
from llmbus.quality.coverage import simulate_coverage
from llmbus.quality.estimate import (
    JudgedSample,
    by_slice,
    estimate_quality,
    human_only,
    judged_sample,
    ppi_mean,
    rogan_gladen,
    rogan_gladen_from_agreement,
)
from llmbus.store import Store
from quality_helpers import add_judge_run, add_run

with warnings.catch_warnings():  # importing ppi_py switches off every warning of the process
    from ppi_py import ppi_mean_ci, ppi_mean_pointestimate

Z = float(norm.ppf(0.975))


def _random_sample(seed: int, continuous: bool = False, weighted: bool = False) -> JudgedSample:
    """Human labels near 0.5, a judge that agrees with them on ~80% (or its pass probability), random sizes."""
    rng = np.random.default_rng(seed)
    n, big_n = int(rng.integers(40, 400)), int(rng.integers(100, 4000))
    y = (rng.uniform(size=n) < 0.5).astype(float)
    truth_u = (rng.uniform(size=big_n) < 0.5).astype(float)

    def judge(truth: np.ndarray) -> np.ndarray:
        if continuous:
            return np.clip(0.55 * truth + rng.uniform(0, 0.45, size=len(truth)), 0, 1)
        return np.where(rng.uniform(size=len(truth)) < 0.8, truth, 1 - truth)

    weights = dict(weights=rng.uniform(0.2, 5, size=n), weights_unlabeled=rng.uniform(0.2, 5, size=big_n)) \
        if weighted else {}
    return judged_sample(y, judge(y), judge(truth_u), **weights)


def _ppi_py_args(s: JudgedSample) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return s.human, s.judge, s.judge_unlabeled


@pytest.mark.parametrize("seed", range(12))
def test_ppi_equals_ppi_python_on_random_data(seed: int):
    s = _random_sample(seed, continuous=seed % 2 == 1)
    for lam in (None, 0.0, 0.3, 1.0):
        ours = ppi_mean(s, lam=lam, small_sample=False)
        lo, hi = ppi_mean_ci(*_ppi_py_args(s), alpha=0.05, lam=lam)
        assert ours.value == pytest.approx(float(ppi_mean_pointestimate(*_ppi_py_args(s), lam=lam)[0]), abs=1e-12)
        assert (ours.lo, ours.hi) == pytest.approx((float(lo[0]), float(hi[0])), abs=1e-12)
    tuned = ppi_mean(s)
    assert 0 < tuned.lam <= 1  # a judge right 80% of the time earns a share
    # The small-sample interval (the default: pseudo-counts, Wilson form) differs from ppi-python's by O(1/n).
    plain = ppi_mean(s, small_sample=False)
    assert tuned.value == plain.value
    assert abs(tuned.lo - plain.lo) < 10 * plain.width / s.n and abs(tuned.hi - plain.hi) < 10 * plain.width / s.n


@pytest.mark.parametrize("seed", range(6))
def test_weighted_point_estimate_equals_ppi_python(seed: int):
    s = _random_sample(100 + seed, continuous=seed % 2 == 0, weighted=True)
    assert s.weights is not None and s.weights_unlabeled is not None
    for lam in (None, 0.0, 0.5, 1.0):
        expected = ppi_mean_pointestimate(*_ppi_py_args(s), lam=lam, w=s.weights, w_unlabeled=s.weights_unlabeled)
        assert ppi_mean(s, lam=lam).value == pytest.approx(float(np.ravel(expected)[0]), abs=1e-12)
    # Constant weights are no weights; probabilities are their inverses.
    flat = judged_sample(s.human, s.judge, s.judge_unlabeled, weights=np.full(s.n, 3.0),
                         probabilities_unlabeled=np.full(s.n_unlabeled, 0.25))
    bare = JudgedSample(s.human, s.judge, s.judge_unlabeled)
    for method in (ppi_mean, human_only):
        a, b = method(flat), method(bare)
        assert (a.value, a.lo, a.hi) == pytest.approx((b.value, b.lo, b.hi), abs=1e-12)
    scaled = judged_sample(s.human, s.judge, s.judge_unlabeled, probabilities=0.2 / s.weights,
                           weights_unlabeled=7 * s.weights_unlabeled)
    a, b = ppi_mean(scaled), ppi_mean(s)
    assert (a.value, a.lo, a.hi) == pytest.approx((b.value, b.lo, b.hi), abs=1e-12)


def _outcome_weighted_population(seed: int = 1) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
    """20k items whose pass rate rises with a judge score; humans label passes 6.7× as often as fails, judge-only
    items are sampled 3.3× as often where the judge passes (both probabilities known)."""
    rng = np.random.default_rng(seed)
    score = rng.uniform(size=20_000)
    y = (rng.uniform(size=score.size) < 0.15 + 0.8 * score).astype(float)
    verdict = (score > 0.5).astype(float)
    p_label = np.where(y == 1, 1.0, 0.15)
    p_judged = np.where(verdict == 1, 1.0, 0.3)
    return y, verdict, float(y.mean()), p_label / p_label.sum(), p_judged / p_judged.sum()


def test_weighted_interval_covers_where_ppi_pythons_does_not():
    y, verdict, truth, p_label, p_judged = _outcome_weighted_population()
    rng = np.random.default_rng(7)
    draws, ours, theirs, estimates, ses = 300, 0, 0, [], []
    for _ in range(draws):
        lab, unl = rng.choice(y.size, 200, p=p_label), rng.choice(y.size, 2000, p=p_judged)
        s = judged_sample(y[lab], verdict[lab], verdict[unl], weights=1 / p_label[lab],
                          weights_unlabeled=1 / p_judged[unl])
        est = ppi_mean(s, lam=0.0)  # the humans alone, weighted: where the two variances differ most
        ours += est.lo <= truth <= est.hi
        lo, hi = ppi_mean_ci(y[lab], verdict[lab], verdict[unl], alpha=0.05, lam=0.0, w=s.weights,
                             w_unlabeled=s.weights_unlabeled)
        theirs += float(lo[0]) <= truth <= float(hi[0])
        estimates.append(est.value)
        ses.append(est.width / (2 * Z))
    assert ours / draws >= 0.92, ours / draws
    assert theirs / draws < 0.6, theirs / draws  # Var(w·y)/n with normalized weights: far too narrow here
    # The predicted standard error is the real spread of the estimate over draws.
    assert np.mean(ses) == pytest.approx(np.std(estimates), rel=0.15)
    tuned = [ppi_mean(judged_sample(y[lab], verdict[lab], verdict[unl], probabilities=p_label[lab] / p_label.max(),
                                    probabilities_unlabeled=p_judged[unl] / p_judged.max()))
             for lab, unl in ((rng.choice(y.size, 200, p=p_label), rng.choice(y.size, 2000, p=p_judged))
                              for _ in range(200))]
    assert np.mean([e.lo <= truth <= e.hi for e in tuned]) >= 0.91


def _population(size: int, pass_rate: float, tpr: float, tnr: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Human labels with the given pass rate and a judge with the given TPR/TNR, item by item."""
    rng = np.random.default_rng(seed)
    y = (rng.uniform(size=size) < pass_rate).astype(float)
    u = rng.uniform(size=size)
    return y, np.where(y == 1, u < tpr, u >= tnr).astype(float)


def test_coverage_with_a_good_judge_is_valid_and_narrower():
    # A good judge (kappa ~0.85) that errs mostly one way, passing 8% of the fails: its own rate is ~0.05 too high.
    y, judge = _population(400, 0.3, 0.99, 0.92, seed=3)
    sims = simulate_coverage(y, judge, n=80, n_unlabeled=1500, draws=300, seed=0)
    ppi, rg, humans = sims["ppi++"], sims["rogan-gladen"], sims["human-only"]
    assert ppi.coverage >= 0.92 and rg.coverage >= 0.92 and humans.coverage >= 0.92, sims
    assert ppi.mean_width <= 0.7 * humans.mean_width, sims
    assert ppi.mean_lam is not None and ppi.mean_lam > 0.6
    # The judge's own rate with its own binomial interval (what a dashboard shows without humans) misses.
    judged_rate = judge.mean()
    assert abs(judged_rate - y.mean()) > 3 * np.sqrt(judged_rate * (1 - judged_rate) / 1500)


@pytest.mark.parametrize("kind", ["random", "constant"])
def test_coverage_with_a_useless_judge_stays_valid_and_not_much_wider(kind: str):
    y, judge = _population(400, 0.3, 0.5, 0.5, seed=4)
    if kind == "constant":
        judge = np.ones_like(y)
    sims = simulate_coverage(y, judge, n=80, n_unlabeled=1500, draws=300, seed=1)
    ppi, humans = sims["ppi++"], sims["human-only"]
    assert ppi.coverage >= 0.92 and ppi.mean_width <= 1.1 * humans.mean_width, sims
    assert ppi.mean_lam is not None and ppi.mean_lam < 0.2
    rg = sims["rogan-gladen"]
    if kind == "constant":  # TPR + TNR − 1 = 0 on every draw: refused, never a number
        assert rg.draws == 0 and rg.refused == 300
    else:
        assert rg.refused > 0 and (rg.draws == 0 or rg.coverage >= 0.92)


def test_small_sample_interval_stays_valid():
    # 40 labels, pass rate 0.15, a judge wrong on 2.3% of the items (all false passes): 39% of the draws see no
    # disagreement at all, and ppi-python's interval then trusts the judge completely.
    y, judge = _population(300, 0.15, 1.0, 0.965, seed=5)
    ours = simulate_coverage(y, judge, n=40, n_unlabeled=1000, draws=400, seed=2)["ppi++"]
    theirs = simulate_coverage(y, judge, n=40, n_unlabeled=1000, draws=400, seed=2, small_sample=False)["ppi++"]
    assert ours.coverage >= 0.95 and theirs.coverage < 0.9, (ours, theirs)
    assert ours.mean_width < 0.7 * simulate_coverage(y, judge, n=40, n_unlabeled=1000, draws=400,
                                                     seed=2)["human-only"].mean_width


def test_rogan_gladen_hand_computed():
    # 50 human passes, the judge passes 45 (TPR 0.9); 50 fails, the judge fails 40 (TNR 0.8); 100 of 200 judge-only
    # items pass (q 0.5) → (0.5 + 0.8 − 1) / 0.7 = 3/7.
    human = [1] * 50 + [0] * 50
    judge = [1] * 45 + [0] * 5 + [0] * 40 + [1] * 10
    est = rogan_gladen(judged_sample(human, judge, [1] * 100 + [0] * 100))
    assert est.value == pytest.approx(3 / 7)

    def ac(p: float, m: int) -> float:  # Agresti–Coull: z²/2 pseudo-successes and failures
        adjusted = (p * m + Z * Z / 2) / (m + Z * Z)
        return adjusted * (1 - adjusted) / (m + Z * Z)

    pi = 3 / 7
    se = np.sqrt(ac(0.5, 200) + pi**2 * ac(0.9, 50) + (1 - pi) ** 2 * ac(0.8, 50)) / 0.7
    assert (est.lo, est.hi) == pytest.approx((pi - Z * se, pi + Z * se))
    # Clipped, and said so, when the judge's rate lies outside [1 − TNR, TPR].
    low = rogan_gladen(judged_sample(human, judge, [1] * 10 + [0] * 190))
    assert low.value == 0 and any("clipped" in w for w in low.warnings)


def test_rogan_gladen_from_a_calibration_report(store: Store, tiny_task: Path, tmp_path: Path):
    human = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1] * 2
    judge = [1, 1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 1] * 2
    target = add_run(store, [{"item_id": f"m{i}", "parsed": "ham", "expected": "ham"} for i in range(40)],
                     task="tiny", labels=["ham", "spam"], task_path=str(tiny_task))
    judge_run = add_judge_run(store, target, {f"m{i}": "pass" if v else "fail" for i, v in enumerate(judge)})
    label.create_project(store, "p", target, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"m{i}", "label": "pass" if h else "fail"}) + "\n"
                            for i, h in enumerate(human)))
    label.import_labels(store, "p", path, "ann")
    report = calibrate(store, judge_run, "p")
    from_report = rogan_gladen_from_agreement(report.agreement, judged_pass=130, judged=300)
    from_sample = rogan_gladen(judged_sample(human, judge, [1] * 130 + [0] * 170))
    assert (from_report.value, from_report.lo, from_report.hi) == pytest.approx(
        (from_sample.value, from_sample.lo, from_sample.hi))
    assert from_report.n == 40 and from_report.n_unlabeled == 300
    with pytest.raises(EstimateError, match="not a pass count"):
        rogan_gladen_from_agreement(report.agreement, judged_pass=5, judged=3)


@pytest.mark.parametrize("passes", [0, 1, 17, 40, 79, 80])
def test_human_only_is_wilson(passes: int):
    est = human_only(judged_sample([1] * passes + [0] * (80 - passes), [0.5] * 80, []))
    ci = binomtest(passes, 80).proportion_ci(confidence_level=0.95, method="wilson")
    assert (est.lo, est.hi) == pytest.approx((ci.low, ci.high), abs=1e-12) and est.value == passes / 80


def test_weights_are_inverse_probabilities():
    # A stratum labeled at rate 1/4 counts 4×: the same as labeling every item of it.
    y = np.array([1.0] * 30 + [0.0] * 10)
    j = y.copy()
    weighted = judged_sample(y, j, [], weights=[4.0] * 30 + [1.0] * 10)
    expanded = judged_sample(np.repeat(y, [4] * 30 + [1] * 10), np.repeat(j, [4] * 30 + [1] * 10), [])
    assert human_only(weighted).value == pytest.approx(human_only(expanded).value) == pytest.approx(120 / 130)
    # Heavy weights leave few effective labels: said so.
    heavy = judged_sample(y, j, [1.0] * 50, weights=[100.0] + [1.0] * 39)
    assert any("effective" in w for w in ppi_mean(heavy).warnings)


def test_no_labels_is_refused_not_a_number():
    s = judged_sample([], [], [1, 1, 0, 1])
    for method in (ppi_mean, rogan_gladen, human_only):
        with pytest.raises(EstimateError, match=r"no human labels \(the judge passed 0\.750 of 4 items\)"):
            method(s)
    result = estimate_quality(s)
    assert result.estimates == {} and set(result.refused) == {"ppi++", "rogan-gladen", "human-only"}
    assert result.best is None and result.agreement is None


def test_degenerate_judges_and_labels_warn():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=60) < 0.4).astype(float)
    constant = estimate_quality(judged_sample(y, np.ones(60), np.ones(500)))
    ppi = constant.estimates["ppi++"]
    assert ppi.lam == 0 and any("same verdict (1) on every item" in w for w in ppi.warnings)
    assert "no better than chance" in constant.refused["rogan-gladen"]
    for n, big_n, c in ((30, 777, 1.0), (37, 777, 0.7), (65, 100, 0.7)):  # sizes where rounding made var > 0
        labels = (np.random.default_rng(n).uniform(size=n) < 0.3).astype(float)
        assert ppi_mean(judged_sample(labels, np.full(n, c), np.full(big_n, c))).lam == 0
    noise = estimate_quality(judged_sample(y, (rng.uniform(size=60) < 0.5).astype(float),
                                           (rng.uniform(size=500) < 0.5).astype(float)))
    assert any("agrees with the humans little" in w for w in noise.estimates["ppi++"].warnings)
    few = ppi_mean(judged_sample(y[:12], y[:12], y[12:]))
    assert any("only 12 human labels" in w for w in few.warnings)
    alone = ppi_mean(judged_sample(y, y, []))
    assert alone.lam == 0 and alone.value == y.mean() and any("no judge-only items" in w for w in alone.warnings)
    # Every label a pass, the judge always agreeing: the normal interval would be [1, 1].
    sure = ppi_mean(judged_sample(np.ones(40), np.ones(40), np.ones(400)), small_sample=False)
    wilson_lo = binomtest(40, 40).proportion_ci(method="wilson").low
    assert sure.lo == pytest.approx(wilson_lo) and any("every human label is pass" in w for w in sure.warnings)
    with pytest.raises(EstimateError, match="no human label is fail"):
        rogan_gladen(judged_sample(np.ones(40), np.ones(40), np.ones(400)))
    with pytest.raises(EstimateError, match="needs verdicts 1/0"):
        rogan_gladen(judged_sample(y, y * 0.9, [0.3]))


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(human=[1, 0.5], judge=[1, 1]), "human label 1: 0.5 is not 1 .pass. or 0 .fail."),
    (dict(human=[1, 0], judge=[1]), "2 human labels but 1 judge verdicts"),
    (dict(human=[1, 0], judge=[1, 2]), "judge verdict 1: 2 is not a verdict 1/0 or a pass probability"),
    (dict(human=[1, "x"], judge=[1, 1]), "human labels must be numbers"),
    (dict(human=[1, 0], judge=[1, 0], weights=[1, 0]), "labeled item 1: weight 0 is not a positive number"),
    (dict(human=[1, 0], judge=[1, 0], probabilities=[1, 1.5]), "sampling probability 1.5 is not in .0, 1.$"),
    (dict(human=[1, 0], judge=[1, 0], weights=[1, 1], probabilities=[1, 1]), "weights or sampling probabilities"),
    (dict(human=[1, 0], judge=[1, 0], weights=[1]), "1 weights for 2 items"),
])
def test_bad_input_is_one_clear_error(kwargs: dict, message: str):
    human, judge = kwargs.pop("human"), kwargs.pop("judge")
    with pytest.raises(EstimateError, match=message):
        judged_sample(human, judge, [1, 0], **kwargs)


def test_bad_alpha():
    s = judged_sample([1, 0, 1], [1, 0, 1], [1, 1])
    for call in (lambda: ppi_mean(s, alpha=5), lambda: estimate_quality(s, alpha=0), lambda: human_only(s, alpha=1)):
        with pytest.raises(EstimateError, match=r"alpha \d: the error level of an interval lies between 0 and 1"):
            call()


def test_by_slice():
    rng = np.random.default_rng(9)
    y_a, j_a = _population(300, 0.8, 0.95, 0.9, seed=10)
    y_b, j_b = _population(300, 0.3, 0.95, 0.9, seed=11)
    lab = rng.integers(0, 300, 60)
    unl = rng.integers(0, 300, 800)
    s = judged_sample(np.concatenate([y_a[lab], y_b[lab]]), np.concatenate([j_a[lab], j_b[lab]]),
                      np.concatenate([j_a[unl], j_b[unl], [1.0] * 20]))
    keys, keys_u = ["a"] * 60 + ["b"] * 60, ["a"] * 800 + ["b"] * 800 + ["c"] * 20
    slices = by_slice(s, keys, keys_u)
    assert sorted(slices) == ["a", "b", "c"]
    alone = estimate_quality(judged_sample(y_b[lab], j_b[lab], j_b[unl]))
    assert slices["b"].estimates["ppi++"] == alone.estimates["ppi++"]
    assert slices["a"].estimates["ppi++"].value > 0.6 > 0.45 > slices["b"].estimates["ppi++"].value
    assert slices["c"].estimates == {} and "no human labels" in slices["c"].refused["ppi++"]
    together = by_slice(s, keys, keys_u, simultaneous=True)  # Bonferroni over 3 slices: alpha 0.05 / 3
    assert together["a"].estimates["ppi++"].width > slices["a"].estimates["ppi++"].width
    with pytest.raises(EstimateError, match="one key per item"):
        by_slice(s, keys[:-1], keys_u)
