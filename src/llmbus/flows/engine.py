"""Workflows in plain Python: a flow is a function of (ctx, input); each `ctx.<kind>(key, …)` call is a step.

Branching is ordinary `if`. Every step's input, output, cost and timing is written to the store before the
next step runs, keyed by (flow run, step key). Resuming re-executes the function from the top and replays
recorded outputs, so a run paused for human review, failed, or killed continues exactly where it stopped
without repeating paid calls. Step kinds: llm / task (a task spec), retrieval, tool, guardrail, review, agent.
Each llm and task step's model call is also a row of the one call log (a run named flow:NAME per invocation,
see `FlowCalls`), linked from its step row by `call_id`; a task step's row carries the task and spec version.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmbus.errors import DataError, FlowInterrupted, LlmbusError, ProviderError, StepFailed
from llmbus.flows.agent import AgentResult, Budget, run_agent
from llmbus.flows.guardrail import Guardrail, Verdict
from llmbus.flows.icl import ExamplePool
from llmbus.flows.log import FlowCalls, FlowLog, call_item_id, dumps, process_id
from llmbus.flows.retrieval import Index, Source
from llmbus.flows.review import Decision, ReviewQueue
from llmbus.flows.steps import FlowPaused, LlmAnswer, StepResult
from llmbus.flows.tools import Tool, call_tool, tool
from llmbus.providers import Completion, Provider, Request, open_provider
from llmbus.run.adapter import build_request
from llmbus.settings import DEFAULT_MODEL
from llmbus.store import CallRecord, Store, now
from llmbus.task.chat import is_single_user_turn
from llmbus.task.output import parse_output
from llmbus.task.render import render
from llmbus.task.spec import TaskSpec, read_utf8
from llmbus.telemetry import observe_call, set_attributes, span

logger = logging.getLogger(__name__)  # `log` names the flow log in this module


@dataclass(frozen=True)
class Flow:
    """A named flow function, plus an optional `setup(store) -> resources` run once per process."""

    name: str
    fn: Callable[[FlowContext, Any], Any]
    path: str = ""
    setup: Callable[[Store], dict[str, Any]] | None = None


def flow(name: str, setup: Callable[[Store], dict[str, Any]] | None = None) -> Callable[[Callable[..., Any]], Flow]:
    """Decorator: `@flow("support")` turns `def support(ctx, input)` into a Flow."""

    def wrap(fn: Callable[..., Any]) -> Flow:
        source = getattr(sys.modules.get(fn.__module__), "__file__", None)
        return Flow(name=name, fn=fn, path=str(Path(source).resolve()) if source else "", setup=setup)

    return wrap


def load_flow(path: str | Path, name: str | None = None) -> Flow:
    """The Flow defined in a Python file (the one named `name` when it defines several)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise LlmbusError(f"{path}: flow file not found")
    module_name = f"llmbus_flow_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LlmbusError(f"{path}: cannot load flow: {exc.__class__.__name__}: {exc}") from None
    flows = [v for v in vars(module).values() if isinstance(v, Flow) and name in (None, v.name)]
    if len(flows) != 1:
        raise LlmbusError(f"{path}: expected one @flow function{f' named {name!r}' if name else ''}, "
                           f"found {len(flows)}")
    return Flow(flows[0].name, flows[0].fn, str(path), flows[0].setup)


@dataclass(frozen=True)
class FlowSettings:
    """What a run needs besides its input; stored on the run so resume uses the same."""

    model: str = DEFAULT_MODEL
    tool_timeout_s: float = 30.0


@dataclass
class FlowOutcome:
    """Where a run stands after executing: done, waiting_review, failed or interrupted."""

    run_id: str
    status: str
    output: Any = None
    error: str | None = None


