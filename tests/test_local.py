"""The embedded Gemma 3 270M on a supervised llama-server: label scoring, JSON Schema, generation, end to end."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from conftest import SMS_TASK
from llmbus.providers import Request
from llmbus.providers.config import resolve_model
from llmbus.providers.local import LocalProvider

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local() -> Iterator[LocalProvider]:
    provider = LocalProvider(resolve_model("local:gemma-3-270m").model_copy(update={"threads": 1, "parallel": 4}))
    provider.check()
    yield provider
    provider.close()


SHOTS = ("SMS: WINNER!! You have won a free prize, call 09061701461 now\nLabel: spam\n"
         "SMS: Ok lar... Joking wif u oni...\nLabel: ham\n"
         "SMS: URGENT! Claim your cash reward, txt CLAIM to 81010\nLabel: spam\n"
         "SMS: I'll be home late, don't wait for dinner\nLabel: ham\n")


def test_label_scoring_gives_a_distribution(local: LocalProvider):
    spam = local.complete(Request(SHOTS + "SMS: Congratulations! You won a free cruise, call now to claim\nLabel:",
                                  labels=("ham", "spam")))
    ham = local.complete(Request(SHOTS + "SMS: Are we still meeting at the station at six?\nLabel:",
                                 labels=("ham", "spam")))
    for completion in (spam, ham):
        assert completion.label_probs is not None
        assert sum(completion.label_probs.values()) == pytest.approx(1.0)
        assert completion.text in {"ham", "spam"} and completion.confidence == max(completion.label_probs.values())
        assert completion.tokens_in > 50 and completion.cpu_seconds is not None and completion.cost_usd > 0
    assert spam.label_probs["spam"] > ham.label_probs["spam"]


def test_labels_sharing_a_first_token_are_scored_through_the_trie(local: LocalProvider):
    a, b = "New", "New York"
    assert local.tokenize(" " + a)[0] == local.tokenize(" " + b)[0]
    result = local.complete(Request("The Statue of Liberty stands in the city of", labels=(a, b, "Paris")))
    assert result.label_probs is not None and set(result.label_probs) == {a, b, "Paris"}
    assert result.text == "New York"
    assert sum(result.label_probs.values()) == pytest.approx(1.0)


def test_prompt_tokens_reused_from_the_servers_cache_are_logged(local: LocalProvider):
    prompt = SHOTS + "SMS: See you at the cinema at eight\nLabel:"
    first = local.complete(Request(prompt, max_tokens=2))
    again = local.complete(Request(prompt, max_tokens=2))
    scored = local.complete(Request(prompt, labels=("ham", "spam")))
    # llama-server's timings.cache_n: the prompt tokens a slot already held (not its top-level tokens_cached,
    # which counts the generated tokens too)
    assert first.tokens_cached < first.tokens_in
    for completion in (again, scored):
        assert completion.tokens_cached == completion.tokens_in - completion.extra["prompt_evaluated"] > 0


def test_json_schema_is_enforced_by_the_grammar(local: LocalProvider):
    schema = {"type": "object", "properties": {"entities": {"type": "array", "items": {
        "type": "object", "properties": {"text": {"type": "string"}, "type": {"enum": ["person", "geo-loc"]}},
        "required": ["text", "type"]}}}, "required": ["entities"]}
    result = local.complete(Request("Tweet: Obama flew to Paris today\nEntities as JSON:", max_tokens=60,
                                    json_schema=schema))
    import jsonschema

    jsonschema.validate(json.loads(result.text), schema)


def test_generation_respects_max_tokens_and_stop(local: LocalProvider):
    result = local.complete(Request("Q: What is 2 + 3?\nA:", max_tokens=8, stop=("\n",)))
    assert 1 <= result.tokens_out <= 8 and "\n" not in result.text


def test_generated_answer_probability_only_when_asked(local: LocalProvider):
    plain = local.complete(Request("The capital of France is", max_tokens=4))
    assert plain.answer_prob is None and plain.confidence is None
    sure = local.complete(Request("The capital of France is", max_tokens=4, want_confidence=True))
    assert sure.text == plain.text and 0 < sure.answer_prob <= 1 and sure.confidence == sure.answer_prob
    unsure = local.complete(Request("Zq7 vlorp kex", max_tokens=4, want_confidence=True))
    assert unsure.answer_prob < sure.answer_prob
    streamed = local.stream(Request("The capital of France is", max_tokens=4, want_confidence=True))
    while True:
        try:
            next(streamed)
        except StopIteration as end:
            assert end.value.text == sure.text and end.value.answer_prob == pytest.approx(sure.answer_prob, rel=1e-3)
            break


def test_distilled_student_reads_the_raw_input_through_its_template(local: LocalProvider):
    student = LocalProvider(local.config.model_copy(update={"input_template": "Q: {input}\nA:"}))
    try:
        direct = local.complete(Request("Q: What is 2 + 3?\nA:", max_tokens=6, stop=("\n",)))
        templated = student.complete(Request("a long task prompt with shots", max_tokens=6, stop=("\n",),
                                             input=" What is 2 + 3? "))
        assert templated.text == direct.text and templated.tokens_in == direct.tokens_in
    finally:
        student.close()


def test_server_restarts_after_a_crash(local: LocalProvider):
    assert local.server.process is not None
    local.server.process.kill()
    local.server.process.wait()
    result = local.complete(Request("Q: Capital of France?\nA:", max_tokens=3))
    assert result.tokens_out >= 1


def test_llmbus_run_on_the_sms_example_end_to_end(tmp_path):
    db = tmp_path / "e2e.db"
    env = {**os.environ, "LLMBUS_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "llmbus.cli", "run", str(SMS_TASK), "--limit", "12",
                             "--concurrency", "4", "--db", str(db), "--json"], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["items"] == 12 and summary["errors"] == 0
    assert summary["value"] >= 0.75  # nearest 8-shot label scoring; always-"ham" would be ≈0.87 on big samples
    assert summary["cost_usd"] > 0 and summary["latency_p50_s"] > 0
    shown = json.loads(subprocess.run([sys.executable, "-m", "llmbus.cli", "show", summary["run_id"], "--db",
                                       str(db), "--json"], capture_output=True, text=True, env=env).stdout)
    assert all(0.5 <= c["confidence"] <= 1 for c in shown["calls"])
    # The supervised llama-server went away with the command.
    assert not [p for p in psutil.process_iter(["name", "ppid"])
                if p.info["name"] == "llama-server" and p.info["ppid"] == 1]
