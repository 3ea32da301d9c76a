"""Quality of a served model from its own traffic: judge a sample of what the gateway answered, send the
judgments a human label is worth most to a labeling project, and estimate the pass rate with PPI++ from both.

`monitor_once` (what `llmbus monitor SERVED` runs) takes the calls of the `gateway:SERVED` runs it has not
considered yet. Each is judged with probability p ∝ (1 − w) + w × u / mean(u), scaled so that p averages
`sample`, where u is the answer's uncertainty (1 − its confidence; 1 without one) and w the uncertain share, so
uncertain answers are judged more often. A p that would pass 1 is 1 and the others share the rest, so the
share judged stays `sample` (`--sample 1` judges every call, whatever w). The draw is a hash of the call id,
so a re-run decides the same, and every considered call is recorded with its p (`monitor_calls`): re-runs only
look at new traffic, and the estimate weighs each judged answer by 1/p.

Of the judged answers, the ones worth a human label (a judge unsure of its verdict: pass probability near 0.5;
or a confident answer the judge fails) are sent to the project with probability proportional to that worth
(at least a tenth of the largest), about `label_n` per pass. A plain top-n would label only where the judge is
unsure, and the human-minus-judge gap PPI++ measures there is not the gap on the rest of the traffic; with a
known probability π each labeled answer stands for 1/(p·π) answers, and the estimate stays unbiased.

`quality_report` (`llmbus quality SERVED`) combines the human labels (the project's consensus) and the verdicts
per time window and slice through `estimate.estimate_quality`: the judged answers are the judge-only set
(weights 1/p), the labeled ones the human set (weights 1/(p·π)).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from llmbus.embed import StageCallback
from llmbus.errors import EstimateError, LlmbusError
from llmbus.providers import Provider, open_provider
from llmbus.quality.estimate import (
    Estimate,
    JudgedSample,
    QualityEstimate,
    by_slice,
    estimate_quality,
    judged_sample,
)
from llmbus.quality.judge import load_judge, load_verdicts, positive_label, run_judge
from llmbus.quality.label import LabelSchema, consensus, create_project, enqueue_calls, get_project
from llmbus.store import Store, decode_call, now
from llmbus.store.schema import calls, label_items, monitor_calls, monitors
from llmbus.store.traffic import ANSWERED_ROUTES, served_runs

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MIN_WORTH_SHARE = 0.1  # every judged answer keeps some chance of a human label (else its weight is unknown)


@dataclass(frozen=True)
class MonitorSettings:
    """What `llmbus monitor` was given."""

    judge_path: str
    judge_model: str = "local:gemma-3-270m"
    sample: float = 0.05
    uncertain_share: float = 0.5
    project: str | None = None  # default monitor-<served>
    label_n: int = 20


@dataclass
class MonitorReport:
    """One monitor pass: calls considered, sampled, judged (by which judge runs) and queued for humans."""

    served: str
    project: str
    considered: int
    sampled: int
    judged: int
    queued: int
    judge_run_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json output."""
        return asdict(self)


def parse_duration(text: str, option: str) -> timedelta:
    """`--every 10m`, `--window 1d`: a number and s, m, h, d or w."""
    match = DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise LlmbusError(f"{option} {text!r}: give a positive duration such as 30s, 10m, 1h, 1d, 2w")
    return timedelta(seconds=float(match.group(1)) * SECONDS[match.group(2)])


