"""The monitored quality of a served model: its judged answers (with the human labels drawn for some of them) per
time window and slice, estimated through `estimate.estimate_quality`: the judged answers are the judge-only set
(weights 1/p), the labeled ones the human set (weights 1/(p·π)). `quality_report` is `llmbus quality SERVED`;
`latest_estimates` what the gateway's /metrics shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from llmbus.errors import EstimateError, LlmbusError
from llmbus.quality.estimate import Estimate, JudgedSample, QualityEstimate, by_slice, estimate_quality, judged_sample
from llmbus.quality.judge import load_verdicts
from llmbus.quality.label import consensus
from llmbus.store import Store, now
from llmbus.store.schema import calls, label_items, monitor_calls, monitors


@dataclass(frozen=True)
class MonitoredAnswer:
    """One judged answer of the monitored sample, with what the estimate needs."""

    call_id: int
    started_at: datetime
    probability: float  # P(judged)
    judge: float  # the verdict: 1 pass, 0 fail
    label_probability: float | None  # P(labeled | judged)
    human: float | None  # the humans' consensus: 1 pass, 0 fail; None when not labeled (by the draw)
    key: str  # its slice


@dataclass
class WindowQuality:
    """The estimates of one time window (and its slices)."""

    start: datetime | None
    end: datetime
    judged: int
    labeled: int
    judge_rate: float | None  # the judge's own (weighted) pass rate: biased by its errors
    estimate: QualityEstimate | None
    refused: str | None = None
    slices: dict[str, QualityEstimate] = field(default_factory=dict)

    @property
    def ppi(self) -> Estimate | None:
        """The PPI++ estimate, when there is one."""
        return self.estimate.estimates.get("ppi++") if self.estimate else None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return {"start": self.start.isoformat() if self.start else None, "end": self.end.isoformat(),
                "judged": self.judged, "labeled": self.labeled, "judge_rate": self.judge_rate,
                "refused": self.refused, **(self.estimate.as_dict() if self.estimate else {}),
                "slices": {k: v.as_dict() for k, v in self.slices.items()}}


def monitor_info(store: Store, served: str) -> dict[str, Any] | None:
    """The monitors row of a served model, or None when `llmbus monitor` never ran on it."""
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(monitors).where(monitors.c.served == served)).mappings().first()
    return dict(row) if row else None


def monitored_answers(store: Store, served: str, since: datetime | None = None,
                      slice_field: str | None = None) -> list[MonitoredAnswer]:
    """The judged answers of a served model (started at or after `since`), with human labels where drawn."""
    monitor = monitor_info(store, served)
    if monitor is None:
        raise LlmbusError(f"served model {served!r} is not monitored in {store.url}: run llmbus monitor {served} "
                          "--judge JUDGE.yaml first")
    query = (sa.select(monitor_calls, calls.c.started_at, calls.c.model, calls.c.meta_json)
             .join(calls, calls.c.id == monitor_calls.c.call_id)
             .where(monitor_calls.c.served == served, monitor_calls.c.judge_run_id.is_not(None)))
    if since is not None:
        query = query.where(calls.c.started_at >= since.astimezone(UTC))
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    passes = judge_pass(store, {r["judge_run_id"] for r in rows}, monitor["positive"])
    human = _human_pass(store, monitor["project"], monitor["positive"])
    out = []
    for row in rows:
        if row["call_id"] not in passes:
            continue  # a broken verdict: nothing to count
        meta = json.loads(row["meta_json"]) if row["meta_json"] else {}
        out.append(MonitoredAnswer(
            row["call_id"], _utc(row["started_at"]), row["probability"], passes[row["call_id"]][0],
            row["label_probability"], human.get(row["call_id"]) if row["queued"] else None,
            _slice_key(row["model"], meta, slice_field)))
    return out


def _utc(stamp: datetime) -> datetime:
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)  # SQLite keeps UTC without its zone


def _slice_key(model: str, meta: dict[str, Any], slice_field: str | None) -> str:
    if slice_field is None:
        return ""
    value = model if slice_field == "model" else meta.get(slice_field)
    return "-" if value is None else str(value)


def _human_pass(store: Store, project: str, positive: str) -> dict[int, float]:
    """call id → 1 when the humans' consensus is the pass label, else 0."""
    votes = consensus(store, project)
    with store.engine.connect() as conn:
        ids = dict(conn.execute(sa.select(label_items.c.item_id, label_items.c.call_id)
                                .where(label_items.c.project == project)).all())
    return {int(ids[item]): float(value == positive) for item, value in votes.items() if ids.get(item) is not None}


