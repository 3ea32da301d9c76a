"""How the judge-corrected estimates behave at a label budget: draw n human-labeled and N judge-only items from a
population whose every item has a human label and a verdict, many times, and count how often each method's
interval holds the population's pass rate and how wide it is. The benchmark (bench/quality_estimate.py) and the
tests use it; a team can run it on its own calibration data to see what n labels would buy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from llmbus.errors import EstimateError
from llmbus.quality.estimate import METHODS, estimate_quality, judged_sample


@dataclass(frozen=True)
class Coverage:
    """One method over many draws: the share of intervals holding the truth, their mean width, and refusals."""

    method: str
    draws: int  # draws that gave an interval
    refused: int  # draws where the method refused (e.g. Rogan–Gladen with a judge no better than chance)
    coverage: float
    mean_width: float
    mean_lam: float | None = None  # PPI++: the judge's mean share

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def simulate_coverage(human: np.ndarray, judge: np.ndarray, *, n: int, n_unlabeled: int, draws: int = 1000,
                      seed: int = 0, alpha: float = 0.05, small_sample: bool = True) -> dict[str, Coverage]:
    """Each method's coverage of mean(human) and mean width over `draws` samples of n labeled and n_unlabeled
    judge-only items, drawn with replacement (so the population's pass rate is exactly the truth);
    `small_sample=False` measures ppi-python's own PPI++ interval."""
    human, judge = np.asarray(human, dtype=float), np.asarray(judge, dtype=float)
    if len(human) != len(judge) or not len(human):
        raise EstimateError(f"a population needs one verdict per human label ({len(human)} labels, "
                            f"{len(judge)} verdicts)")
    truth = float(human.mean())
    rng = np.random.default_rng(seed)
    hits = dict.fromkeys(METHODS, 0)
    widths: dict[str, list[float]] = {m: [] for m in METHODS}
    lams: list[float] = []
    for _ in range(draws):
        labeled, unlabeled = rng.integers(0, len(human), n), rng.integers(0, len(human), n_unlabeled)
        result = estimate_quality(judged_sample(human[labeled], judge[labeled], judge[unlabeled]), alpha=alpha,
                                  small_sample=small_sample)
        for method, est in result.estimates.items():
            hits[method] += est.lo <= truth <= est.hi
            widths[method].append(est.width)
            if est.lam is not None:
                lams.append(est.lam)
    return {m: Coverage(m, len(widths[m]), draws - len(widths[m]),
                        hits[m] / len(widths[m]) if widths[m] else float("nan"),
                        float(np.mean(widths[m])) if widths[m] else float("nan"),
                        float(np.mean(lams)) if m == "ppi++" and lams else None) for m in METHODS}
