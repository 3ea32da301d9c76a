"""Bad input through the real command: one clear line naming what and where, exit code 2, no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_items, write_spec


def llmbus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llmbus.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_malformed_yaml(tmp_path: Path):
    (tmp_path / "t.yaml").write_text("name: x\nkind: [classify\n")
    assert_one_line_error(llmbus("run", str(tmp_path / "t.yaml")), "t.yaml:", "malformed YAML")


def test_unknown_field(tmp_path: Path):
    task = write_spec(tmp_path / "t.yaml", "items.jsonl", temprature=0.5)
    assert_one_line_error(llmbus("run", str(task)), "t.yaml:", "temprature: unknown field")


def test_missing_dataset(tmp_path: Path):
    task = write_spec(tmp_path / "t.yaml", "nowhere.jsonl")
    assert_one_line_error(llmbus("run", str(task)), "dataset file not found", "nowhere.jsonl")


def test_malformed_jsonl(tmp_path: Path):
    write_items(tmp_path / "items.jsonl", 3)
    with (tmp_path / "items.jsonl").open("a") as handle:
        handle.write("{oops\n")
    assert_one_line_error(llmbus("run", str(write_spec(tmp_path / "t.yaml", "items.jsonl"))),
                          "items.jsonl:4:", "malformed JSON")


def test_empty_dataset(tmp_path: Path):
    (tmp_path / "items.jsonl").write_text("")
    assert_one_line_error(llmbus("run", str(write_spec(tmp_path / "t.yaml", "items.jsonl"))), "dataset is empty")


def test_unknown_model(tiny_task: Path):
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "nope:thing"), "unknown model 'nope:thing'")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "openai:gpt-x"), "set OPENAI_BASE_URL")


def test_unreachable_endpoint_loses_nothing(tiny_task: Path, tmp_path: Path):
    from llmbus.llamacpp import free_port

    config = tmp_path / "llmbus.yaml"
    config.write_text(f"models:\n  openai:dead:\n    base_url: http://127.0.0.1:{free_port()}/v1\n")
    result = llmbus("run", str(tiny_task), "--model", "openai:dead")
    assert_one_line_error(result, "openai:dead", "cannot reach")
    assert json.loads(llmbus("runs", "--json").stdout) == []  # no half-made run left behind


def test_not_a_gguf(tiny_task: Path, tmp_path: Path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", f"local:{fake}"), "not a GGUF file")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", f"local:{tmp_path}/missing.gguf"),
                          "GGUF file not found")


def test_bad_model_config(tiny_task: Path, tmp_path: Path):
    (tmp_path / "llmbus.yaml").write_text("models:\n  openai:x:\n    base_url: http://h\n    timeout_s: soon\n")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "openai:x"), "llmbus.yaml", "timeout_s")


def test_unknown_run_id():
    assert_one_line_error(llmbus("show", "deadbeef"), "run 'deadbeef' not found")


def test_run_show_runs_and_traffic(tiny_task: Path, stub_model: str):
    result = llmbus("run", str(tiny_task), "--model", stub_model, "--limit", "6", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == 6 and summary["value"] == pytest.approx(1.0)
    shown = json.loads(llmbus("show", summary["run_id"], "--json").stdout)
    assert len(shown["calls"]) == 6 and shown["calls"][0]["prompt"].endswith("Label:")
    runs = json.loads(llmbus("runs", "--traffic", "1000000", "--json").stdout)
    assert runs[0]["usd_per_month"] == pytest.approx(runs[0]["cost_per_1k"] * 1000)
    assert runs[0]["needed_items_per_s"] == pytest.approx(1_000_000 / (30 * 24 * 3600))
    table = llmbus("runs", "--traffic", "1000000").stdout
    assert summary["run_id"] in table and "$/month" in table


def test_dry_run_prints_the_prompt(tiny_task: Path):
    result = llmbus("run", str(tiny_task), "--dry-run")
    assert result.returncode == 0 and result.stdout.strip().endswith("Label:")