class FlowContext:
    """Handed to the flow function: every method is a durable step named by `key`."""

    def __init__(self, store: Store, run_id: str, settings: FlowSettings, resources: dict[str, Any],
                 calls: FlowCalls):
        self.store, self.run_id, self.settings, self.resources = store, run_id, settings, resources
        self.log = FlowLog(store)
        self.calls = calls
        self._providers: dict[str, Provider] = {}
        self._seen: set[str] = set()
        self._call_ids: dict[str, int | None] = {}  # step key → its row in `calls`, for the step row

    # the durable core ----------------------------------------------------------------------------
    def step(self, key: str, kind: str, body: Callable[[], StepResult], step_input: Any = None) -> Any:
        """Run `body` once per run: a recorded done step returns its stored output without running."""
        if key in self._seen:
            raise LlmbusError(f"flow step key {key!r} is used twice in one run: give each step its own key")
        self._seen.add(key)
        recorded = self.log.get_step(self.run_id, key)
        if recorded is not None and recorded["status"] == "done":
            return recorded["output"]
        started, tick = now(), time.perf_counter()
        self.log.write_step(self.run_id, key, kind=kind, status="running", input_json=step_input,
                            started_at=started, finished_at=None, error_kind=None, error=None)
        try:
            with span(f"llmbus step {key}", {"llmbus.flow_run_id": self.run_id, "llmbus.flow_step": key,
                                              "llmbus.flow_step_kind": kind}, expected=(FlowPaused,)):
                result = body()
        except FlowPaused:
            self.log.write_step(self.run_id, key, status="waiting", latency_s=time.perf_counter() - tick)
            raise
        except Exception as exc:
            kind_of = getattr(exc, "kind", None) or exc.__class__.__name__
            self.log.write_step(self.run_id, key, status="failed", error_kind=str(kind_of)[:40],
                                error=f"{exc.__class__.__name__}: {exc}", finished_at=now(),
                                latency_s=time.perf_counter() - tick, call_id=self._call_ids.pop(key, None))
            raise StepFailed(key, str(kind_of), str(exc)) from exc
        self.log.write_step(self.run_id, key, status="done", output_json=result.output, detail_json=result.detail,
                            model=result.model, tokens_in=result.tokens_in, tokens_out=result.tokens_out,
                            cost_usd=result.cost_usd, finished_at=now(), latency_s=time.perf_counter() - tick,
                            call_id=self._call_ids.pop(key, None))
        return result.output

    def provider(self, model: str | None = None) -> Provider:
        """The provider for a model (the run's by default), opened once per execution."""
        model = model or self.settings.model
        if model not in self._providers:
            self._providers[model] = open_provider(model)
        return self._providers[model]

    def close(self) -> None:
        """Release providers opened by this execution."""
        for provider in self._providers.values():
            provider.close()
        self._providers.clear()

    # step kinds ----------------------------------------------------------------------------------
    def llm(self, key: str, prompt: str | None = None, *, messages: list[dict[str, Any]] | None = None,
            model: str | None = None, max_tokens: int = 64, stop: tuple[str, ...] = (),
            labels: tuple[str, ...] | None = None, temperature: float = 0.0,
            json_schema: dict[str, Any] | None = None, tools: list[dict[str, Any]] | None = None) -> LlmAnswer:
        """One model call on a prompt or on chat turns (`messages`, OpenAI-style); the prompt, raw answer, tool
        calls, tokens and cost go on the step row."""
        if (prompt is None) == (messages is None):
            raise LlmbusError(f"step {key!r}: give ctx.llm a prompt or messages (one of them)")
        request = Request(prompt=prompt or "", messages=tuple(messages or ()), max_tokens=max_tokens,
                          temperature=temperature, stop=stop, labels=labels, json_schema=json_schema,
                          tools=tuple(tools) if tools else None)
        ref = model or self.settings.model
        given: dict[str, Any] = {"prompt": prompt} if messages is None else {"messages": messages}
        out = self.step(key, "llm", lambda: self._complete(key, ref, request), {**given, "model": ref})
        return LlmAnswer(out["text"], out.get("label_probs"), out.get("tool_calls"))

    def _complete(self, key: str, ref: str, request: Request, spec: TaskSpec | None = None) -> StepResult:
        """One model call, logged as a row of `calls` before the step row; a task step's answer is parsed by
        its output contract, and a broken answer is logged, then fails the step."""
        record = CallRecord(run_id="", task=spec.name if spec else f"flow:{self.calls.flow}",
                            spec_version=spec.version if spec else "-", item_id=call_item_id(self.run_id, key),
                            model=ref, prompt=request.prompt, started_at=now(), finished_at=now(),
                            messages=None if is_single_user_turn(request.messages) else list(request.messages))
        meta: dict[str, Any] = {"flow_run": self.run_id, "step": key}
        if request.input is not None:
            meta["input"] = request.input
        tick = time.perf_counter()
        try:
            completion = self.provider(ref).complete(request)
        except ProviderError as exc:
            record.error_kind, record.error, record.meta = exc.kind, str(exc), meta
            self._log_call(key, record, tick, request)
            raise
        parsed = parse_output(spec, completion.text) if spec else None
        record.raw_output, record.parsed = completion.text, completion.text if parsed is None else parsed.value
        record.confidence, record.label_probs = completion.confidence, completion.label_probs
        record.tool_calls, record.reasoning = completion.tool_calls, completion.reasoning
        record.tokens_in, record.tokens_out = completion.tokens_in, completion.tokens_out
        record.tokens_cached, record.tokens_reasoning = completion.tokens_cached, completion.tokens_reasoning
        record.cost_usd, record.cpu_s = completion.cost_usd, completion.cpu_seconds
        record.meta = {**completion.extra, **meta}
        if parsed is not None and parsed.error_kind:
            record.error_kind, record.error = parsed.error_kind, parsed.error
        self._log_call(key, record, tick, request, completion)
        if spec is not None and parsed is not None and parsed.error_kind:
            raise ProviderError(parsed.error_kind, f"{spec.name}: {parsed.error}")
        detail = {"prompt": request.prompt, "cpu_s": completion.cpu_seconds}
        output: Any = {"text": completion.text, "label_probs": completion.label_probs,
                       **({"tool_calls": completion.tool_calls} if completion.tool_calls else {})}
        if spec is not None and parsed is not None:
            output = parsed.value
            detail.update(task=spec.name, spec_version=spec.version, raw=completion.text)
        return StepResult(output, detail=detail, model=ref, tokens_in=completion.tokens_in,
                          tokens_out=completion.tokens_out, cost_usd=completion.cost_usd)

    def _log_call(self, key: str, record: CallRecord, tick: float, request: Request | None = None,
                  completion: Completion | None = None, ref: str | None = None) -> None:
        record.latency_s, record.finished_at = time.perf_counter() - tick, now()
        self._call_ids[key] = self.calls.record(record)
        observe_call(record, request, completion, self._providers.get(ref or record.model))

    def task(self, key: str, spec: TaskSpec, fields: dict[str, Any],
             examples: list[dict[str, Any]] | None = None, *, model: str | None = None) -> Any:
        """A task-spec step: the spec's prompt over `fields` and examples, its output contract enforced."""
        rendered = render(spec, fields, examples or [])
        raw_input = str(fields[spec.data.input]) if spec.data.input in fields else None  # what students read
        request = build_request(spec, rendered, raw_input)
        ref = model or self.settings.model
        return self.step(key, "llm", lambda: self._complete(key, ref, request, spec),
                         {"task": spec.name, "fields": fields, "model": ref})

    def tool(self, key: str, fn: Callable[..., Any] | Tool, timeout_s: float | None = None, **kwargs: Any) -> Any:
        """A Python function as a step, in a child process killed after `timeout_s`."""
        t = fn if isinstance(fn, Tool) else tool(fn)
        limit = timeout_s or self.settings.tool_timeout_s
        return self.step(key, "tool", lambda: StepResult(call_tool(t, kwargs, limit), {"tool": t.name}),
                         {"tool": t.name, "args": kwargs})

    def retrieve(self, key: str, index: Index, query: str, k: int = 4) -> list[Source]:
        """Top-k chunks for a query; the sources are kept on the step row."""
        out = self.step(key, "retrieval", lambda: StepResult([asdict(s) for s in index.search(query, k)],
                                                             {"corpus": index.corpus}), {"query": query, "k": k})
        return [Source(**s) for s in out]

    def examples(self, key: str, pool: ExamplePool, text: str, k: int = 3) -> list[dict[str, Any]]:
        """The k nearest solved examples (approved answers) for in-context learning."""
        return list(self.step(key, "retrieval", lambda: StepResult(pool.nearest(text, k), {"pool": pool.name}),
                              {"text": text, "k": k, "pool": pool.name}))

    def guardrail(self, key: str, guard: Guardrail, answer: str, sources: list[Source],
                  question: str = "") -> Verdict:
        """Check an answer: tier 1 rules and similarity, tier 2 LLM only when unsure; the verdict is logged."""
        ref = guard.model or self.settings.model

        def body() -> StepResult:
            verdict = guard.check(answer, sources, question, provider=lambda: self.provider(ref))
            return StepResult(asdict(verdict), {"reasons": verdict.reasons}, model=ref if verdict.tier == 2 else None,
                              tokens_in=verdict.tokens_in, cost_usd=verdict.cost_usd)

        out = self.step(key, "guardrail", body, {"answer": answer, "question": question,
                                                  "sources": [s.doc for s in sources]})
        return Verdict(**out)

    def review(self, key: str, payload: dict[str, Any], schema: dict[str, Any] | None = None) -> Decision:
        """Ask a human: queues the item (input, sources, draft, reasons) and pauses the run until decided."""
        queue = ReviewQueue(self.store)

        def body() -> StepResult:
            item = queue.for_step(self.run_id, key) or queue.create(self.run_id, key, payload, schema)
            if item["status"] == "pending":
                raise FlowPaused(key)
            decision = queue.decision(item)
            return StepResult(asdict(decision), {"review_item": item["id"]})

        return Decision(**self.step(key, "review", body, payload))

    def agent(self, key: str, goal: str, tools: list[Tool], budget: Budget | None = None,
              model: str | None = None) -> AgentResult:
        """A bounded tool-calling loop (only where chosen): every tool call is its own logged step."""
        ref = model or self.settings.model

        def body() -> StepResult:
            result = run_agent(self, key, goal, tools, budget or Budget(), ref)
            # Tokens and cost stay on the turn steps (summing them here too would count them twice).
            return StepResult(asdict(result), {"stop_reason": result.stop_reason}, model=ref)

        return AgentResult(**self.step(key, "agent", body, {"goal": goal, "tools": [t.name for t in tools]}))


