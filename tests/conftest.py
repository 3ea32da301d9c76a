"""Shared fixtures: temp stores and configs, small task files, the OpenAI stub, a real PostgreSQL server."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llmbus.providers import Request
from llmbus.store import Store

sys.path.insert(0, str(Path(__file__).parent))
from openai_stub import StubServer
from pg_server import postgres_server

ROOT = Path(__file__).resolve().parents[1]
SMS_TASK = ROOT / "examples" / "sms_spam" / "task.yaml"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own default database and config file."""
    monkeypatch.setenv("LLMBUS_DB", str(tmp_path / "llmbus.db"))
    monkeypatch.setenv("LLMBUS_CONFIG", str(tmp_path / "llmbus.yaml"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(str(tmp_path / "calls.db"))
    yield s
    s.close()


def write_items(path: Path, n: int, markers: dict[int, str] | None = None) -> Path:
    """n SMS-like items alternating ham/spam; markers[i] is appended to item i's text (fault injection)."""
    markers = markers or {}
    with path.open("w") as handle:
        for i in range(n):
            label = "spam" if i % 3 == 0 else "ham"
            text = f"win a free spam prize {i}" if label == "spam" else f"see you at lunch {i}"
            handle.write(json.dumps({"id": f"m{i}", "text": f"{text} {markers.get(i, '')}".strip(),
                                     "label": label}) + "\n")
    return path


def write_spec(path: Path, data_path: str, **overrides: object) -> Path:
    """A small classify spec over `data_path` with fixed 2-shot examples."""
    spec: dict[str, object] = {
        "name": "tiny", "kind": "classify",
        "prompt": "{% for ex in examples %}SMS: {{ ex.text }}\nLabel: {{ ex.label }}\n{% endfor %}"
                  "SMS: {{ item.text }}\nLabel:",
        "output": {"labels": ["ham", "spam"]},
        "data": {"path": data_path, "expected": "label", "id": "id"},
        "fewshot": {"k": 2, "strategy": "fixed", "pool_fraction": 0.1},
        "params": {"max_tokens": 2},
    }
    spec.update(overrides)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def wait_for_calls(db: Path, n: int, timeout_s: float = 60) -> int:
    """Poll a SQLite call log that another process writes until it holds at least n calls (or time runs out)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db}")
    deadline, answered = time.time() + timeout_s, 0
    while time.time() < deadline and answered < n:
        time.sleep(0.05)
        try:
            with engine.connect() as conn:
                answered = conn.scalar(sa.text("select count(*) from calls")) or 0
        except sa.exc.OperationalError:  # the other process has not made the tables yet
            pass
    engine.dispose()
    return answered


@pytest.fixture
def tiny_task(tmp_path: Path) -> Path:
    write_items(tmp_path / "items.jsonl", 40)
    return write_spec(tmp_path / "task.yaml", "items.jsonl")


def spam_or_ham(request: Request) -> str:
    """The stub's classify answer without the HTTP (for a ScriptedProvider): spam when the prompt's last two
    lines (the item's) say spam."""
    lines = [line for line in request.prompt.strip().splitlines() if line.strip()]
    return "spam" if "spam" in " ".join(lines[-2:]) else "ham"


@pytest.fixture
def stub() -> Iterator[StubServer]:
    with StubServer() as server:
        yield server


@pytest.fixture
def stub_model(stub: StubServer, tmp_path: Path) -> str:
    """A named model `openai:stub` pointing at the stub server, with a short timeout."""
    config = {"models": {"openai:stub": {"base_url": stub.base_url, "model": "stub-model", "timeout_s": 0.5,
                                         "max_retries": 3, "usd_per_1m_input": 1.0, "usd_per_1m_output": 2.0}}}
    Path(os.environ["LLMBUS_CONFIG"]).write_text(yaml.safe_dump(config))
    return "openai:stub"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server on 127.0.0.1, started for the session and stopped after."""
    with postgres_server() as url:
        yield url


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright (no browser download); one per test, so no Playwright event
    loop outlives the test that started it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


# The stop-5 pipeline fixture (teacher → student → cascade → cache on real SMS) lives in pipeline.py.
from pipeline import sms_savings  # noqa: E402, F401