def uniform_draw(salt: str, call_id: int) -> float:
    """A deterministic uniform number in [0, 1) for one call (the same call always draws the same)."""
    digest = hashlib.sha256(f"{salt}:{call_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def uncertainty(call: dict[str, Any]) -> float:
    """1 − the answer's confidence, or 1 when the call has none."""
    confidence = call.get("confidence")
    return 1.0 if confidence is None else float(np.clip(1.0 - confidence, 0.0, 1.0))


def sampling_probabilities(u: np.ndarray, sample: float, uncertain_share: float) -> np.ndarray:
    """p_i = sample × ((1 − w) + w × u_i / mean(u)) while none passes 1; plain `sample` when no answer is
    uncertain. Past 1 a p_i is capped at 1 and the others take up the rest: the p_i always average `sample`."""
    mean = float(u.mean()) if len(u) else 0.0
    relative = u / mean if mean > 0 else np.ones(len(u))
    return capped_shares((1 - uncertain_share) + uncertain_share * relative, sample * len(u))


def capped_shares(score: np.ndarray, total: float) -> np.ndarray:
    """Probabilities proportional to `score` that sum to min(total, items): those that would exceed 1 are 1 and
    the rest share what is left (items of score 0 share it evenly once every other one is at 1)."""
    size = len(score)
    if size == 0 or total <= 0:
        return np.zeros(size)
    if total >= size:
        return np.ones(size)
    score = np.asarray(score, dtype=float)
    pi = np.zeros(size)
    capped = np.zeros(size, dtype=bool)
    while True:
        rest = ~capped
        weight = score[rest].sum()
        pi[rest] = score[rest] * (total - capped.sum()) / weight if weight > 0 else (total - capped.sum()) / rest.sum()
        over = rest & (pi >= 1)
        if not over.any():
            return pi
        capped |= over
        pi[capped] = 1.0


def label_worth(judge_pass: np.ndarray, answer_confidence: np.ndarray) -> np.ndarray:
    """How much a human label of each judged answer is worth: the judge's own uncertainty (1 at a pass
    probability of 0.5), or the answer's confidence where the judge fails it (judge and answer disagree);
    missing numbers (nan) count as 0.5 and 0."""
    judge = np.nan_to_num(judge_pass, nan=0.5)
    unsure = 1 - np.abs(2 * judge - 1)
    disagreement = np.nan_to_num(answer_confidence, nan=0.0) * (1 - judge)
    return np.maximum(unsure, disagreement)


def inclusion_probabilities(worth: np.ndarray, n: int) -> np.ndarray:
    """Probabilities proportional to worth (floored at MIN_WORTH_SHARE of the largest) that sum to min(n, items);
    those that would exceed 1 are 1 and the rest share what is left."""
    top = float(worth.max()) if len(worth) else 0.0
    return capped_shares(np.maximum(worth, MIN_WORTH_SHARE * top) if top > 0 else np.ones(len(worth)), n)


# --- one monitor pass ----------------------------------------------------------------------------------------
def open_monitor(store: Store, served: str, settings: MonitorSettings) -> dict[str, Any]:
    """The served model's monitor row, made (with its labeling project) on the first pass; a later pass must
    use the same judge, or the verdicts of one estimate would come from two judges."""
    runs = served_runs(store, served)
    spec = load_judge(settings.judge_path)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(monitors).where(monitors.c.served == served)).mappings().first()
    if row is not None:
        if (row["judge_path"], row["judge_model"]) != (str(settings.judge_path), settings.judge_model):
            raise LlmbusError(f"monitor of {served!r} judges with {row['judge_path']} ({row['judge_model']}), not "
                              f"{settings.judge_path} ({settings.judge_model}): one estimate needs one judge")
        if settings.project not in (None, row["project"]):
            raise LlmbusError(f"monitor of {served!r} labels in project {row['project']!r}, not "
                              f"{settings.project!r}")
        return dict(row)
    project = settings.project or f"monitor-{served}"
    try:
        get_project(store, project)
    except LlmbusError:
        schema = LabelSchema(kind="labels", labels=tuple(spec.output.labels or ()))
        create_project(store, project, runs[0]["id"], schema)
    values = {"served": served, "judge_path": str(settings.judge_path), "judge_model": settings.judge_model,
              "positive": positive_label(spec), "project": project, "created_at": now()}
    with store.engine.begin() as conn:
        conn.execute(monitors.insert().values(**values))
    return values


def monitor_once(store: Store, served: str, settings: MonitorSettings, provider: Provider | None = None,
                 progress: StageCallback | None = None) -> MonitorReport:
    """Consider the served model's new calls, judge the sampled ones (each verdict reported to `progress`), queue
    those worth a human label. A pass that stopped halfway (a judge error) is finished by the next: sampled but
    unjudged calls are judged then."""
    if not 0 < settings.sample <= 1:
        raise LlmbusError(f"--sample {settings.sample:g}: the share of traffic to judge lies in (0, 1]")
    if not 0 <= settings.uncertain_share <= 1:
        raise LlmbusError(f"--uncertain-share {settings.uncertain_share:g}: give a number in [0, 1]")
    monitor = open_monitor(store, served, settings)
    considered, sampled = _consider(store, served, settings)
    judged, run_ids = _judge_pending(store, served, settings, provider, progress)
    queued = _queue_for_humans(store, served, monitor, settings.label_n)
    return MonitorReport(served, monitor["project"], considered, sampled, judged, queued, run_ids)


