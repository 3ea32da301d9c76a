"""The shipped fake: `ScriptedProvider` answers from a list or a function and records every request, for tests
of code that calls models where no HTTP behaviour is under test (like httpx's MockTransport).

    from llmbus.testing import ScriptedProvider
    provider = ScriptedProvider(["spam", "ham"])            # answers in order, then the last one again
    provider = ScriptedProvider(lambda r: "spam" if "win" in r.prompt else "ham")
    run = project.run(task, "scripted:test", provider=provider)
    provider.requests[0].messages                          # what the first call sent
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from llmbus.providers.base import Completion, Request, label_completion

Answer = str | Completion


class ScriptedProvider:
    """A provider whose answers are scripted: a list (given in order; the last repeats) or a function of the
    request. A label request's answer gets all the probability; token counts are word counts."""

    def __init__(self, answers: Sequence[Answer] | Callable[[Request], Answer], name: str = "scripted:test",
                 cost_usd: float = 0.0):
        if not callable(answers) and not answers:
            raise ValueError("ScriptedProvider needs at least one answer (or a function of the request)")
        self.name = name
        self.answers = answers
        self.cost_usd = cost_usd  # what each call costs
        self.requests: list[Request] = []  # every request, in the order they came
        self._lock = threading.Lock()

    def complete(self, request: Request) -> Completion:
        """The next scripted answer to `request` (recorded in `requests`)."""
        with self._lock:
            self.requests.append(request)
            position = len(self.requests) - 1
        answers = self.answers
        answer = answers(request) if callable(answers) else answers[min(position, len(answers) - 1)]
        if isinstance(answer, Completion):
            return answer
        completion = Completion(text=answer)
        if request.labels and answer in request.labels:
            completion = label_completion({answer: 1.0}, request.labels)
        completion.tokens_in, completion.tokens_out = len(request.prompt.split()), len(answer.split())
        completion.cost_usd = self.cost_usd
        return completion

    def check(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        """Nothing to release."""