def read_inputs(input_json: str | None, dataset: str | None) -> list[Any]:
    """Inputs from --input JSON or a --dataset JSONL file; bad JSON names the option or file:line."""
    if (input_json is None) == (dataset is None):
        raise LlmbusError("give exactly one of --input JSON or --dataset FILE.jsonl")
    if input_json is not None:
        try:
            return [json.loads(input_json)]
        except json.JSONDecodeError as exc:
            raise LlmbusError(f"--input: not JSON: {exc.msg} at column {exc.colno}") from None
    path = Path(str(dataset))
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found")
    values = []
    for number, line in enumerate(read_utf8(path).splitlines(), 1):
        if line.strip():
            try:
                values.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not JSON: {exc.msg} at column {exc.colno}") from None
    if not values:
        raise DataError(f"{path}: no inputs")
    return values


# the engine --------------------------------------------------------------------------------------
def start(store: Store, flow_def: Flow, value: Any, settings: FlowSettings | None = None,
          resources: dict[str, Any] | None = None, calls: FlowCalls | None = None) -> FlowOutcome:
    """Create a run for one input and execute it (its model calls go to `calls`, else a run of their own)."""
    settings = settings or FlowSettings()
    run_id = FlowLog(store).create_run(flow_def.name, flow_def.path, value, asdict(settings))
    resources = resources if resources is not None else setup_resources(store, flow_def)
    return execute(store, run_id, flow_def, resources, calls)


