"""Agreement statistics against scikit-learn and published worked examples."""

import math

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from llmbus.quality.agreement import binary_agreement, cohen_kappa, fleiss_kappa


def test_cohen_kappa_matches_sklearn():
    rng = np.random.default_rng(0)
    a = [str(x) for x in rng.choice(["pass", "fail", "unsure"], 200)]
    b = [x if rng.random() < 0.7 else str(rng.choice(["pass", "fail", "unsure"])) for x in a]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(["x", "x"], ["x", "x"]) == 1.0
    assert math.isnan(cohen_kappa([], []))


def test_fleiss_kappa_worked_example():
    # Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories → kappa 0.210.
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[str(cat) for cat, count in enumerate(row) for _ in range(count)] for row in table]
    assert fleiss_kappa(ratings) == pytest.approx(0.210, abs=0.0005)
    # Two raters: Fleiss' kappa is Scott's pi, which differs from Cohen's only through pooled marginals.
    assert fleiss_kappa([["a", "a"], ["b", "b"]]) == 1.0


def test_binary_agreement_hand_computed():
    judge = ["pass", "pass", "fail", "fail", "pass", "fail", "pass", "pass"]
    human = ["pass", "pass", "pass", "fail", "fail", "fail", "pass", "pass"]
    stats = binary_agreement(judge, human, "pass")
    assert (stats.tp, stats.fn, stats.fp, stats.tn) == (4, 1, 1, 2)
    assert stats.tpr == pytest.approx(4 / 5) and stats.tnr == pytest.approx(2 / 3)
    assert stats.accuracy == pytest.approx(6 / 8)
    # po = 0.75; pe = (5/8)(5/8) + (3/8)(3/8) = 34/64 → kappa = (0.75 − 0.53125) / (1 − 0.53125) = 0.4667
    assert stats.kappa == pytest.approx(0.21875 / 0.46875)
