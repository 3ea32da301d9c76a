"""Bad input through the real command: one clear line naming what and where, exit code 2, no traceback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_items, write_spec


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
    from llmbus.providers.llamacpp import free_port

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


@pytest.mark.parametrize(("kind", "needle"), [("folder", "is a folder"), ("missing folder", "does not exist"),
                                              ("garbage file", "file is not a database")])
def test_a_db_that_cannot_be_opened_is_one_line(tmp_path: Path, kind: str, needle: str):
    db = {"folder": tmp_path, "missing folder": tmp_path / "nowhere" / "x.db",
          "garbage file": tmp_path / "junk.db"}[kind]
    garbage = bytes(range(256)) * 16
    if kind == "garbage file":
        db.write_bytes(garbage)
    assert_one_line_error(llmbus("runs", "--db", str(db)), str(db), needle)
    assert kind != "garbage file" or db.read_bytes() == garbage  # looked at, never written


@pytest.mark.parametrize(("text", "needle"), [
    ("- models\n", "llmbus.yaml:1: the config is a mapping with a `models:` section, not a list"),
    ("models:\n  - openai:x\n", "llmbus.yaml:2: models: must be a mapping of PROVIDER:NAME to settings, not a list"),
    ("models:\n  openai:x:\n    - base_url\n", "llmbus.yaml:3: models.openai:x: must be a mapping of settings"),
    ("models:\n  openai:x: http://h\n", "models.openai:x: must be a mapping of settings (base_url, gguf, …), "
                                        "not the text 'http://h'"),
    ("models:\n  gpt4: {base_url: 'http://h'}\n", "llmbus.yaml:2: models: 'gpt4' is not a model name"),
])
def test_config_of_the_wrong_shape_is_one_line(tiny_task: Path, tmp_path: Path, text: str, needle: str):
    (tmp_path / "llmbus.yaml").write_text(text)
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "openai:x"), needle)


def test_error_lines_print_user_text_as_written(tiny_task: Path):
    """Model names and paths are not rich markup or emoji codes: `openai:x:` stays, `[/x]` does not crash."""
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "openai:x:"), "unknown model 'openai:x:'")
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "local:[/x]/[bold]m.gguf"),
                          "[/x]/[bold]m.gguf: GGUF file not found")
    colored = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(tiny_task), "--model", "openai:x:"],
                             capture_output=True, text=True, env={**os.environ, "FORCE_COLOR": "1"}, timeout=120)
    assert colored.returncode == 2 and colored.stderr.startswith("\x1b[1;31merror:\x1b[0m unknown model 'openai:x:'")


def test_show_prints_model_answers_as_written(tmp_path: Path):
    from datetime import UTC, datetime

    from llmbus.store import CallRecord, Store

    store = Store(str(tmp_path / "s.db"))
    run_id = store.create_run(task="t", task_path="t.yaml", spec_version="v1", spec_json="{}", model="openai:x:",
                              metric="accuracy", n_planned=1, concurrency=1)
    stamp = datetime.now(UTC)
    store.record_call(CallRecord(run_id=run_id, task="t", spec_version="v1", item_id="[i1]", model="openai:x:",
                                 prompt="p", started_at=stamp, finished_at=stamp, raw_output="[/INST] :x: [bold]spam"))
    store.close()
    result = llmbus("show", run_id, "--db", str(tmp_path / "s.db"))
    assert result.returncode == 0, result.stderr
    assert "[/INST] :x: [bold]spam" in result.stdout and "[i1]" in result.stdout and "openai:x:" in result.stdout


def test_non_utf8_spec_and_dataset_are_one_line(tmp_path: Path):
    (tmp_path / "items.jsonl").write_bytes('{"id": "a", "text": "caf\u00e9", "label": "ham"}\n'.encode("latin-1"))
    task = write_spec(tmp_path / "t.yaml", "items.jsonl")
    assert_one_line_error(llmbus("run", str(task), "--dry-run"), "items.jsonl:1: not utf-8 text: byte 0xe9 at byte "
                                                                 "offset 24", "data.encoding")
    task.write_bytes(task.read_bytes() + "description: caf\u00e9\n".encode("latin-1"))
    assert_one_line_error(llmbus("run", str(task), "--dry-run"), "t.yaml:", "not utf-8 text: byte 0xe9")


@pytest.mark.slow
def test_database_password_is_never_printed(postgres_url: str, tiny_task: Path):
    """The server trusts every login, so a password in the URL is accepted: it must never reach the screen."""
    secret = "pw-s3cret-41"
    url = postgres_url.replace("://llmbus@", f"://llmbus:{secret}@")
    for args in (["show", "deadbeef"], ["run", str(tiny_task), "--resume", "deadbeef"], ["eval", "deadbeef"],
                 ["label", "serve", "--project", "nope"], ["flow", "show", "deadbeef"]):
        result = llmbus(*args, "--db", url)
        assert_one_line_error(result, "not found in postgresql+psycopg://llmbus:***@127.0.0.1:")
        assert secret not in result.stderr + result.stdout


def test_endpoint_key_in_the_url_is_never_printed(tiny_task: Path, tmp_path: Path):
    from llmbus.providers.llamacpp import free_port

    base = f"http://bob:pw-7@127.0.0.1:{free_port()}/v1?api-key=sk-secret-7&api-version=1"
    (tmp_path / "llmbus.yaml").write_text(f"models:\n  openai:dead:\n    base_url: '{base}'\n")
    result = llmbus("run", str(tiny_task), "--model", "openai:dead")
    assert_one_line_error(result, "cannot reach http://bob:***@127.0.0.1:", "/v1?api-key=***&api-version=1")
    assert "sk-secret-7" not in result.stderr and "pw-7" not in result.stderr


def test_version_is_the_installed_package_version():
    from importlib.metadata import version

    result = llmbus("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"llmbus {version('llmbus')}"


def test_registering_models_in_a_malformed_llmbus_yaml_is_one_line_and_writes_nothing(tmp_path: Path):
    from llmbus.errors import SpecError
    from llmbus.providers.config import add_models

    config = tmp_path / "llmbus.yaml"
    config.write_text("models:\n  - openai:x\n")
    with pytest.raises(SpecError, match=r"llmbus.yaml:\d+: models: must be a mapping"):
        add_models({"encoder:t-student": {"path": "/s"}}, config)
    assert config.read_text() == "models:\n  - openai:x\n"
    config.write_text("models:\n  openai:keep: {base_url: 'http://127.0.0.1:1/v1', model: m}\n")
    add_models({"encoder:t-student": {"path": "/s", "threads": 1}}, config)
    import yaml

    assert set(yaml.safe_load(config.read_text())["models"]) == {"openai:keep", "encoder:t-student"}


USERS_CONFIG = """\
# Our models. Ask #ml-platform before changing the teacher.
otel: true   # traces to the local collector
models:
    # the teacher: a stub in tests
    openai:teacher:
        base_url: 'http://127.0.0.1:1/v1'    # the VPN endpoint
        stop:
          - "END"
    # the cascade, replaced in place by each distill
    cascade:t: {student: old, teacher: old, threshold: 0.5}
    local:gemma-3-270m: {threads: 2}
