"""`head:DIR`: an embedding-head judge (logistic regression on MiniLM features of the input and the
answer) served in-process as a provider. Trained by `quality/finetune.py`; read wherever a judge runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from llmbus.embed import StageCallback, embed
from llmbus.errors import ModelError
from llmbus.providers.base import Completion, Request, label_completion
from llmbus.providers.config import ModelConfig
from llmbus.providers.inprocess import InProcessProvider
from llmbus.train.student import HEAD_FILE, LogisticHead


def head_features(texts: list[str], progress: StageCallback | None = None) -> np.ndarray:
    """MiniLM features of judge inputs: the input's embedding, and for each answer its embedding and its
    elementwise product with the input's (a linear head then learns "right for this input", not only
    "spam-like input" or "answer is spam")."""
    parts = [t.split(" [SEP] ") for t in texts]
    width = max((len(p) for p in parts), default=1)
    parts = [p + [""] * (width - len(p)) for p in parts]
    columns = [embed([p[k] for p in parts], progress=progress, what="answers" if k else "inputs")
               for k in range(width)]
    features = [columns[0]]
    # Products of unit-vector components are ~1/dim: rescale so the regularizer treats them like the rest.
    scale = np.sqrt(columns[0].shape[1])
    for answer in columns[1:]:
        features += [answer, scale * columns[0] * answer]
    return np.hstack(features)


class HeadJudge(LogisticHead):
    """Logistic regression on MiniLM features of the input and the answer."""

    def predict_proba(self, texts: list[str]) -> list[dict[str, float]]:
        """Label probabilities per judge input text."""
        return self.predict_features(head_features(texts)) if texts else []

    @classmethod
    def load(cls, path: Path) -> HeadJudge:
        """Read a folder written by save."""
        if not (path / HEAD_FILE).is_file():
            raise ModelError(f"{path}: not an embedding-head judge (no {HEAD_FILE}); train one with "
                             "`llmbus judge train --kind head`")
        return cls.read(path)


class HeadConfig(ModelConfig):
    """An embedding-head judge folder: `head:DIR` names it (no llmbus.yaml entry needed)."""

    provider: Literal["head"] = "head"
    path: str | None = None  # the head's folder (default: the reference's name)

    hint: ClassVar[str] = "give an embedding-head judge folder as head:/path/to/head"
    cpu_priced: ClassVar[bool] = True

    @classmethod
    def reference(cls, name: str) -> dict[str, Any] | None:
        """`head:DIR` names its folder."""
        return {"path": name} if name else None


class HeadProvider(InProcessProvider[HeadJudge]):
    """`head:DIR` as a provider: label probabilities for `request.input`, in-process."""

    Config = HeadConfig

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        self.path = Path(config.path or config.name.partition(":")[2]).expanduser()

    def load(self) -> HeadJudge:
        """The head in the folder."""
        return HeadJudge.load(self.path)

    def answer(self, model: HeadJudge, texts: list[str], requests: list[Request]) -> list[Completion]:
        """The most likely label and the label distribution, per judge input."""
        completions = [label_completion(probs, request.labels)
                       for probs, request in zip(model.predict_proba(texts), requests, strict=True)]
        for completion in completions:
            completion.tokens_out = 1
        return completions
