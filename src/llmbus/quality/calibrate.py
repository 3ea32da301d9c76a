"""Calibration: how far a judge run agrees with the human labels of a labeling project, and whether the judge
may run unattended (a gate on TPR and TNR, by default both ≥ 0.9; optionally on kappa).

Humans are the reference: TPR is the share of items humans call positive (pass) that the judge also passes.
A broken verdict counts as a disagreement. The disagreeing items are listed so the rubric can be fixed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from llmbus.errors import LlmbusError
from llmbus.quality.agreement import BinaryAgreement, binary_agreement
from llmbus.quality.judge import SCORE_LABELS, judge_run_info, load_verdicts
from llmbus.quality.label import consensus, get_project, label_rows
from llmbus.store import Store

BROKEN = "(broken)"


@dataclass
class CalibrationReport:
    """Judge vs humans on the items both judged."""

    judge_run_id: str
    judge: str
    project: str
    positive: str
    agreement: BinaryAgreement
    confusion: dict[str, dict[str, int]]  # human label → judge verdict → count
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    min_tpr: float = 0.9
    min_tnr: float = 0.9
    min_kappa: float | None = None
    trusted: bool = False
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def binarize(label: str, labels: list[str], positive: str) -> str:
    """1–5 scores become pass (4–5) / fail; other label sets stay as they are."""
    if sorted(labels) == SCORE_LABELS and label in SCORE_LABELS:
        return "pass" if int(label) >= 4 else "fail"
    return label


def calibrate(store: Store, judge_run_id: str, project: str, *, min_tpr: float = 0.9, min_tnr: float = 0.9,
              min_kappa: float | None = None) -> CalibrationReport:
    """Agreement of a (pointwise) judge run with a project's majority human labels, and the trust gate."""
    info = judge_run_info(store, judge_run_id)
    if info["mode"] != "pointwise":
        raise LlmbusError(f"judge run {info['run_id']} is {info['mode']}: calibration compares pointwise verdicts "
                          "with human labels")
    meta = get_project(store, project)
    labels = list(info["labels"])
    human = consensus(store, project)
    unknown = sorted({v for v in human.values() if v not in labels})
    if unknown:
        raise LlmbusError(f"project {project!r} has labels {', '.join(unknown)} that are not verdicts of judge "
                          f"{info['judge']} ({', '.join(labels)}): label with the judge's verdicts")
    verdicts = {r["item_id"]: r for r in load_verdicts(store, info["run_id"])}
    shared = [i for i in human if i in verdicts]
    if not shared:
        raise LlmbusError(f"judge run {info['run_id']} (on run {info['target_run_id']}) and project {project!r} "
                          f"(run {meta['run_id']}) share no labeled items")
    positive = "pass" if sorted(labels) == SCORE_LABELS else info["positive"]
    judged = [binarize(verdicts[i]["verdict"] or BROKEN, labels, positive) for i in shared]
    truth = [binarize(human[i], labels, positive) for i in shared]
    stats = binary_agreement(judged, truth, positive)
    confusion: dict[str, dict[str, int]] = {}
    for (human_label, judge_label), count in Counter(zip(truth, judged, strict=True)).items():
        confusion.setdefault(human_label, {})[judge_label] = count
    answers = {r["item_id"]: r["answer"] for r in label_rows(store, project)}
    disagreements = [{"item_id": i, "human": human[i], "judge": verdicts[i]["verdict"],
                      "confidence": verdicts[i]["confidence"], "answer": answers.get(i)}
                     for i, j, t in zip(shared, judged, truth, strict=True) if j != t]
    report = CalibrationReport(judge_run_id=info["run_id"], judge=info["judge"], project=project, positive=positive,
                               agreement=stats, confusion=confusion, disagreements=disagreements, min_tpr=min_tpr,
                               min_tnr=min_tnr, min_kappa=min_kappa)
    report.trusted, report.reason = trust_gate(stats, min_tpr, min_tnr, min_kappa)
    return report


def trust_gate(stats: BinaryAgreement, min_tpr: float, min_tnr: float,
               min_kappa: float | None) -> tuple[bool, str]:
    """Whether the judge may run unattended, and why (or why not)."""
    failures = []
    if not stats.tpr >= min_tpr:  # written so nan (no positives) fails
        failures.append(f"TPR {stats.tpr:.3f} < {min_tpr}")
    if not stats.tnr >= min_tnr:
        failures.append(f"TNR {stats.tnr:.3f} < {min_tnr}")
    if min_kappa is not None and not stats.kappa >= min_kappa:
        failures.append(f"kappa {stats.kappa:.3f} < {min_kappa}")
    if failures:
        return False, "not trusted unattended: " + "; ".join(failures)
    return True, f"trusted unattended: TPR {stats.tpr:.3f} ≥ {min_tpr}, TNR {stats.tnr:.3f} ≥ {min_tnr}"
