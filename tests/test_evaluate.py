"""eval: metrics checked against scikit-learn and SciPy, bootstrap intervals, paired comparison, the CI gate,
and 100k items in flat memory."""

import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from llmbus.errors import GateError
from llmbus.quality.evaluate import compare, evaluate
from llmbus.quality.gate import check_gate, parse_gate
from llmbus.store import Store
from llmbus.task import metrics
from quality_helpers import add_run, classify_rows


def _labels(rng: np.random.Generator, n: int, accuracy: float, classes=("ham", "spam", "other")) -> tuple:
    gold = [str(x) for x in rng.choice(classes, size=n, p=[0.6, 0.3, 0.1])]
    pred = [g if rng.random() < accuracy else str(rng.choice(classes)) for g in gold]
    return pred, gold


def test_classify_metrics_match_sklearn(store: Store):
    rng = np.random.default_rng(1)
    pred, gold = _labels(rng, 300, 0.8)
    pred[5] = None  # a failed call: wrong, and its own confusion column
    report = evaluate(store, add_run(store, classify_rows(pred, gold), labels=["ham", "spam", "other"]), rounds=200)
    shown = [p or "∅" for p in pred]
    classes = ["ham", "spam", "other"]
    assert report.values["accuracy"].value == pytest.approx(accuracy_score(gold, shown))
    assert report.values["macro_f1"].value == pytest.approx(f1_score(gold, shown, average="macro", labels=classes))
    p, r, f, s = precision_recall_fscore_support(gold, shown, labels=classes, zero_division=0)
    for i, cls in enumerate(classes):
        assert report.per_class[cls]["precision"] == pytest.approx(p[i])
        assert report.per_class[cls]["recall"] == pytest.approx(r[i])
        assert report.per_class[cls]["f1"] == pytest.approx(f[i])
        assert report.per_class[cls]["support"] == s[i]
    sk = confusion_matrix(gold, shown, labels=[*classes, "∅"])
    assert [row[:3] for row in report.confusion] == sk[:3, :3].tolist()
    assert [row[3] for row in report.confusion] == sk[:3, 3].tolist()
    assert report.errors == 1


def test_bootstrap_interval_brackets_the_value_and_matches_normal_width(store: Store):
    rng = np.random.default_rng(2)
    n = 400
    gold = ["spam" if x else "ham" for x in rng.random(n) < 0.5]
    pred = [g if rng.random() < 0.8 else ("ham" if g == "spam" else "spam") for g in gold]
    iv = evaluate(store, add_run(store, classify_rows(pred, gold), labels=["ham", "spam"]), rounds=2000)
    acc = iv.values["accuracy"]
    assert acc.lo < acc.value < acc.hi
    normal_half_width = 1.96 * np.sqrt(acc.value * (1 - acc.value) / n)
    assert (acc.hi - acc.lo) / 2 == pytest.approx(normal_half_width, rel=0.15)


def test_extract_and_generate_metrics_match_reference(store: Store):
    gold = [[{"text": "Paris", "type": "geo-loc"}], [{"text": "Obama", "type": "person"}], []]
    pred = [{"entities": [{"text": "paris", "type": "geo-loc"}]}, {"entities": [{"text": "Obama", "type": "company"}]},
            {"entities": []}]
    rows = [{"item_id": str(i), "parsed": p, "expected": g} for i, (p, g) in enumerate(zip(pred, gold, strict=True))]
    report = evaluate(store, add_run(store, rows, kind="extract", metric="entity_f1"), rounds=50)
    reference = metrics.compute("entity_f1", zip(pred, gold, strict=True))
    assert report.values["entity_f1"].value == pytest.approx(reference)
    assert report.values["entity_precision"].value == pytest.approx(0.5)
    assert report.values["exact_match"].value == pytest.approx(2 / 3)
    answers = [("72", "so #### 72"), ("10", "#### 11"), (None, "#### 3")]
    rows = [{"item_id": str(i), "parsed": p, "expected": e, "error_kind": None if p else "no_answer"}
            for i, (p, e) in enumerate(answers)]
    report = evaluate(store, add_run(store, rows, kind="generate", metric="numeric_match", task="g"), rounds=50)
    assert report.values["numeric_match"].value == pytest.approx(1 / 3)
    assert report.metric == "numeric_match" and next(iter(report.values)) == "numeric_match"


