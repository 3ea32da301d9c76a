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

The sampling probabilities are monitor_sampling.py. `quality_report` (`llmbus quality SERVED`, in
monitor_estimate.py) combines the human labels (the project's consensus) and the verdicts per time window and
slice through `estimate.estimate_quality`: the judged answers are the judge-only set (weights 1/p), the labeled
ones the human set (weights 1/(p·π)).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np
import sqlalchemy as sa

from llmbus.embed import StageCallback
from llmbus.errors import LlmbusError
from llmbus.providers import Provider, open_provider
from llmbus.quality.judge import load_judge, positive_label, run_judge
from llmbus.quality.label import LabelSchema, create_project, enqueue_calls, get_project
from llmbus.quality.monitor_estimate import (
    MonitoredAnswer,
    WindowQuality,
    judge_pass,
    latest_estimates,
    monitor_info,
    monitored_answers,
    quality_report,
    sample_of,
    window_quality,
)
from llmbus.quality.monitor_sampling import (
    capped_shares,
    inclusion_probabilities,
    label_worth,
    sampling_probabilities,
    uncertainty,
    uniform_draw,
)
from llmbus.store import Store, decode_call, now
from llmbus.store.schema import calls, monitor_calls, monitors
from llmbus.store.traffic import ANSWERED_ROUTES, served_runs

# The sampling and the estimate live in their own modules; callers import them from here too.
__all__ = ["MonitorReport", "MonitorSettings", "MonitoredAnswer", "WindowQuality", "capped_shares",
           "inclusion_probabilities", "label_worth", "latest_estimates", "monitor_info", "monitor_once",
           "monitored_answers", "open_monitor", "parse_duration", "quality_report", "sample_of",
           "sampling_probabilities", "uncertainty", "uniform_draw", "window_quality"]

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


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
    passes = judge_pass(store, {run for _, run, _ in fresh}, monitor["positive"])
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