"""


def test_registering_models_keeps_the_users_comments_key_order_and_layout(tmp_path: Path):
    """What `llmbus distill` writes into a hand-written llmbus.yaml: its entries, and nothing else changed."""
    import yaml

    from llmbus.providers.config import add_models

    config = tmp_path / "llmbus.yaml"
    config.write_text(USERS_CONFIG)
    add_models({"cascade:t": {"student": "encoder:t-student", "teacher": "openai:teacher", "threshold": 0.91},
                "encoder:t-student": {"path": "/s", "threads": 1}}, config)
    text = config.read_text()
    kept, replaced = USERS_CONFIG.split("    cascade:t:")
    assert text.startswith(kept + "    cascade:t:\n        student: encoder:t-student\n"), text
    assert text.endswith(replaced.split("\n", 1)[1] + "    encoder:t-student:\n        path: /s\n"
                         "        threads: 1\n"), text
    models = yaml.safe_load(text)["models"]
    assert list(models) == ["openai:teacher", "cascade:t", "local:gemma-3-270m", "encoder:t-student"]
    assert models["cascade:t"]["threshold"] == 0.91 and models["openai:teacher"]["stop"] == ["END"]
    only_comments = tmp_path / "new.yaml"
    only_comments.write_text("# filled in by llmbus distill\n")
    add_models({"encoder:t-student": {"path": "/s"}}, only_comments)
    assert only_comments.read_text() == "# filled in by llmbus distill\nmodels:\n  encoder:t-student:\n    path: /s\n"


def test_serve_config_of_the_wrong_shape_and_non_utf8_side_files_are_one_line(tmp_path: Path):
    (tmp_path / "serve.yaml").write_text("- sms\n- gemma\n")
    assert_one_line_error(llmbus("serve", "--config", str(tmp_path / "serve.yaml")), "serve.yaml:1",
                          "serve config is a mapping")
    (tmp_path / "inputs.jsonl").write_bytes(b'{"question": "caf\xe9"}\n')
    assert_one_line_error(llmbus("flow", "run", str(ROOT / "examples" / "support" / "flow.py"), "--dataset",
                                 str(tmp_path / "inputs.jsonl")), "inputs.jsonl:1", "not utf-8")
