"""The output contract of a task spec (its `output:` section): a label set, a JSON Schema or free text, and how
labels are shown to the model. Its own module so that task kinds (task/kinds.py), which read it, sit below the
spec that names its kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A spec section: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class OutputSpec(Strict):
    """What the answer must look like: one of a label set, a JSON Schema, or free text."""

    labels: list[str] | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    answer_pattern: str | None = None  # generate: regex whose first group is the answer
    # classify: how labels are shown to the model, shown text → label ({Junk: spam}); labels not named show as
    # themselves. Few-shot examples show it, label scoring scores it, and answers are parsed back to the label.
    verbalizer: dict[str, str] | None = None
    # classify: content-free calibration (Zhao et al. 2021): the item's input is replaced by each of these texts
    # ("N/A"), and the label probabilities are divided by their mean distribution before the answer is taken
    calibrate: list[str] | None = None

    @model_validator(mode="after")
    def _one_contract(self) -> OutputSpec:
        if self.labels is not None and self.json_schema is not None:
            raise ValueError("give either labels or schema, not both")
        if self.labels is not None and len(set(self.labels)) < 2:
            raise ValueError("labels needs at least two distinct labels")
        if (self.verbalizer is not None or self.calibrate is not None) and self.labels is None:
            raise ValueError("verbalizer and calibrate need a label set (output.labels)")
        if self.verbalizer is not None:
            _check_verbalizer(self.verbalizer, self.labels or [])
        if self.calibrate is not None and not self.calibrate:
            raise ValueError("calibrate lists at least one content-free input, e.g. [\"N/A\"]")
        return self

    def shown(self, label: str) -> str:
        """How a label is shown to the model (its verbalizer text, else the label itself)."""
        for text, target in (self.verbalizer or {}).items():
            if target == label:
                return text
        return label

    def shown_labels(self) -> list[str]:
        """The label set as the model sees it, in output.labels order."""
        return [self.shown(label) for label in self.labels or []]

    def label_of(self, shown: str) -> str:
        """The label a shown text stands for (the text itself when it is not a verbalizer entry)."""
        return (self.verbalizer or {}).get(shown, shown)


def _check_verbalizer(verbalizer: dict[str, str], labels: list[str]) -> None:
    targets = list(verbalizer.values())
    unknown = [t for t in targets if t not in labels]
    if unknown:
        raise ValueError(f"verbalizer maps to {unknown[0]!r}, which is not one of output.labels")
    if len(set(targets)) != len(targets):
        raise ValueError("verbalizer: each label is shown one way (two texts map to the same label)")
    shown = {text for text in verbalizer} | {label for label in labels if label not in targets}
    if any(not text.strip() for text in verbalizer) or len(shown) != len(labels):
        raise ValueError("verbalizer: every label needs its own non-empty shown text")
