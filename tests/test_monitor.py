"""`llmbus monitor` and `llmbus quality` on real gateway traffic: SMS sent through the official openai client to
the gateway (a stub backend on 127.0.0.1), judged by a head judge trained from human labels, with labels
imported for the items the monitor queued."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from conftest import SMS_TASK
from llmbus.cli import app
from llmbus.quality import label
from llmbus.quality.estimate import estimate_quality, judged_sample
from llmbus.quality.finetune import train_judge
from llmbus.quality.monitor import (
    MonitorSettings,
    inclusion_probabilities,
    label_worth,
    latest_estimates,
    monitor_once,
    quality_report,
    sampling_probabilities,
)
from llmbus.store import Store
from llmbus.store.schema import calls, label_items, monitor_calls, verdicts
from llmbus.task.data import load_items
from llmbus.task.spec import load_spec
from openai_stub import StubServer
from test_finetune import _labeled_project
from test_serve import running_gateway, write_configs

SMS_JUDGE = SMS_TASK.parent / "judge.yaml"


def _draw(salt: str, call_id: int) -> float:
    """The monitor's documented draw, recomputed here: sha256 of "salt:call id", first 8 bytes / 2^64."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{call_id}".encode()).digest()[:8], "big") / 2.0**64


def _head_judge(store: Store, tmp_path: Path) -> str:
    """A head judge trained on 240 real SMS whose answers are wrong for every third (tests/test_finetune's
    labeled project, project "sms")."""
    _labeled_project(store, tmp_path, 240)
    return train_judge(store, "sms", tmp_path / "head", kind="head", folds=2)[1]


def _send(url: str, messages: list[str]) -> list[str]:
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
    return [str(client.chat.completions.create(model="sms", messages=[{"role": "user", "content": m}])
                .choices[0].message.content) for m in messages]


def _traffic(n: int, offset: int) -> tuple[list[str], dict[str, str]]:
    """n real SMS (after the judge's training items); the stub answers spam only when the text says "spam", so
    half the spam (marked) is answered right and the rest wrong; every fourth is UNSURE (a low confidence)."""
    texts, gold = [], {}
    spam_seen = 0
    for k, item in enumerate(load_items(load_spec(SMS_TASK))[offset:offset + n]):
        text = str(item.fields["text"]).replace("spam", "sp4m")
        if item.expected == "spam":
            spam_seen += 1
            text += " spam" if spam_seen % 2 else ""
        text += " UNSURE" if k % 4 == 0 else ""
        texts.append(text)
        gold[text] = str(item.expected)
    return texts, gold


