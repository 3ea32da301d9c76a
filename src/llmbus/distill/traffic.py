"""Teacher data from a served model's logged traffic, instead of a teacher run:

    llmbus distill TASK --from-traffic SERVED [--filter judge|human] [--since 7d]

The gateway logs every answered request with the raw input it carried (store/traffic.py). Each distinct input
is one example, with the newest answer the filter keeps: `--filter judge` the answers the latest pointwise judge
run on each gateway run passed, `--filter human` the items with a human label, the label (or correction)
replacing the served answer. Traffic has no gold answers, so held-out quality is measured against the teacher
data itself (the served answers, or the human labels): the student's agreement with them.
"""

from __future__ import annotations

from datetime import datetime
from statistics import median

from llmbus.distill.examples import Example
from llmbus.distill.teacher_data import TeacherData, split_of, teacher_answer
from llmbus.distill.teacher_filter import decisions, label_projects_on
from llmbus.store import Store
from llmbus.store.traffic import GATEWAY_PREFIX, logged_input, served_runs, traffic_calls, traffic_item_id
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec


def traffic_teacher(spec: TaskSpec, store: Store, served: str, how: str = "none",
                    since: datetime | None = None) -> TeacherData:
    """The served model's answers as teacher data: one example per distinct input (its newest answer the
    filter keeps), split by a hash of the input like any teacher run's items."""
    gateway_runs = served_runs(store, served)
    run_ids = [run["id"] for run in gateway_runs]
    decided = decisions(spec, store, run_ids, how)
    examples: list[Example] = []
    seen: set[str] = set()
    inputs: set[str] = set()
    latencies: list[float] = []
    other_version = 0
    for call in traffic_calls(store, run_ids, since):
        text = str(logged_input(call))
        inputs.add(text)
        if not call["cache_hit"]:
            latencies.append(call["latency_s"])
        if text in seen:
            continue
        raw = call["raw_output"] or ""
        parsed = parse_output(spec, raw)
        answer, shown = parsed.value, raw.strip() or None
        decision = decided.get(call["item_id"]) if decided is not None else None
        if decided is not None and (decision is None or not decision.keep):
            continue
        if decision is not None and decision.text is not None:
            answer, shown = decision.answer, decision.text
        elif parsed.error_kind:
            continue  # an answer outside the task's output contract teaches nothing
        seen.add(text)
        other_version += call["spec_version"] != spec.version
        item_id = traffic_item_id(text)
        teacher = teacher_answer(spec, answer)
        examples.append(Example(id=item_id, input=text, teacher=teacher, gold=teacher,
                                teacher_confidence=call["confidence"], split=split_of(item_id), teacher_text=shown))
    where = f"the traffic of {GATEWAY_PREFIX}{served}" + (f" since {since:%Y-%m-%d %H:%M %Z}" if since else "")
    warnings = []
    if other_version:
        warnings.append(f"{other_version} of the {len(examples)} traffic answers were served with another version "
                        f"of {spec.name} (or with no task); --since keeps only the newer traffic")
    models = sorted({run["model"] for run in gateway_runs})
    if len(models) > 1:
        warnings.append(f"{GATEWAY_PREFIX}{served} was served by {', '.join(models)} over time: the student learns "
                        f"from all of their answers; the cascade escalates to the latest, {gateway_runs[-1]['model']}")
    reference = "human-checked answers" if how == "human" else "the served answers"
    return TeacherData(ref=f"{GATEWAY_PREFIX}{served}", what=where, model=gateway_runs[-1]["model"],
                       examples=examples, latency_s=median(latencies) if latencies else float("nan"),
                       answered=len(inputs), reference=reference, how=how,
                       more=more_traffic(store, run_ids, how, served), warnings=warnings)


def more_traffic(store: Store, run_ids: list[str], how: str, served: str) -> str:
    """How to get more teacher data from traffic: the fix depends on what the filter keeps."""
    if how == "human":
        projects = label_projects_on(store, run_ids)
        return (f"label more of the served answers (llmbus label serve --project {projects[-1] if projects else '…'})"
                ", or widen --since")
    if how == "judge":
        return f"judge more of the traffic (llmbus monitor {served} --judge JUDGE.yaml), or widen --since"
    return "serve more requests, or widen --since"
