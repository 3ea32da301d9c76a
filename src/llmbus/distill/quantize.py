"""GGUF files for students: merge LoRA updates into a base GGUF as F16, then quantize with llama.cpp.

The merged file copies every metadata key of the base (architecture, tokenizer, special tokens) unchanged and
rewrites the tensors: each is dequantized, the LoRA update is added where there is one, and it is stored as F16
(1-D norms and scales stay F32, as llama.cpp's own converter does). `llama-quantize` then makes Q8_0 and
Q4_K_M. When the base is itself quantized (the packaged Gemma is Q4_K_M) the F16 file holds exactly the
dequantized base plus the updates: it cannot be better than its source, only not worse.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmbus.errors import ModelError
from llmbus.extras import require
from llmbus.providers import Completion, Request, open_provider
from llmbus.providers.config import ModelConfig
from llmbus.providers.llamacpp import find_binary
from llmbus.providers.local_config import LocalConfig

QUANT_TYPES = ("Q8_0", "Q4_K_M")


def write_merged_gguf(base: Path, deltas: dict[str, np.ndarray], out: Path) -> Path:
    """Write base + deltas as an F16 GGUF at `out`; every delta must name a tensor of the base."""
    gguf = require("train", "gguf", "merging a LoRA student into a GGUF")
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(base)
    check_deltas(reader, deltas, base)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = gguf.GGUFWriter(partial, arch)
    for key in reader.fields.values():
        # GGUF.* are the reader's virtual fields; the writer adds the architecture itself
        if key.name.startswith("GGUF.") or key.name == gguf.Keys.General.ARCHITECTURE:
            continue
        if key.name == gguf.Keys.General.FILE_TYPE:
            writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
            continue
        value_type = key.types[0]
        sub_type = key.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key.name, key.contents(), value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if tensor.name in deltas:
            weights = weights + deltas[tensor.name]
        writer.add_tensor(tensor.name, weights if weights.ndim == 1 else weights.astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.rename(out)
    return out


def check_deltas(reader: Any, deltas: dict[str, np.ndarray], base: Path) -> None:
    """Every update must name a tensor of the base and match its [out, in] shape (checked before writing)."""
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape)) for t in reader.tensors}
    for name, delta in deltas.items():
        if name not in shapes:
            raise ModelError(f"{base}: no tensor named {name} for a LoRA update")
        if delta.shape != shapes[name]:
            raise ModelError(f"{name}: update of shape {delta.shape} for a tensor of shape {shapes[name]}")


def quantize(source: Path, quant_type: str, out: Path, threads: int = 2) -> Path:
    """Run llama.cpp's `llama-quantize` (e.g. Q8_0, Q4_K_M); errors carry the tool's last output line."""
    binary = find_binary("llama-quantize")
    result = subprocess.run([str(binary), str(source), str(out), quant_type, str(threads)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not out.is_file():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"llama-quantize {quant_type} failed on {source}: {last[0]}")
    return out


@dataclass
class Variant:
    """One GGUF of a student at one precision, with what it scored and cost on held-out items."""

    quant: str  # F16 | Q8_0 | Q4_K_M, or for reference: base (untrained, student prompt), teacher (its own prompts)
    path: str
    size_mb: float
    quality: float = float("nan")  # metric vs the gold answers
    agreement: float = float("nan")  # metric vs the teacher's answers
    latency_ms: float = float("nan")  # median per item, answered one at a time
    tokens_per_s: float = float("nan")  # output tokens per second of request time
    prompt_tokens: float = float("nan")  # mean prompt tokens per item
    cost_per_1k: float = float("nan")
    answers: list[str] = field(default_factory=list, repr=False)
    confidences: list[float] = field(default_factory=list, repr=False)  # geometric mean token probability

    def summary(self) -> dict[str, Any]:
        """Plain dict without the answers (for reports and --json)."""
        return {k: v for k, v in asdict(self).items() if k not in ("answers", "confidences")}


def build_variants(base: Path, deltas: dict[str, np.ndarray], out_dir: Path, name: str,
                   threads: int = 2) -> list[Variant]:
    """The merged F16 GGUF plus its Q8_0 and Q4_K_M quantizations, written under out_dir."""
    f16 = write_merged_gguf(base, deltas, out_dir / f"{name}-f16.gguf")
    paths = {"F16": f16} | {q: quantize(f16, q, out_dir / f"{name}-{q.lower()}.gguf", threads)
                            for q in QUANT_TYPES}
    return [Variant(quant=q, path=str(p), size_mb=p.stat().st_size / 1e6) for q, p in paths.items()]


def local_model(gguf: Path, threads: int = 2) -> LocalConfig:
    """A one-slot local model on a GGUF file: requests answered one at a time, as a latency measurement needs."""
    return LocalConfig(name=f"local:{gguf}", gguf=str(gguf), threads=threads, parallel=1)


def answer_prompts(model: ModelConfig, prompts: list[str], max_tokens: int, stop: tuple[str, ...]
                   ) -> tuple[list[Completion], list[float]]:
    """Greedy answers with their confidence, one request at a time, with each latency."""
    provider = open_provider(model)
    completions, latencies = [], []
    try:
        for prompt in prompts:
            tick = time.perf_counter()
            completions.append(provider.complete(Request(prompt=prompt, max_tokens=max_tokens, stop=stop,
                                                         want_confidence=True)))
            latencies.append(time.perf_counter() - tick)
    finally:
        provider.close()
    return completions, latencies


def measure(variant: Variant, model: ModelConfig, prompts: list[str], max_tokens: int, stop: tuple[str, ...]) -> None:
    """Fill the variant's answers, latency, speed and cost from answering `prompts` (quality is scored by the
    caller, which knows the task's metric)."""
    completions, latencies = answer_prompts(model, prompts, max_tokens, stop)
    variant.answers = [c.text for c in completions]
    variant.confidences = [c.confidence if c.confidence is not None else 0.0 for c in completions]
    variant.latency_ms = 1000 * float(np.median(latencies))
    variant.tokens_per_s = sum(c.tokens_out for c in completions) / sum(latencies) if latencies else float("nan")
    variant.prompt_tokens = float(np.mean([c.tokens_in for c in completions]))
    variant.cost_per_1k = 1000 * float(np.mean([c.cost_usd for c in completions]))