def _consider(store: Store, served: str, settings: MonitorSettings) -> tuple[int, int]:
    """Record every answered call not considered yet with its sampling probability and draw."""
    run_ids = [r["id"] for r in served_runs(store, served)]
    seen = sa.select(monitor_calls.c.call_id)
    query = (sa.select(calls).where(calls.c.run_id.in_(run_ids), calls.c.error_kind.is_(None),
                                    calls.c.id.not_in(seen)).order_by(calls.c.id))
    with store.engine.connect() as conn:
        new = [decode_call(dict(r)) for r in conn.execute(query).mappings()]
    new = [c for c in new if (c["meta"] or {}).get("route") in ANSWERED_ROUTES]
    if not new:
        return 0, 0
    u = np.array([uncertainty(c) for c in new])
    p = sampling_probabilities(u, settings.sample, settings.uncertain_share)
    stamp = now()
    rows = [{"call_id": c["id"], "served": served, "uncertainty": float(u[i]), "probability": float(p[i]),
             "sampled": bool(uniform_draw("judge", c["id"]) < p[i]), "queued": False, "considered_at": stamp}
            for i, c in enumerate(new)]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(monitor_calls), rows)
    return len(rows), sum(r["sampled"] for r in rows)


def _judge_pending(store: Store, served: str, settings: MonitorSettings, provider: Provider | None,
                   progress: StageCallback | None = None) -> tuple[int, list[str]]:
    """Judge the sampled calls not judged yet, one judge run per gateway run they belong to."""
    query = (sa.select(monitor_calls.c.call_id, calls.c.run_id).join(calls, calls.c.id == monitor_calls.c.call_id)
             .where(monitor_calls.c.served == served, monitor_calls.c.sampled.is_(True),
                    monitor_calls.c.judge_run_id.is_(None)))
    with store.engine.connect() as conn:
        pending: dict[str, list[int]] = {}
        for call_id, run_id in conn.execute(query):
            pending.setdefault(run_id, []).append(int(call_id))
    if not pending:
        return 0, []
    spec = load_judge(settings.judge_path)
    owned = provider is None
    provider = provider or open_provider(settings.judge_model)
    judge_runs = []
    try:
        for run_id, ids in pending.items():
            report = run_judge(spec, store, run_id, model=settings.judge_model, provider=provider, call_ids=ids,
                               progress=progress)
            judge_runs.append(report.judge_run_id)
            with store.engine.begin() as conn:
                conn.execute(monitor_calls.update().where(monitor_calls.c.call_id.in_(ids))
                             .values(judge_run_id=report.judge_run_id))
    finally:
        if owned:
            provider.close()
    return sum(len(ids) for ids in pending.values()), judge_runs


def _queue_for_humans(store: Store, served: str, monitor: dict[str, Any], label_n: int) -> int:
    """Draw which newly judged calls go to the humans (probability ∝ worth, ~label_n of them) and queue them."""
    query = (sa.select(monitor_calls.c.call_id, monitor_calls.c.judge_run_id, calls.c.confidence)
             .join(calls, calls.c.id == monitor_calls.c.call_id)
             .where(monitor_calls.c.served == served, monitor_calls.c.judge_run_id.is_not(None),
                    monitor_calls.c.label_probability.is_(None)).order_by(monitor_calls.c.call_id))
    with store.engine.connect() as conn:
        fresh = [tuple(r) for r in conn.execute(query)]
    if not fresh:
        return 0
    passes = _judge_pass(store, {run for _, run, _ in fresh}, monitor["positive"])
    judge = np.array([passes[call_id][1] if call_id in passes else np.nan for call_id, _, _ in fresh], dtype=float)
    confidence = np.array([np.nan if c is None else c for _, _, c in fresh], dtype=float)
    worth = label_worth(judge, confidence)
    pi = inclusion_probabilities(worth, label_n)
    chosen = []
    with store.engine.begin() as conn:
        for k, (call_id, _, _) in enumerate(fresh):
            take = bool(uniform_draw("label", call_id) < pi[k])
            conn.execute(monitor_calls.update().where(monitor_calls.c.call_id == call_id)
                         .values(label_probability=float(pi[k]) if pi[k] > 0 else None, queued=take))
            if take:
                chosen.append((call_id, float(worth[k])))
    return enqueue_calls(store, monitor["project"], chosen, "monitor") if chosen else 0


def _judge_pass(store: Store, judge_run_ids: set[str], positive: str) -> dict[int, tuple[float, float]]:
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


# --- the estimate --------------------------------------------------------------------------------------------
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
    passes = _judge_pass(store, {r["judge_run_id"] for r in rows}, monitor["positive"])
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