def test_monitor_samples_judges_queues_and_quality_estimates(store: Store, tmp_path: Path):
    head = _head_judge(store, tmp_path)
    db = Path(store.url.removeprefix("sqlite:///"))
    texts, gold = _traffic(130, 300)
    answered: dict[str, str] = {}
    with StubServer() as backend:
        config = _serve_tiny(tmp_path, backend.base_url)
        for batch in (texts[:60], texts[60:120]):  # two gateway starts: two gateway:sms runs
            with running_gateway(config, db) as (url, _):
                answered.update(zip(batch, _send(url, batch), strict=True))
        settings = MonitorSettings(judge_path=str(SMS_JUDGE), judge_model=head, sample=0.5, uncertain_share=0.5,
                                   label_n=40)
        first = monitor_once(store, "sms", settings)
        assert first.considered == 120 and len(first.judge_run_ids) == 2
        rows = _monitor_rows(store)
        confidence = np.array([r["confidence"] for r in rows], dtype=float)
        assert len(set(np.round(confidence, 3))) > 1  # UNSURE answers are less confident: p varies
        u = 1 - confidence
        expected_p = np.clip(0.5 * (0.5 + 0.5 * u / u.mean()), 0, 1)
        assert np.allclose([r["probability"] for r in rows], expected_p)
        draws = [_draw("judge", r["call_id"]) < p for r, p in zip(rows, expected_p, strict=True)]
        assert [r["sampled"] for r in rows] == draws
        sampled = {r["call_id"] for r in rows if r["sampled"]}
        assert first.sampled == first.judged == len(sampled) and 40 < len(sampled) < 90
        with store.engine.connect() as conn:
            judged = set(conn.scalars(sa.select(verdicts.c.call_id).where(
                verdicts.c.judge_run_id.in_(first.judge_run_ids))))
            queued = dict(conn.execute(sa.select(label_items.c.call_id, label_items.c.item_id).where(
                label_items.c.project == "monitor-sms")).all())
        assert judged == sampled  # only the sampled answers were judged
        assert set(queued) <= sampled and len(queued) == first.queued == sum(r["queued"] for r in rows)
        # ~label_n of the judged are drawn with known probabilities that sum to label_n
        pis = [r["label_probability"] for r in rows if r["sampled"]]
        assert sum(pis) == pytest.approx(40) and all(0 < p <= 1 for p in pis) and 25 <= len(queued) <= 55
        # Idempotent: nothing new, nothing done; new traffic (a third gateway start) is all that is considered.
        again = monitor_once(store, "sms", settings)
        assert (again.considered, again.judged, again.queued) == (0, 0, 0)
        with running_gateway(config, db) as (url, _):
            answered.update(zip(texts[120:], _send(url, texts[120:]), strict=True))
        third = monitor_once(store, "sms", settings)
        assert third.considered == 10 and monitor_once(store, "sms", settings).considered == 0

        # The humans label what was queued: the truth (answer == gold).
        rows = _monitor_rows(store)
        with store.engine.connect() as conn:
            queued = dict(conn.execute(sa.select(label_items.c.call_id, label_items.c.item_id).where(
                label_items.c.project == "monitor-sms")).all())
        truth = {r["call_id"]: float(answered[r["input"]] == gold[r["input"]]) for r in rows}
        path = tmp_path / "human.jsonl"
        path.write_text("".join(json.dumps({"item_id": item, "label": "pass" if truth[cid] else "fail"}) + "\n"
                                for cid, item in queued.items()))
        assert label.import_labels(store, "monitor-sms", path, "alice") == len(queued)

        [window] = quality_report(store, "sms")
        ppi = window.ppi
        assert ppi is not None and window.labeled == len(queued)
        true_rate = float(np.mean(list(truth.values())))
        print(f"\ntrue {true_rate:.3f}; PPI++ {ppi.value:.3f} [{ppi.lo:.3f}, {ppi.hi:.3f}] lambda {ppi.lam}; judged "
              f"{window.judged}, labeled {window.labeled}; judge-only {window.judge_rate:.3f}; human-only "
              f"{window.estimate.estimates['human-only']}; agreement {window.estimate.agreement}")
        assert 0.5 < true_rate < 0.95 and ppi.lo <= true_rate <= ppi.hi
        # Equals estimate_quality on the same inputs, built here from the tables.
        judge_pass = _verdict_pass(store)
        judged_rows = [r for r in rows if r["call_id"] in judge_pass]
        labeled = [r for r in judged_rows if r["call_id"] in queued]
        same = estimate_quality(judged_sample(
            [truth[r["call_id"]] for r in labeled], [judge_pass[r["call_id"]] for r in labeled],
            [judge_pass[r["call_id"]] for r in judged_rows],
            probabilities=[r["probability"] * r["label_probability"] for r in labeled],
            probabilities_unlabeled=[r["probability"] for r in judged_rows]))
        assert (ppi.value, ppi.lo, ppi.hi) == (same.estimates["ppi++"].value, same.estimates["ppi++"].lo,
                                               same.estimates["ppi++"].hi)
        # The weights count: the humans' rate is the 1/(p·π)-weighted one, not the plain mean of the labels.
        human = window.estimate.estimates["human-only"]
        w = np.array([1 / (r["probability"] * r["label_probability"]) for r in labeled])
        y = np.array([truth[r["call_id"]] for r in labeled])
        assert human.value == pytest.approx(float((w * y).sum() / w.sum()))
        assert abs(human.value - y.mean()) > 0.01
        judge_w = 1 / np.array([r["probability"] for r in judged_rows])
        assert window.judge_rate == pytest.approx(float((judge_w * [judge_pass[r["call_id"]] for r in judged_rows])
                                                        .sum() / judge_w.sum()))

        # The command: table, --json, --alert-below exit codes, a second `monitor` pass with nothing new.
        runner = CliRunner()
        base = ["quality", "sms", "--db", str(db)]
        shown = runner.invoke(app, base)
        assert shown.exit_code == 0 and f"{ppi.value:.3f} [{ppi.lo:.3f}, {ppi.hi:.3f}]" in shown.output
        data = json.loads(runner.invoke(app, [*base, "--json"]).output)
        assert data["windows"][-1]["estimates"]["ppi++"]["lo"] == pytest.approx(ppi.lo)
        assert runner.invoke(app, [*base, "--alert-below", f"{ppi.lo - 0.01:.4f}"]).exit_code == 0
        alert = runner.invoke(app, [*base, "--alert-below", f"{ppi.lo + 0.01:.4f}"])
        assert alert.exit_code == 1 and "quality alert" in alert.output
        windows = json.loads(runner.invoke(app, [*base, "--window", "1h", "--since", "3h", "--slice", "route",
                                                 "--json"]).output)["windows"]
        assert len(windows) == 3 and windows[-1]["judged"] == window.judged and windows[0]["judged"] == 0
        assert "backend" in windows[-1]["slices"] and set(windows[-1]["slices"]) <= {"backend", "cache_exact"}
        once = runner.invoke(app, ["monitor", "sms", "--judge", str(SMS_JUDGE), "--judge-model", head, "--sample",
                                   "0.5", "--label-n", "40", "--db", str(db)])
        assert once.exit_code == 0 and "0 new calls considered" in once.output, once.output

        # The gauge: read from the store at scrape time.
        with running_gateway(config, db) as (url, _):
            metrics = httpx.get(url.removesuffix("/v1") + "/metrics").text
        served = latest_estimates(store, ["sms", "chat"])
        assert set(served) == {"sms"} and served["sms"].lo == pytest.approx(ppi.lo)
        for bound, value in (("lower", ppi.lo), ("point", ppi.value), ("upper", ppi.hi)):
            line = next(ln for ln in metrics.splitlines()
                        if ln.startswith(f'llmbus_quality_estimate{{bound="{bound}",model="sms"}}'))
            assert float(line.split()[-1]) == pytest.approx(value)


