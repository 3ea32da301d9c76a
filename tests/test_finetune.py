"""Trained judges from human labels: the embedding head and the fully fine-tuned MiniLM, cross-validated
against the humans and used through the same judge interface as an LLM judge (CI-sized)."""

import json
from pathlib import Path

import pytest

from conftest import SMS_TASK
from llmbus.errors import LlmbusError
from llmbus.providers.head import HeadJudge
from llmbus.quality import label
from llmbus.quality.calibrate import calibrate
from llmbus.quality.finetune import cross_validate, train_judge, training_set
from llmbus.quality.judge import load_judge, load_verdicts, run_judge
from llmbus.store import Store
from llmbus.task.data import load_items
from llmbus.task.spec import load_spec
from llmbus.train.student import TrainSettings
from quality_helpers import add_judge_run, add_run

SMS_JUDGE = SMS_TASK.parent / "judge.yaml"
CI = TrainSettings(epochs=1, batch_size=16, max_len=64, threads=2)


def _labeled_project(store: Store, tmp_path: Path, n: int, humans: int | None = None) -> str:
    """A run over n real SMS whose answers are wrong for every third item; humans mark right answers pass
    (on the first `humans` items, default all)."""
    items = load_items(load_spec(SMS_TASK))[:n]
    flip = {"spam": "ham", "ham": "spam"}
    rows, human = [], []
    for k, item in enumerate(items):
        answer = flip[item.expected] if k % 3 == 0 else item.expected
        rows.append({"item_id": item.id, "parsed": answer, "expected": item.expected})
        human.append({"item_id": item.id, "label": "pass" if answer == item.expected else "fail"})
    run_id = add_run(store, rows, task="sms_spam", labels=["ham", "spam"], task_path=str(SMS_TASK))
    label.create_project(store, "sms", run_id, label.LabelSchema(kind="labels", labels=("pass", "fail")))
    path = tmp_path / "human.jsonl"
    path.write_text("".join(json.dumps(h) + "\n" for h in human[:humans]))
    label.import_labels(store, "sms", path, "gold")
    return run_id


def test_head_judge_cross_validates_and_judges_like_an_llm_judge(store: Store, tmp_path: Path):
    run_id = _labeled_project(store, tmp_path, 300)
    data = training_set(store, "sms")
    assert len(data.texts) == 300 and data.texts[0].endswith(("[SEP] ham", "[SEP] spam"))
    cv = cross_validate(data, "head", folds=5)
    assert cv.kappa > 0.7 and cv.accuracy > 0.88, cv  # right/wrong depends on input AND answer: needs both
    assert cv.usd_per_1k > 0 and cv.ms_per_judgment > 0
    _, model = train_judge(store, "sms", tmp_path / "head", kind="head", folds=3)
    assert model == f"head:{tmp_path / 'head'}" and HeadJudge.load(tmp_path / "head").classes == ["fail", "pass"]
    judged = run_judge(load_judge(str(SMS_JUDGE)), store, run_id, model=model, limit=60)
    assert judged.n == 60 and judged.broken == 0 and judged.cost_usd > 0
    rows = load_verdicts(store, judged.judge_run_id)
    assert all(sum(r["probs"].values()) == pytest.approx(1.0) for r in rows)
    # Same interface as an LLM judge, so calibration works on it too (trained on these items: optimistic).
    assert calibrate(store, judged.judge_run_id, "sms").agreement.accuracy > 0.9


def test_too_few_labels(store: Store, tmp_path: Path):
    _labeled_project(store, tmp_path, 3)
    with pytest.raises(LlmbusError, match="at least 5 human-labeled items"):
        train_judge(store, "sms", tmp_path / "x", kind="head", folds=5)


@pytest.mark.slow
def test_fine_tuned_judge_ci_sized(store: Store, tmp_path: Path):
    run_id = _labeled_project(store, tmp_path, 240)
    report, model = train_judge(store, "sms", tmp_path / "enc", kind="finetuned", folds=2, settings=CI)
    assert model.startswith("encoder:") and (tmp_path / "enc" / "student.json").is_file()
    print(f"\nfine-tuned judge, 2-fold CV on 240 SMS judgments: kappa {report.kappa:.3f}, "
          f"accuracy {report.accuracy:.3f}, {report.ms_per_judgment:.1f} ms/judgment, ${report.usd_per_1k:.6f}/1k")
    assert report.n == 240 and -1 <= report.kappa <= 1 and report.accuracy > 0.5
    judged = run_judge(load_judge(str(SMS_JUDGE)), store, run_id, model=model, limit=20)
    assert judged.n == 20 and judged.broken == 0


def test_trusted_judge_labels_join_training(store: Store, tmp_path: Path):
    run_id = _labeled_project(store, tmp_path, 30, humans=12)
    truth = {c["item_id"]: "pass" if c["parsed"] == c["expected"] else "fail" for c in store.iter_calls(run_id)}
    good = add_judge_run(store, run_id, truth)
    data = training_set(store, "sms", judge_run=good)
    assert data.humans == 12 and len(data.texts) == 30 and data.labels == [truth[i] for i in data.item_ids]
    sloppy = add_judge_run(store, run_id, dict.fromkeys(truth, "pass"))
    with pytest.raises(LlmbusError, match=r"not trusted unattended: TNR 0\.000"):
        training_set(store, "sms", judge_run=sloppy)


@pytest.mark.slow
def test_judge_training_reports_its_stages_and_json_stays_plain(store: Store, tmp_path: Path):
    import os
    import subprocess
    import sys

    _labeled_project(store, tmp_path, 90)
    stages: list[tuple[str, int | None, int | None]] = []
    train_judge(store, "sms", tmp_path / "head", kind="head", folds=3,
                progress=lambda stage, done, total: stages.append((stage, done, total)))
    folds = [(done, total) for stage, done, total in stages if stage == "cross-validating the head judge: folds"]
    assert folds == [(0, 3), (1, 3), (2, 3), (3, 3)]
    for what in ("inputs", "answers"):  # once: the folds and the final head share the features
        assert [(d, t) for s, d, t in stages if s == f"embedding 90 {what}"] == [(0, 90), (90, 90)]
    final = [(d, t) for s, d, t in stages if s == "training the MiniLM head on all 90 labels"]
    assert final == [(0, 1), (1, 1)] and stages[-1][0] == "training the MiniLM head on all 90 labels"

    # FORCE_COLOR: rich draws as on a terminal, so a progress line not turned off by --json would show.
    env = {**os.environ, "FORCE_COLOR": "1", "LLMBUS_THREADS": "1", "LLMBUS_DB": store.url.removeprefix("sqlite:///")}

    def judge_train(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llmbus.cli", "judge", "train", "--project", "sms", "--folds", "3",
                               "--threads", "1", "--out", str(tmp_path / "cli"), *extra], capture_output=True,
                              text=True, env=env, timeout=300)

    shown = judge_train()
    assert shown.returncode == 0, shown.stderr
    assert "cross-validating the head judge" in shown.stderr and "embedding 90 inputs" in shown.stderr
    quiet = judge_train("--json")
    assert quiet.returncode == 0, quiet.stderr
    report = json.loads(quiet.stdout)
    assert report["n"] == 90 and report["model"] == f"head:{tmp_path / 'cli'}"
    assert "cross-validating" not in quiet.stderr + quiet.stdout and "embedding" not in quiet.stderr