def run_many(store: Store, flow_def: Flow, values: list[Any], settings: FlowSettings | None = None,
             on_done: Callable[[FlowOutcome], None] | None = None) -> list[FlowOutcome]:
    """One run per input, sharing the flow's resources (set up once) and one run of model calls."""
    resources = setup_resources(store, flow_def)
    calls = FlowCalls(store, flow_def.name, flow_def.path, (settings or FlowSettings()).model)
    outcomes = []
    try:
        for value in values:
            outcomes.append(start(store, flow_def, value, settings, resources, calls))
            if on_done:
                on_done(outcomes[-1])
    finally:
        calls.close()
    return outcomes


def resume(store: Store, run_id: str, flow_def: Flow | None = None,
           resources: dict[str, Any] | None = None) -> FlowOutcome:
    """Continue a paused, failed or killed run from its recorded steps."""
    run = FlowLog(store).get_run(run_id)
    if run["status"] == "done":
        return FlowOutcome(run["id"], "done", run["output"])
    flow_def = flow_def or load_flow(run["flow_path"], run["flow"])
    if flow_def.name != run["flow"]:
        raise LlmbusError(f"flow run {run['id']} is of flow {run['flow']!r}, not {flow_def.name!r}")
    resources = resources if resources is not None else setup_resources(store, flow_def)
    return execute(store, run["id"], flow_def, resources)