def _serve_tiny(tmp_path: Path, base_url: str) -> Path:
    """serve.yaml serving a tiny SMS task (fixed 2-shot prompt ending in the raw SMS) as `sms`."""
    from conftest import write_items, write_spec

    write_items(tmp_path / "items.jsonl", 20)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    return write_configs(tmp_path, base_url, task=task)


def _monitor_rows(store: Store) -> list[dict]:
    query = (sa.select(monitor_calls, calls.c.confidence, calls.c.meta_json)
             .join(calls, calls.c.id == monitor_calls.c.call_id).order_by(monitor_calls.c.call_id))
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    return [{**r, "input": json.loads(r["meta_json"])["input"]} for r in rows]


def _verdict_pass(store: Store) -> dict[int, float]:
    with store.engine.connect() as conn:
        return {int(c): float(v == "pass") for c, v in conn.execute(
            sa.select(verdicts.c.call_id, verdicts.c.verdict).join(
                monitor_calls, monitor_calls.c.judge_run_id == verdicts.c.judge_run_id)
            .where(verdicts.c.verdict.is_not(None))).all()}


def test_sampling_and_label_probabilities():
    u = np.array([0.1, 0.1, 0.1, 0.7])
    p = sampling_probabilities(u, 0.2, 0.5)
    assert p == pytest.approx(0.2 * (0.5 + 0.5 * u / 0.25))
    assert sampling_probabilities(u, 0.2, 0.0) == pytest.approx([0.2] * 4)
    assert sampling_probabilities(np.zeros(3), 0.3, 0.5) == pytest.approx([0.3] * 3)  # nobody uncertain
    assert sampling_probabilities(u, 0.9, 1.0).max() == 1.0  # clipped
    # A judge unsure (0.5) or failing a confident answer is worth most; a sure pass least.
    worth = label_worth(np.array([0.5, 0.02, 0.98, np.nan]), np.array([0.6, 0.95, 0.9, np.nan]))
    assert worth == pytest.approx([1.0, 0.98 * 0.95, 0.04, 1.0])
    pi = inclusion_probabilities(np.array([1.0, 0.5, 0.5, 0.0, 0.0, 0.0]), 2)
    assert pi.sum() == pytest.approx(2) and pi[0] == pytest.approx(2 * pi[1]) and (pi > 0).all()
    capped = inclusion_probabilities(np.array([10.0, 1, 1, 1, 1]), 3)
    assert capped[0] == 1.0 and capped.sum() == pytest.approx(3) and capped[1] == pytest.approx(0.5)
    assert inclusion_probabilities(np.array([0.2, 0.1]), 5).tolist() == [1.0, 1.0]


def test_every_repeats_until_ctrl_c_and_quality_without_labels_alerts(tmp_path: Path):
    import os
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "m.db"
    store = Store(str(db))
    store.create_run(task="gateway:sms", task_path="", spec_version="-", spec_json="{}", model="openai:x",
                     metric="none", n_planned=0, concurrency=0)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "llmbus.cli", "monitor", "sms", "--judge", str(SMS_JUDGE),
                             "--every", "1s", "--db", str(db), "--json"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = [json.loads(proc.stdout.readline()) for _ in range(2)]  # two passes, a second apart
    finally:
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    assert rc == 0 and [line["considered"] for line in lines] == [0, 0]
    assert lines[0]["project"] == "monitor-sms"
    runner = CliRunner()
    alert = runner.invoke(app, ["quality", "sms", "--db", str(db), "--alert-below", "0.5"])
    assert alert.exit_code == 1 and "no estimate" in alert.output
    unknown = runner.invoke(app, ["quality", "chat", "--db", str(db)])
    assert unknown.exit_code == 2 and "not monitored" in unknown.output
    bad = runner.invoke(app, ["monitor", "sms", "--judge", str(SMS_JUDGE), "--every", "soon", "--db", str(db)])
    assert bad.exit_code == 2 and "--every 'soon'" in bad.output
