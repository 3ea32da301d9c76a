"""The closed production loop (issue 14): flow steps in the one call log; a served model's logged traffic →
`distill --from-traffic` → `accept`, through the real gateway with the official openai client on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
import sqlalchemy as sa
import yaml

from conftest import SMS_TASK, write_items, write_spec
from llmbus.distill.distill import distill
from llmbus.distill.traffic import traffic_teacher
from llmbus.errors import LlmbusError
from llmbus.flows.engine import FlowContext, FlowSettings, flow, resume, run_many, start
from llmbus.flows.log import FlowLog
from llmbus.quality.evaluate import evaluate
from llmbus.quality.judge import run_items, run_judge
from llmbus.quality.label import LabelSchema, create_project, import_labels
from llmbus.run.engine import eval_items
from llmbus.serve.report import pick_runs
from llmbus.store import Store
from llmbus.store.schema import embeddings, flow_steps
from llmbus.store.traffic import parse_since, traffic_item_id
from llmbus.task.spec import load_spec
from llmbus.train.student import TrainSettings
from openai_stub import StubServer
from quality_helpers import add_judge_run
from test_serve import logged, running_gateway, write_configs

# --- 1. flow LLM steps in the call log ------------------------------------------------------------------------


@flow("triage")
def triage(ctx: FlowContext, value: dict[str, Any]) -> dict[str, Any]:
    label = ctx.llm("label", f"SMS: {value['text']}\nLabel:", labels=("ham", "spam")).text
    parsed = ctx.task("classify", ctx.resources["spec"], {"text": value["text"]})
    if parsed == "spam":
        ctx.review("check", {"question": value["text"], "draft": parsed})
    return {"llm": label, "task": parsed}


def test_flow_llm_and_task_steps_are_rows_of_the_call_log_linked_from_their_steps(tiny_task: Path, stub,
                                                                                 stub_model: str, store: Store):
    spec = load_spec(tiny_task)
    settings = FlowSettings(model=stub_model)
    resources = {"spec": spec}
    ham = start(store, triage, {"text": "see you at lunch"}, settings, resources)
    spam = start(store, triage, {"text": "win a free spam prize"}, settings, resources)
    assert ham.status == "done" and spam.status == "waiting_review"
    flow_runs = [r for r in store.list_runs() if r["task"] == "flow:triage"]
    assert len(flow_runs) == 2 and all(r["status"] == "done" for r in flow_runs)  # one run of calls per execution
    rows = {c["item_id"]: c for r in flow_runs for c in store.iter_calls(r["id"])}
    assert set(rows) == {f"{o.run_id}:{k}" for o in (ham, spam) for k in ("label", "classify")}
    for outcome in (ham, spam):
        steps = {s["key"]: s for s in FlowLog(store).steps(outcome.run_id)}
        llm, task = rows[f"{outcome.run_id}:label"], rows[f"{outcome.run_id}:classify"]
        assert steps["label"]["call_id"] == llm["id"] and steps["classify"]["call_id"] == task["id"]
        assert llm["task"] == "flow:triage" and llm["spec_version"] == "-" and llm["model"] == stub_model
        assert task["task"] == spec.name and task["spec_version"] == spec.version  # a task step carries its task
        assert llm["prompt"] == steps["label"]["detail"]["prompt"] and llm["tokens_in"] == steps["label"]["tokens_in"]
        assert llm["cost_usd"] == pytest.approx(steps["label"]["cost_usd"]) and llm["cost_usd"] > 0
        assert task["meta"]["input"] == FlowLog(store).get_run(outcome.run_id)["input"]["text"]
        assert task["parsed"] == steps["classify"]["output"] and task["label_probs"]
        assert steps["classify"]["detail"]["raw"] == task["raw_output"]
    assert rows[f"{spam.run_id}:classify"]["parsed"] == "spam"
    # Replayed steps call nothing and log nothing; the resumed execution has no calls, so no run either.
    before = sum(1 for _ in store.list_runs())
    assert resume(store, spam.run_id, triage, resources).status == "waiting_review"
    assert sum(1 for _ in store.list_runs()) == before


@flow("broken")
def broken(ctx: FlowContext, value: dict[str, Any]) -> Any:
    return ctx.task("classify", ctx.resources["spec"], {"text": value["text"]})


def test_a_failed_task_step_is_a_failed_call_and_a_dataset_shares_one_run(tiny_task: Path, stub, stub_model: str,
                                                                          store: Store):
    spec = load_spec(tiny_task)
    settings = FlowSettings(model=stub_model)
    failed = start(store, broken, {"text": "hello NONSENSE"}, settings, {"spec": spec})
    assert failed.status == "failed"
    step = FlowLog(store).get_step(failed.run_id, "classify")
    [run] = [r for r in store.list_runs() if r["task"] == "flow:broken"]
    [call] = list(store.iter_calls(run["id"]))
    assert step["call_id"] == call["id"] and call["error_kind"] == step["error_kind"] == "label_not_in_set"
    assert call["raw_output"] == "maybe" and call["parsed"] is None

    broken_with_spec = type(broken)(broken.name, broken.fn, broken.path, lambda _store: {"spec": spec})
    outcomes = run_many(store, broken_with_spec, [{"text": f"see you {i}"} for i in range(3)], settings)
    assert [o.status for o in outcomes] == ["done"] * 3
    runs = [r for r in store.list_runs() if r["task"] == "flow:broken"]
    assert len(runs) == 2 and runs[-1]["n_planned"] == 3
    assert {c["item_id"] for c in store.iter_calls(runs[-1]["id"])} == {f"{o.run_id}:classify" for o in outcomes}


def test_migration_010_adds_the_step_call_link_to_an_older_database(tmp_path: Path):
    db = tmp_path / "old.db"
    Store(str(db)).close()
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # the database as it was before 010
        conn.execute(sa.text("ALTER TABLE flow_steps DROP COLUMN call_id"))
        conn.execute(sa.text("DELETE FROM migrations WHERE name = '010_flow_step_calls'"))
    engine.dispose()
    store = Store(str(db))
    with store.engine.connect() as conn:
        assert "call_id" in {c["name"] for c in sa.inspect(conn).get_columns("flow_steps")}
        conn.execute(sa.select(flow_steps.c.call_id)).all()


# --- 2 and 3. traffic → distill --from-traffic → accept (the stub as the served model) -------------------------


def send(url: str, texts: list[str], keys: list[str]) -> list[str]:
    """Each text as one chat request (keys taken in turn), four at a time; the answers in order."""
    def ask(pair: tuple[int, str]) -> str:
        client = openai.OpenAI(base_url=url, api_key=keys[pair[0] % len(keys)], max_retries=0)
        reply = client.chat.completions.create(model="sms", messages=[{"role": "user", "content": pair[1]}])
        return str(reply.choices[0].message.content)

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(ask, enumerate(texts)))


def llmbus(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "LLMBUS_THREADS": "1", "COLUMNS": "200"})


def one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_stub_traffic_distills_a_student_that_accept_takes_and_a_blind_prompt_it_refuses(tmp_path: Path):
    """The stub answers spam exactly when the SMS says "spam": a student learns that from the served answers,
    and a prompt version that hides the SMS from the model (so it always answers ham) is refused."""
    write_items(tmp_path / "items.jsonl", 120)
    task = write_spec(tmp_path / "task.yaml", "items.jsonl")
    spec = load_spec(task)
    texts = [json.loads(line)["text"] for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    db = tmp_path / "gw.db"
    keys = ["sk-a", "sk-b"]
    with StubServer() as backend:
        config = write_configs(tmp_path, backend.base_url, task=task,
                               keys=[{"key": "sk-a", "name": "team-a"}, {"key": "sk-b", "name": "team-b"}])
        with running_gateway(config, db) as (url, gateway):
            answers = send(url, texts[:60] + texts[:2], keys)  # two repeats: exact-cache hits, the same items
            store = logged(gateway)
            run = store.get_run(gateway.run_ids["sms"])
            assert run["task_path"] == str(task) and json.loads(run["spec_json"])["name"] == "tiny"
            assert run["spec_version"] == spec.version
            rows = list(store.iter_calls(run["id"]))
            assert sorted(r["meta"]["input"] for r in rows) == sorted(texts[:60] + texts[:2])  # the raw input
            assert sum(r["meta"]["route"] == "cache_exact" for r in rows) == 2

            # The served answers are teacher data: one example per distinct input, the served answer as teacher.
            teacher = traffic_teacher(spec, store, "sms")
            by_input = {e.input: e for e in teacher.examples}
            assert len(teacher.examples) == 60 and teacher.ref == "gateway:sms" and teacher.model == "openai:primary"
            assert all(by_input[t].teacher == a and by_input[t].id == traffic_item_id(t)
                       for t, a in zip(texts[:60], answers[:60], strict=True))
            assert teacher.reference == "the served answers" and teacher.items_left is None

            # --filter judge keeps what a judge passed (verdicts link to the gateway calls).
            fails = {r["item_id"] for r in rows[::3]}
            add_judge_run(store, run["id"], {r["item_id"]: "fail" if r["item_id"] in fails else "pass" for r in rows})
            judged = traffic_teacher(spec, store, "sms", "judge")
            passed_inputs = {r["meta"]["input"] for r in rows if r["item_id"] not in fails}
            assert {e.input for e in judged.examples} == passed_inputs
            # A real judge run on the traffic: this one passes the answers it calls spam (the stub judges by text).
            judge = write_spec(tmp_path / "judge.yaml", "items.jsonl", name="spam_judge", output={"labels": ["spam",
                               "ham"]}, prompt="Answer: {{ item.answer }}\nSMS: {{ item.text }}\nLabel:",
                               fewshot={"k": 0})
            run_judge(load_spec(judge), store, run["id"], model="openai:primary")
            spam_inputs = {r["meta"]["input"] for r in rows if "spam" in r["meta"]["input"]}
            assert {e.input for e in traffic_teacher(spec, store, "sms", "judge").examples} == spam_inputs
            # --filter human keeps labeled items only, with the human's label; the traffic is labelable.
            assert run_items(store, run)[rows[0]["item_id"]] == {"text": rows[0]["meta"]["input"]}
            create_project(store, "traffic", run["id"], LabelSchema(kind="labels", labels=("ham", "spam")))
            labeled = rows[:5]
            path = tmp_path / "labels.jsonl"
            path.write_text("".join(json.dumps({"item_id": r["item_id"], "label": "ham"}) + "\n" for r in labeled))
            assert import_labels(store, "traffic", path, "alice") == 5
            human = traffic_teacher(spec, store, "sms", "human")
            assert {e.input: e.teacher for e in human.examples} == {r["meta"]["input"]: "ham" for r in labeled}
            # Too few, or one label only: distill's own refusals, before any training.
            with pytest.raises(LlmbusError, match="the traffic of gateway:sms has 5 usable answers after --filter "
                                                  "human: distillation needs at least ~20"):
                distill(spec, store, human, tmp_path / "refused")
            with pytest.raises(LlmbusError, match="has 0 usable answers"):
                distill(spec, store, traffic_teacher(spec, store, "sms", since=datetime.now(UTC) + timedelta(1)),
                        tmp_path / "refused")
            only_ham = [r for r in rows if r["parsed"] == "ham"]
            add_judge_run(store, run["id"], {r["item_id"]: "pass" if r in only_ham else "fail" for r in rows})
            with pytest.raises(LlmbusError, match=r"the traffic of gateway:sms: the teacher's .* are all 'ham'"):
                distill(spec, store, traffic_teacher(spec, store, "sms", "judge"), tmp_path / "refused",
                        TrainSettings(epochs=1, threads=1))
            assert not (tmp_path / "refused" / "student").exists()

            # The CLI: a student from the traffic (no filter).
            made = llmbus("distill", str(task), "--from-traffic", "sms", "--epochs", "1", "--out",
                          str(tmp_path / "out"), "--db", str(db))
            assert made.returncode == 0, made.stderr + made.stdout
            assert "its traffic, gateway:sms" in made.stdout and "vs the served answers on the" in made.stdout
            report = json.loads((tmp_path / "out" / "distill.json").read_text())
            assert report["teacher_run"] == "gateway:sms" and report["reference"] == "the served answers"
            assert report["n_train"] + report["n_val"] + report["n_test"] == 60
            assert yaml.safe_load((tmp_path / "llmbus.yaml").read_text())["models"]["cascade:tiny"]["teacher"] == \
                "openai:primary"

            # New traffic the student never saw, replayed through candidates.
            time.sleep(0.01)
            fresh_from = datetime.now(UTC)
            send(url, texts[60:100], keys)

        student = llmbus("accept", "encoder:tiny-student", "--against", "sms", "--since", fresh_from.isoformat(),
                         "--slice", "key", "--db", str(db), "--json")
        assert student.returncode == 0, student.stderr + student.stdout
        result = json.loads(student.stdout)
        assert result["accepted"] and result["n"] == 40 and result["n_human"] == 0 and result["n_incumbent"] == 40
        overall = result["slices"][0]
        assert overall["name"] == "all" and overall["delta"]["lo"] >= -0.01 and overall["candidate"] >= 0.99
        assert [s["name"] for s in result["slices"][1:]] == ["key=team-a", "key=team-b"]
        assert all(s["n"] == 20 and s["gated"] for s in result["slices"][1:])
        store = Store(str(db))
        replay = store.get_run(result["replay_run"])
        assert replay["model"] == "encoder:tiny-student" and replay["sampling"] == "traffic"
        replayed = list(store.iter_calls(replay["id"]))
        assert len(replayed) == 40 and all(c["meta"]["input"] in texts[60:100] for c in replayed)
        assert evaluate(store, replay["id"]).values["accuracy"].value == pytest.approx(overall["candidate"])
        assert pick_runs(spec, store, None) == []  # a replay is no row of `llmbus report`: it is scored on traffic

        blind = write_spec(tmp_path / "blind.yaml", "items.jsonl", prompt="SMS: (not shown)\nLabel:")
        refused = llmbus("accept", str(blind), "--against", "sms", "--since", fresh_from.isoformat(), "--db",
                         str(db))
        assert refused.returncode == 1, refused.stderr + refused.stdout
        assert "refused" in refused.stdout and "FAIL" in refused.stdout
        assert "against the incumbent's own answers on 40" in refused.stdout
        bad = json.loads(llmbus("accept", str(blind), "--against", "sms", "--since", fresh_from.isoformat(),
                                "--db", str(db), "--json").stdout)
        spam_share = sum("spam" in t for t in texts[60:100]) / 40
        assert bad["model"] == "openai:primary" and bad["slices"][0]["candidate"] == pytest.approx(1 - spam_share)
        assert bad["slices"][0]["delta"]["lo"] < -0.01 and not bad["accepted"]

    # Bad input is one line, exit 2.
    one_error_line(llmbus("accept", "encoder:tiny-student", "--against", "nope", "--db", str(db)),
                   "no traffic of served model 'nope'")
    one_error_line(llmbus("accept", "encoder:tiny-student", "--against", "sms", "--slice", "colour", "--db",
                          str(db)), "--slice 'colour'", "key, ")
    one_error_line(llmbus("distill", str(task), "--from-traffic", "sms", "--since", "yesterday", "--db", str(db)),
                   "--since 'yesterday'")
    one_error_line(llmbus("distill", str(task), "--db", str(db)), "exactly one of --teacher")


# --- the same loop on real SMS with the embedded model as the served model ------------------------------------


@pytest.mark.slow
def test_sms_traffic_of_the_embedded_model_teaches_a_student_accept_takes_and_a_one_label_model_it_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Gemma 3 270M serves SMS behind the gateway (6 nearest shots from a small pool); humans label the traffic
    (here: the dataset's gold labels, imported); the student learns the human-checked answers, and on fresh
    traffic it is accepted, while the stub, which answers ham to every real SMS, is refused. The bound is loose
    (0.3) because 24 replayed items give a wide interval."""
    monkeypatch.setenv("LLMBUS_THREADS", "1")
    raw = yaml.safe_load(SMS_TASK.read_text())
    raw.update(name="sms_loop", fewshot={"k": 6, "strategy": "nearest", "pool_fraction": 0.03})
    task = tmp_path / "sms.yaml"
    task.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(task)
    sampled, _ = eval_items(spec, limit=120, sampling="balanced")
    items = list({item.text("text"): item for item in sampled}.values())[:64]  # the collection repeats some SMS
    first, fresh = items[:40], items[40:]
    gold = {item.text("text"): item.expected for item in items}
    db = tmp_path / "gw.db"
    with StubServer() as stub:
        (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": {"openai:stub": {
            "base_url": stub.base_url, "model": "stub-model", "max_retries": 0}}}))
        serve = {"models": {"sms": {"model": "local:gemma-3-270m", "task": str(task), "timeout_s": 300}},
                 "keys": [{"key": "sk-a", "name": "team-a"}, {"key": "sk-b", "name": "team-b"}]}
        (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve))
        with running_gateway(tmp_path / "serve.yaml", db) as (url, gateway):
            send(url, [item.text("text") for item in first], ["sk-a", "sk-b"])
            store = logged(gateway)
            run_id = gateway.run_ids["sms"]
            with store.engine.connect() as conn:  # the pool's nearest-shot vectors: kept for the next start
                assert conn.scalar(sa.select(sa.func.count()).select_from(embeddings)) >= len(gateway.selectors[
                    "sms"].pool)
            label_traffic(store, run_id, "first", gold, [item.text("text") for item in first], tmp_path / "a.jsonl")
            made = llmbus("distill", str(task), "--from-traffic", "sms", "--filter", "human", "--epochs", "1",
                          "--out", str(tmp_path / "out"), "--db", str(db))
            assert made.returncode == 0, made.stderr + made.stdout
            assert "vs human-checked answers" in made.stdout
            time.sleep(0.01)
            fresh_from = datetime.now(UTC).isoformat()
            served = send(url, [item.text("text") for item in fresh], ["sk-a", "sk-b"])
            assert set(served) <= {"ham", "spam"}
            label_traffic(logged(gateway), run_id, "fresh", gold, [item.text("text") for item in fresh],
                          tmp_path / "b.jsonl", every=2)
        accepted = llmbus("accept", "encoder:sms_loop-student", "--against", "sms", "--since", fresh_from,
                          "--max-drop", "0.3", "--db", str(db), "--json")
        assert accepted.returncode == 0, accepted.stderr + accepted.stdout
        good = json.loads(accepted.stdout)
        assert good["accepted"] and good["n"] == 24 and good["n_human"] == 12 and good["n_incumbent"] == 12
        refused = llmbus("accept", "openai:stub", "--against", "sms", "--since", fresh_from, "--max-drop", "0.3",
                         "--slice", "key", "--db", str(db), "--json")
        assert refused.returncode == 1, refused.stderr + refused.stdout
        bad = json.loads(refused.stdout)
        assert not bad["accepted"] and bad["slices"][0]["candidate"] < good["slices"][0]["candidate"]
        assert [s["name"] for s in bad["slices"][1:]] == ["key=team-a", "key=team-b"]
        print("\naccept student:", good["reason"], "\naccept stub:", bad["reason"])


def label_traffic(store: Store, run_id: str, project: str, gold: dict[str, Any], texts: list[str], path: Path,
                  every: int = 1) -> None:
    """Humans label every `every`-th call of the run whose input is one of `texts` with its gold answer."""
    create_project(store, project, run_id, LabelSchema(kind="labels", labels=("ham", "spam")))
    rows = [c for c in store.iter_calls(run_id) if c["meta"]["input"] in texts][::every]
    path.write_text("".join(json.dumps({"item_id": c["item_id"], "label": gold[c["meta"]["input"]]}) + "\n"
                            for c in rows))
    assert import_labels(store, project, path, "alice") == len(rows)


def test_since_reads_dates_times_and_ages():
    assert parse_since("2026-01-31") == datetime(2026, 1, 31, tzinfo=UTC)
    assert parse_since("2026-01-31T08:00+02:00").utcoffset() == timedelta(hours=2)
    assert abs(parse_since("24h") - (datetime.now(UTC) - timedelta(hours=24))) < timedelta(seconds=5)
    with pytest.raises(LlmbusError, match="an age"):
        parse_since("last week")