def sample_of(answers: list[MonitoredAnswer]) -> tuple[JudgedSample, list[str], list[str]]:
    """The JudgedSample of monitored answers (human set: labeled ones, weights 1/(p·π); judge-only set: all
    judged ones, weights 1/p) and the slice keys of both sets."""
    labeled = [a for a in answers if a.human is not None and a.label_probability]
    humans = [a.human for a in labeled if a.human is not None]
    sample = judged_sample(humans, [a.judge for a in labeled], [a.judge for a in answers],
                           probabilities=[a.probability * (a.label_probability or 1.0) for a in labeled],
                           probabilities_unlabeled=[a.probability for a in answers])
    return sample, [a.key for a in labeled], [a.key for a in answers]


def window_quality(answers: list[MonitoredAnswer], start: datetime | None, end: datetime,
                   slices: bool = False, alpha: float = 0.05, project: str | None = None) -> WindowQuality:
    """estimate_quality (and by_slice) of the answers in one window; a refusal keeps its reason. Without human
    labels the reason names the monitor's labeling `project`, which `llmbus monitor` made and filled."""
    sample, keys, keys_unlabeled = sample_of(answers)
    w = 1 / np.array([a.probability for a in answers]) if answers else np.array([])
    judge_rate = float((w * sample.judge_unlabeled).sum() / w.sum()) if answers else None
    result = WindowQuality(start, end, sample.n_unlabeled, sample.n, judge_rate, None)
    if not answers:
        result.refused = "no judged answers in this window"
        return result
    try:
        result.estimate = estimate_quality(sample, alpha=alpha)
        if slices:
            result.slices = by_slice(sample, keys, keys_unlabeled, alpha=alpha)
    except EstimateError as exc:
        result.refused = str(exc)
    if result.estimate and "ppi++" in result.estimate.refused:
        result.refused = result.estimate.refused["ppi++"]
    if sample.n == 0 and project is not None:
        result.refused = (f"no human labels yet (the judge passed {judge_rate:.3f} of {sample.n_unlabeled} judged "
                          "answers): a judge's own pass rate is not an estimate of quality; label the answers "
                          f"`llmbus monitor` queued: llmbus label serve --project {project}")
    return result


def quality_report(store: Store, served: str, *, since: datetime | None = None, window: timedelta | None = None,
                   slice_field: str | None = None, alpha: float = 0.05) -> list[WindowQuality]:
    """The monitored quality per window, oldest first (the newest ends now); one window over everything (since
    `since`) without `window`."""
    answers = monitored_answers(store, served, since, slice_field)
    project = (monitor_info(store, served) or {}).get("project")
    end = now()
    if window is None:
        return [window_quality(answers, since, end, slice_field is not None, alpha, project)]
    first = since or min((a.started_at for a in answers), default=end - window)
    count = max(1, int(np.ceil((end - first) / window - 0.01)))  # `--since 3h` a moment ago: 3 windows, not 4
    out = []
    for k in range(count - 1, -1, -1):
        hi, lo = end - k * window, end - (k + 1) * window
        inside = [a for a in answers if lo <= a.started_at < hi or (k == 0 and a.started_at >= hi)]
        out.append(window_quality(inside, lo, hi, slice_field is not None, alpha, project))
    return out


def latest_estimates(store: Store, served: list[str]) -> dict[str, Estimate]:
    """The PPI++ estimate over all monitored traffic of each served model that has one (what /metrics shows)."""
    out = {}
    for name in served:
        if monitor_info(store, name) is None:
            continue
        ppi = window_quality(monitored_answers(store, name), None, now()).ppi
        if ppi is not None:
            out[name] = ppi
    return out


def judge_pass(store: Store, judge_run_ids: set[str], positive: str) -> dict[int, tuple[float, float]]:
    """call id → (the verdict: 1 pass / 0 fail, the judge's probability of a pass: the verdict without
    probabilities); broken verdicts are left out."""
    out = {}
    for run_id in judge_run_ids:
        for v in load_verdicts(store, run_id):
            if v["verdict"] is None or v["call_id"] is None:
                continue
            verdict = float(v["verdict"] == positive)
            probs = v["probs"] or {}
            out[int(v["call_id"])] = verdict, float(probs[positive]) if positive in probs else verdict
    return out
