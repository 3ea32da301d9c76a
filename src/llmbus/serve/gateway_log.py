"""The gateway's rows in the call log: one run per served model per gateway start (a served task's run keeps its
spec, so its traffic can be judged, labeled, distilled and replayed later), and the start's `gateway:refused`
run, made with the first refusal. Each answered request is one row, its route in the meta (cache_exact,
cache_semantic, backend, fallback or failed) with its key's name, canary arm and raw input (`input`: what
`distill --from-traffic` learns from and `accept` replays); a refusal's row has its refusal as error_kind.
Rows are queued to a background writer (call_writer.py), off the request path.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from llmbus.errors import GatewayError, ProviderError
from llmbus.providers import Request
from llmbus.providers.prices import Price
from llmbus.serve.call_writer import Arrival, CallWriter
from llmbus.serve.gateway_keys import KeyConfig
from llmbus.serve.gateway_stream import Answer
from llmbus.store import CallRecord, Store, now
from llmbus.task.chat import is_single_user_turn
from llmbus.task.spec import TaskSpec


class TrafficLog:
    """The runs and rows of one gateway start; `log_prompt_chars` caps the prompt (and raw input) a row keeps."""

    def __init__(self, store: Store, specs: Mapping[str, TaskSpec], log_prompt_chars: int | None = None):
        self.store, self.specs, self.log_prompt_chars = store, specs, log_prompt_chars
        self.calls = CallWriter(store)  # the call log, written in batches off the request path
        self.run_ids: dict[str, str] = {}  # served model → its run
        self.refusal_run_id: str | None = None  # made with the first refusal
        self._lock = threading.Lock()

    def open_runs(self, routes: Mapping[str, tuple[str, Price | None]]) -> None:
        """A run per served model: {name: (model reference, price of its route)}."""
        for name, (model, price) in routes.items():
            self.run_ids[name] = self.open_run(f"gateway:{name}", model, self.specs.get(name), price)

    def open_run(self, task: str, model: str, spec: TaskSpec | None = None, price: Price | None = None) -> str:
        """A run for one served model's calls (or the refusals); a served task's run keeps the spec and its
        resolved path."""
        return self.store.create_run(task=task, task_path=str(spec.source or "") if spec else "",
                                     spec_version=spec.version if spec else "-",
                                     spec_json=spec.model_dump_json(by_alias=True) if spec else "{}",
                                     model=model, metric="none", n_planned=0, concurrency=0, price=price)

    def close(self) -> None:
        """Write the rows still queued and mark every run of this start done."""
        self.calls.close()
        for run_id in [*self.run_ids.values(), *([self.refusal_run_id] if self.refusal_run_id else [])]:
            self.store.update_run(run_id, status="done", finished_at=now())

    def kept_prompt(self, prompt: str, what: str = "prompt") -> tuple[str, dict[str, Any]]:
        """The prompt (or raw input) as the call log keeps it (cut to `log_prompt_chars`), and meta saying how
        long it was."""
        limit = self.log_prompt_chars
        if limit is None or len(prompt) <= limit:
            return prompt, {}
        return prompt[:limit], {f"{what}_chars": len(prompt)}

    def record(self, name: str, request: Request, answer: Answer, key: KeyConfig | None, cost: float,
               error: ProviderError | None = None) -> CallRecord:
        """The row of an answered (or failed) request, started when the request came in: `answer.latency_s`
        before now."""
        completion = answer.completion
        prompt, cut = self.kept_prompt(request.prompt)
        meta = {**completion.extra, "route": answer.route, "key": key.name if key else None, **cut}
        if answer.arm is not None:
            meta["arm"] = answer.arm
        if request.input is not None:  # the raw input: what distill --from-traffic and accept read back
            meta["input"], input_cut = self.kept_prompt(request.input, "input")
            meta.update(input_cut)
        finished = now()
        return CallRecord(
            run_id=self.run_ids[name], task=f"gateway:{name}", spec_version=self.specs[name].version
            if name in self.specs else "-", item_id=answer.request_id, model=answer.model, prompt=prompt,
            started_at=finished - timedelta(seconds=answer.latency_s), finished_at=finished,
            raw_output=completion.text,
            messages=None if is_single_user_turn(request.messages) else list(request.messages),
            tool_calls=completion.tool_calls, reasoning=completion.reasoning,
            parsed=None if error else completion.text, confidence=completion.confidence,
            label_probs=completion.label_probs, tokens_in=completion.tokens_in, tokens_out=completion.tokens_out,
            latency_s=answer.latency_s, cost_usd=cost, cpu_s=completion.cpu_seconds,
            cache_hit=answer.route.startswith("cache"), error_kind=error.kind if error else None,
            error=str(error) if error else None, meta=meta, tokens_cached=completion.tokens_cached,
            tokens_reasoning=completion.tokens_reasoning)

    def refuse(self, name: str, error: GatewayError, key: KeyConfig | None, prompt: str = "",
               arrival: Arrival | None = None) -> None:
        """Log a refused request as a row of this start's `gateway:refused` run (route `refused`)."""
        with self._lock:
            if self.refusal_run_id is None:
                self.refusal_run_id = self.open_run("gateway:refused", "-")
        kept, cut = self.kept_prompt(prompt)
        meta = {"route": "refused", "key": key.name if key else None, "status": error.status,
                **({"param": error.param} if error.param else {}), **cut}
        started, finished, latency = (arrival or Arrival.now()).stamps()
        self.calls.write(CallRecord(
            run_id=self.refusal_run_id, task="gateway:refused", spec_version="-", item_id=uuid.uuid4().hex[:16],
            model=name[:200] or "-", prompt=kept, started_at=started, finished_at=finished, latency_s=latency,
            error_kind=error.kind, error=str(error)[:2000], meta=meta))
