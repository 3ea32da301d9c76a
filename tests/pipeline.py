"""The stop-5 pipeline on real SMS data with the embedded teacher, shared by distill and report tests.

Session-scoped: the teacher answers 60 items, a student is distilled from them, and teacher, student,
cascade and cached runs answer the next 24 (held-out) items.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import SMS_TASK
from llmbus.distill.distill import DistillReport, distill
from llmbus.providers.config import add_models
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.store import Store
from llmbus.task.spec import load_spec
from llmbus.train.student import TrainSettings


@dataclass
class Savings:
    store: Store
    report: DistillReport
    runs: dict[str, str]  # kind → run id on the held-out items
    config: Path


@pytest.fixture(scope="session")
def sms_savings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Savings]:
    base = tmp_path_factory.mktemp("savings")
    config = base / "llmbus.yaml"
    old = os.environ.get("LLMBUS_CONFIG")
    os.environ["LLMBUS_CONFIG"] = str(config)  # the student and cascade are registered here
    try:
        spec = load_spec(SMS_TASK)
        store = Store(str(base / "savings.db"))
        teacher = "local:gemma-3-270m"
        train_run = run_task(spec, teacher, store, RunOptions(limit=60, concurrency=4))
        report = distill(spec, store, train_run, base / "distill", TrainSettings(epochs=2))
        add_models(report.registration)
        runs = {"teacher": run_task(spec, teacher, store, RunOptions(limit=24, offset=60, concurrency=4))}
        runs["student"] = run_task(spec, report.student, store, RunOptions(limit=24, offset=60, concurrency=1))
        runs["cascade"] = run_task(spec, report.cascade, store, RunOptions(limit=24, offset=60, concurrency=2))
        runs["cached"] = run_task(spec, teacher, store, RunOptions(limit=24, offset=60, concurrency=4))
        yield Savings(store, report, runs, config)
    finally:
        if old is None:
            os.environ.pop("LLMBUS_CONFIG", None)
        else:
            os.environ["LLMBUS_CONFIG"] = old