def test_paired_comparison_finds_a_real_improvement_and_no_fake_one(store: Store):
    rng = np.random.default_rng(3)
    gold = ["spam" if x else "ham" for x in rng.random(500) < 0.4]
    flip = {"ham": "spam", "spam": "ham"}
    weak = [g if rng.random() < 0.70 else flip[g] for g in gold]
    strong = [g if (w == g or rng.random() < 0.6) else w for g, w in zip(gold, weak, strict=True)]
    a = add_run(store, classify_rows(weak, gold), labels=["ham", "spam"])
    b = add_run(store, classify_rows(strong, gold), labels=["ham", "spam"])
    result = compare(store, a, b, rounds=500)
    assert result.n_paired == 500 and result.delta.lo > 0 and result.verdict.startswith("B is better")
    b_only = sum(s == g != w for s, g, w in zip(strong, gold, weak, strict=True))
    a_only = sum(w == g != s for s, g, w in zip(strong, gold, weak, strict=True))
    assert (result.mcnemar_b_only, result.mcnemar_a_only) == (b_only, a_only)
    assert result.p_mcnemar == pytest.approx(binomtest(b_only, b_only + a_only, 0.5).pvalue)
    same = compare(store, a, a, rounds=200)
    assert same.delta.value == 0 and same.verdict.startswith("no significant difference")


def test_gate_expressions(store: Store):
    report = evaluate(store, add_run(store, classify_rows(["ham", "spam", "ham", None], ["ham", "spam", "spam", "ham"]),
                                     labels=["ham", "spam"]), rounds=50)
    assert check_gate(report, parse_gate("accuracy>=0.5")).passed
    failed = check_gate(report, parse_gate("accuracy>=0.5 and macro_f1>0.9, errors<=0"))
    assert not failed.passed and [c["passed"] for c in failed.checks] == [True, False, False]
    assert check_gate(report, parse_gate("accuracy.hi<=1")).passed
    for bad in ("macro_f1 => 0.9", "", "f1>=high"):
        with pytest.raises(GateError, match=r"cannot parse|empty"):
            parse_gate(bad)
    with pytest.raises(GateError, match="no metric 'rouge'"):
        check_gate(report, parse_gate("rouge>=0.1"))


def _llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_cli_gate_exit_codes(store: Store):
    gold = ["ham", "spam"] * 50
    good = add_run(store, classify_rows(gold, gold), labels=["ham", "spam"], metric="macro_f1")
    worse = add_run(store, classify_rows(["ham"] * 100, gold), labels=["ham", "spam"], metric="macro_f1")
    db = ["--db", store.url.removeprefix("sqlite:///"), "--rounds", "50"]
    passing = _llmbus("eval", good, "--gate", "macro_f1>=0.90", *db)
    assert passing.returncode == 0, passing.stderr
    assert "macro_f1" in passing.stdout and "95% CI" in passing.stdout
    failing = _llmbus("eval", worse, "--gate", "macro_f1>=0.90", *db)
    assert failing.returncode == 1 and "FAIL" in failing.stdout
    dropped = _llmbus("eval", worse, "--baseline", good, "--max-drop", "0.01", *db)
    assert dropped.returncode == 1
    assert _llmbus("eval", good, "--baseline", good, "--max-drop", "0.01", *db).returncode == 0
    compared = _llmbus("eval", worse, good, "--json", *db)
    assert compared.returncode == 0 and '"verdict": "B is better' in compared.stdout
    bad = _llmbus("eval", good, "--gate", "macro_f1 =>0.9", *db)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "cannot parse" in bad.stderr


@pytest.mark.slow
def test_100k_items_stream_in_flat_memory(store: Store):
    rng = np.random.default_rng(4)
    n = 100_000
    gold = ["spam" if x else "ham" for x in rng.random(n) < 0.3]
    pred = [g if rng.random() < 0.9 else "ham" for g in gold]
    run_id = add_run(store, classify_rows(pred, gold), labels=["ham", "spam"])
    del gold, pred
    tracemalloc.start()
    report = evaluate(store, run_id, rounds=100)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.n == n and 0.96 < report.values["accuracy"].value < 0.98  # 0.3 spam × 0.1 wrong
    # The calls themselves (~300 bytes each as Python dicts) would need > 30 MB; the arrays are ~20 bytes/item.
    assert peak < 12_000_000, peak
