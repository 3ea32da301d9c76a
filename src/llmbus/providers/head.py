"""`head:DIR`: an embedding-head judge (logistic regression on MiniLM features of the input and the
answer) served in-process as a provider. Trained by `quality/finetune.py`; read wherever a judge runs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from llmbus.embed import StageCallback, embed
from llmbus.errors import ModelError
from llmbus.providers.base import Completion, Request, label_completion
from llmbus.settings import USD_PER_HOUR
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


class HeadProvider:
    """`head:DIR` as a provider: label probabilities for `request.input`, in-process."""

    reads_prompt = False  # the judge input only: runs skip rendering prompts and selecting shots for it

    def __init__(self, path: str, usd_per_hour: float = USD_PER_HOUR):
        self.name = f"head:{path}"
        self.path = Path(path).expanduser()
        self.usd_per_hour = usd_per_hour
        self._head: HeadJudge | None = None
        self._lock = threading.Lock()  # one embedding batch at a time: torch already uses every thread

    def check(self) -> None:
        """Load the head now (a bad folder fails before the judge run starts)."""
        if self._head is None:
            self._head = HeadJudge.load(self.path)

    batch_size = 64  # a judge run or a run hands this many inputs to one embedding pass

    def complete(self, request: Request) -> Completion:
        """The most likely label and the label distribution."""
        return self.complete_batch([request])[0]

    def complete_batch(self, requests: list[Request]) -> list[Completion]:
        """`complete` for many requests in one embedding pass; each is charged its share of the CPU time."""
        self.check()
        assert self._head is not None
        texts = [request.input if request.input is not None else request.prompt for request in requests]
        with self._lock:
            tick = time.process_time()
            all_probs = self._head.predict_proba(texts)
            cpu = (time.process_time() - tick) / len(requests)
        completions = []
        for probs, request, text in zip(all_probs, requests, texts, strict=True):
            completion = label_completion(probs, request.labels)
            completion.tokens_in, completion.tokens_out = len(text.split()), 1
            completion.cpu_seconds, completion.cost_usd = cpu, cpu * self.usd_per_hour / 3600
            completions.append(completion)
        return completions

    def close(self) -> None:
        """Drop the head."""
        self._head = None
