"""LoRA students for generate tasks: the packaged Gemma 3 270M, loaded by transformers from its GGUF, taught the
teacher's answers with low-rank adapters (peft), and merged back into GGUF tensors (see quantize.py).

The student reads only the item's raw input through a short template (`STUDENT_TEMPLATE`): no instructions and
no few-shot block, so every request is a fraction of the teacher's prompt.
Training computes the 262k-vocabulary output head only at answer positions; on 2 CPU cores that head is most
of the cost of a full forward pass.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.embed import torch_for_training
from llmbus.errors import ModelError
from llmbus.extras import require
from llmbus.settings import llmbus_home

STUDENT_TEMPLATE = "Input: {input}\nOutput:"

# Hugging Face projection names → llama.cpp GGUF tensor names (Gemma 3 blocks).
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_LAYER = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)$")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA knobs; the defaults teach a few hundred short answers in minutes on 2 cores."""

    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = tuple(GGUF_NAMES)
    epochs: int = 3
    max_steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_len: int = 128
    threads: int = 2
    seed: int = 0


@dataclass
class TrainResult:
    """What training did: steps, first/last loss, seconds."""

    steps: int
    first_loss: float
    last_loss: float
    seconds: float


def student_prompt(raw_input: str) -> str:
    """The prompt a LoRA student is trained and served with."""
    return STUDENT_TEMPLATE.format(input=raw_input.strip())


def hf_cache_dir(gguf_path: Path) -> Path:
    """Where the dequantized Hugging Face copy of a GGUF is kept (reloads in seconds instead of ~50 s)."""
    return llmbus_home() / "hf" / f"{gguf_path.stem}-{gguf_path.stat().st_size}"


def load_base(gguf_path: Path, threads: int = 2) -> tuple[Any, Any]:
    """(model, tokenizer) of a GGUF in float32 via transformers; the first load is cached as a HF folder."""
    torch = torch_for_training(threads, "a LoRA student's base model")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = hf_cache_dir(gguf_path)
    if not (cache / "config.json").is_file():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                         dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        except (OSError, ValueError) as exc:
            raise ModelError(f"{gguf_path}: transformers cannot load this GGUF: {exc}") from None
        # save_pretrained refuses a GGUF-loaded model while it still looks quantized
        model.hf_quantizer = None  # type: ignore[assignment]
        del model.config.quantization_config
        partial = cache.with_name(cache.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(cache)
    model = AutoModelForCausalLM.from_pretrained(str(cache), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(cache))
    return model, tokenizer


def encode_pair(tokenizer: Any, prompt: str, answer: str, max_len: int) -> tuple[list[int], int]:
    """Token ids of prompt + answer + EOS, and how many belong to the prompt (long prompts lose their start)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=True).input_ids
    answer_ids = [*tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    answer_ids = answer_ids[: max_len // 2]
    keep = max(1, max_len - len(answer_ids))
    if len(prompt_ids) > keep:
        prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - keep + 1:]  # keep BOS, drop the oldest text
    return prompt_ids + answer_ids, len(prompt_ids)


def train_lora(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], settings: LoraSettings = LoraSettings(),
               on_step: Callable[[int, int, float], None] | None = None) -> tuple[Any, TrainResult]:
    """Fit LoRA adapters on (prompt, answer) pairs; returns the peft model and the loss curve's ends."""
    if not pairs:
        raise ModelError("LoRA training needs at least one (prompt, answer) pair")
    torch = torch_for_training(settings.threads, "LoRA training")
    require("train", "peft", "LoRA training")
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)
    # peft calls a transformers property that transformers 5 marks deprecated: noise on the user's console
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, target_modules=list(settings.targets),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    causal_lm = peft_model.get_base_model()
    encoded = [encode_pair(tokenizer, p, a, settings.max_len) for p, a in pairs]
    batches_per_epoch = (len(encoded) + settings.batch_size - 1) // settings.batch_size
    total = min(settings.max_steps, settings.epochs * batches_per_epoch)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad],
                                  lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(1, total))
    rng = random.Random(settings.seed)
    order: list[int] = []
    losses: list[float] = []
    tick = time.perf_counter()
    peft_model.train()
    for step in range(total):
        if len(order) < settings.batch_size:
            fresh = list(range(len(encoded)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = [encoded[i] for i in order[: settings.batch_size]], order[settings.batch_size:]
        loss = _answer_loss(torch, causal_lm, batch, tokenizer.pad_token_id or 0)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if on_step:
            on_step(step + 1, total, losses[-1])
    peft_model.eval()
    return peft_model, TrainResult(steps=total, first_loss=losses[0], last_loss=float(np.mean(losses[-3:])),
                                   seconds=time.perf_counter() - tick)


def _answer_loss(torch: Any, causal_lm: Any, batch: list[tuple[list[int], int]], pad_id: int) -> Any:
    """Cross-entropy on answer tokens only, with the output head applied only at those positions."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (ids, n_prompt) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        for pos in range(n_prompt - 1, len(ids) - 1):  # position pos predicts token pos + 1
            rows.append(row)
            cols.append(pos)
            targets.append(ids[pos + 1])
    hidden = causal_lm.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
    logits = causal_lm.lm_head(hidden[torch.tensor(rows), torch.tensor(cols)])
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), torch.tensor(targets))


def lora_deltas(peft_model: Any) -> dict[str, np.ndarray]:
    """Merged weight updates (scale · B·A) keyed by GGUF tensor name, as float32 [out, in] arrays."""
    from peft.tuners.lora import Linear as LoraLinear

    deltas = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLinear):
            continue
        match = _LAYER.search(name)
        if match is None or match.group(2) not in GGUF_NAMES:
            raise ModelError(f"LoRA module {name} has no GGUF tensor name (targets: {', '.join(GGUF_NAMES)})")
        gguf_name = f"blk.{match.group(1)}.{GGUF_NAMES[match.group(2)]}.weight"
        deltas[gguf_name] = module.get_delta_weight("default").detach().float().numpy()
    return deltas


def generate(peft_model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 32) -> str:
    """Greedy answer from the (unmerged) peft model: the reference the GGUF export is checked against."""
    torch = torch_for_training(torch_threads())
    ids = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = peft_model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                  eos_token_id=tokenizer.eos_token_id)
    return str(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))


def torch_threads() -> int:
    """Threads for torch outside training: $LLMBUS_THREADS, default 2."""
    return int(os.environ.get("LLMBUS_THREADS", "2"))
