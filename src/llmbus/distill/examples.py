"""What distillation trains on: one example per item, shared by the recipe code and its coverage checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Example:
    """One distillation example: the item's input, the teacher's answer, the gold answer, and its split."""

    id: str
    input: str
    teacher: Any
    gold: Any
    teacher_confidence: float | None
    split: str
    tokens: list[str] | None = None
    teacher_text: str | None = None  # the teacher's raw output: what a generative student learns to write