def setup_resources(store: Store, flow_def: Flow) -> dict[str, Any]:
    """The flow's shared resources (indexes, pools), built by its setup function."""
    return flow_def.setup(store) if flow_def.setup else {}


def execute(store: Store, run_id: str, flow_def: Flow, resources: dict[str, Any],
            calls: FlowCalls | None = None) -> FlowOutcome:
    """Execute (or replay and continue) one run; its final state is written before returning. Its model calls
    go to `calls` (shared by a dataset's runs), else to a run of calls made for this execution."""
    log = FlowLog(store)
    run = log.get_run(run_id)
    log.acquire(run_id, process_id())
    log.update_run(run_id, status="running", error=None)
    settings = FlowSettings(**run["settings"])
    own_calls = calls is None
    calls = calls or FlowCalls(store, flow_def.name, flow_def.path, settings.model)
    ctx = FlowContext(store, run_id, settings, resources, calls)
    outcome = FlowOutcome(run_id, "running")
    logger.info("flow run %s: %s", run_id, flow_def.name)
    try:
        with span(f"llmbus flow {flow_def.name}", {"llmbus.flow": flow_def.name, "llmbus.flow_run_id": run_id,
                                                    "llmbus.model": settings.model},
                  expected=(FlowPaused,)) as current:
            outcome.output = flow_def.fn(ctx, run["input"])
            outcome.status = "done"
            set_attributes(current, {"llmbus.flow_status": "done"})
    except FlowPaused:
        outcome.status = "waiting_review"
    except KeyboardInterrupt:
        log.update_run(run_id, status="interrupted", error="interrupted")
        raise FlowInterrupted(f"flow run {run_id} interrupted; continue it with: llmbus flow resume {run_id}") \
            from None
    except StepFailed as exc:
        outcome.status, outcome.error = "failed", str(exc)
    except LlmbusError as exc:
        outcome.status, outcome.error = "failed", str(exc)
    except Exception as exc:  # the flow body itself raised outside any step
        outcome.status, outcome.error = "failed", f"flow raised {exc.__class__.__name__}: {exc}"
    finally:
        ctx.close()
        log.release(run_id)
        if own_calls:
            calls.close()
    log.update_run(run_id, status=outcome.status, error=outcome.error,
                   output_json=dumps(outcome.output) if outcome.status == "done" else None)
    logger.info("flow run %s %s%s", run_id, outcome.status, f": {outcome.error}" if outcome.error else "")
    return outcome
