"""Local models: a GGUF served by a supervised llama-server with parallel slots (continuous batching).

- Label sets are scored, not generated: one forward pass returns the next-token distribution, and each
  label gets the probability of its tokens (a small token trie, so labels sharing a first token still work).
  The answer is the most likely label; its probability is the confidence the cascade and active learning use.
- JSON Schemas are enforced by llama.cpp's grammar sampler (`json_schema`).
- Cost is measured CPU-seconds of the server, shared among the requests in flight, at a $/hour price.
- `stream` yields generated text as llama-server produces it; with speculative decoding configured, each
  call records the tokens drafted and accepted (llama-server's `timings.draft_n` / `draft_n_accepted`).
- Each call records `prompt_evaluated`: the prompt tokens the server computed (the rest came from its prefix
  cache). With `context_cache:` the shared prompt prefix survives server restarts (providers/context_cache.py).
- A GGUF that carries a chat template (an instruct model) is called on llama-server's OpenAI-compatible chat
  endpoint, which applies that template (local_chat.py); a base model reads the conversation's transcript.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, replace
from typing import Any

from llmbus.errors import ModelError, ProviderError
from llmbus.providers.base import Completion, Request, normalize_probs, sse_data, whole
from llmbus.providers.context_cache import ContextCache
from llmbus.providers.gguf_meta import chat_template
from llmbus.providers.llamacpp import LlamaServer, check_engine_knobs, engine_args, private_dir, resolve_gguf
from llmbus.providers.local_chat import chat_complete, chat_events, templated
from llmbus.providers.local_config import LocalConfig
from llmbus.providers.openai_wire import text_of
from llmbus.providers.prices import Usage, price_of
from llmbus.settings import config_path

TOP_PROBS = 64  # alternatives llama-server reports per position when scoring labels
FLOOR_PROB = 1e-9  # a label token outside the reported top alternatives


class CpuShare:
    """Splits a process's CPU time among the requests in flight while it was spent (sums stay exact)."""

    def __init__(self, read_cpu: Callable[[], float]):
        self._read = read_cpu
        self._lock = threading.Lock()
        self._last = read_cpu()
        self._open: dict[int, float] = {}
        self._ids = itertools.count()

    def _settle(self) -> None:
        now = self._read()
        delta, self._last = max(0.0, now - self._last), now
        if self._open:
            share = delta / len(self._open)
            for key in self._open:
                self._open[key] += share

    def begin(self) -> int:
        """Mark a request as in flight; returns its handle."""
        with self._lock:
            self._settle()
            handle = next(self._ids)
            self._open[handle] = 0.0
            return handle

    def end(self, handle: int) -> float:
        """CPU-seconds attributed to the request since `begin`."""
        with self._lock:
            self._settle()
            return self._open.pop(handle)


class LocalProvider:
    """A GGUF model behind llama-server on 127.0.0.1."""

    Config = LocalConfig

    def __init__(self, config: LocalConfig, extra_args: tuple[str, ...] = ()):
        assert config.gguf, "local models need a gguf"
        self.name = config.name
        self.config = config
        speculation = config.speculative_args(resolve_gguf(config.draft_gguf) if config.draft_gguf else None)
        knobs = config.engine_knobs()
        gguf = resolve_gguf(config.gguf)
        # an instruct model answers through its own chat template; a distilled student reads its input template
        self.chat = config.input_template is None and chat_template(gguf) is not None
        self.server = LlamaServer(gguf, threads=config.threads, parallel=config.parallel,
                                  ctx_per_slot=config.ctx_per_slot,
                                  extra_args=(*speculation, *engine_args(knobs), *(("--jinja",) if self.chat else ()),
                                              *extra_args))
        self.context: ContextCache | None = None
        directory = config.context_cache_dir()
        if directory is not None:
            self.context = ContextCache(self.server, directory, ctx_per_slot=config.ctx_per_slot,
                                        slots=config.parallel, knobs=knobs,
                                        tokenize=lambda text: self.tokenize(text, special=True))
        self._cpu: CpuShare | None = None
        self._token_cache: dict[str, list[int]] = {}

    def check(self) -> None:
        """Start the server now (model load errors, and engine knobs this llama-server build lacks, surface
        here, before a run begins)."""
        if self._cpu is None:
            check_engine_knobs(self.config.engine_knobs(), f"{config_path()}: models.{self.name}")
            directory = self.config.context_cache_dir()
            if directory is not None:  # saved KV states can quote prompts, like the logs
                try:
                    private_dir(directory)
                except OSError as exc:
                    raise ModelError(f"{config_path()}: models.{self.name}: context_cache: {directory}: "
                                     f"{exc.strerror}") from None
        self.server.ensure_running()
        if self._cpu is None:
            self._cpu = CpuShare(self.server.cpu_seconds)

    def _begin(self, request: Request) -> None:
        """Before a call: the server is up, and after a (re)start holds the saved prompt prefix."""
        self.check()
        if self.context is not None and not self._on_chat_endpoint(request):
            self.context.prepare(request.prompt)

    def _end(self, request: Request) -> None:
        if self.context is not None and not self._on_chat_endpoint(request):
            self.context.learn(request.prompt)

    def _on_chat_endpoint(self, request: Request) -> bool:
        """Generated by llama-server's chat endpoint (an instruct model; label scoring stays on /completion)."""
        return self.chat and not request.labels

    def relays(self, request: Request) -> bool:
        """Whether the gateway may relay llama-server's own response and chunks: a pass-through request to an
        instruct model (its OpenAI-compatible endpoints answer the client's body as it came)."""
        return self.chat and request.wire is not None and not request.labels

    def complete(self, request: Request) -> Completion:
        """Score labels, or generate (grammar-constrained when a JSON Schema is given)."""
        request = self._own_prompt(request)
        self._begin(request)
        assert self._cpu is not None
        handle = self._cpu.begin()
        try:
            if request.labels:
                completion = self._score_labels(request)
            elif self.chat:
                completion = chat_complete(self.server, request)
            else:
                completion = self._generate(request)
        finally:
            cpu = self._cpu.end(handle)
        self._end(request)
        return self._priced(completion, cpu)

    def stream_events(self, request: Request) -> Generator[dict[str, Any], None, Completion]:
        """An instruct model's stream chunks from llama-server's chat endpoint (see `relays`)."""
        self._begin(request)
        assert self._cpu is not None
        handle = self._cpu.begin()
        try:
            completion = yield from chat_events(self.server, request)
        finally:
            cpu = self._cpu.end(handle)
        return self._priced(completion, cpu)

    def stream(self, request: Request) -> Generator[str, None, Completion]:
        """Generated text piece by piece as llama-server decodes it; returns the Completion.
        Label scoring has no text to stream: its one answer comes as one piece."""
        request = self._own_prompt(request)
        if request.labels:
            return (yield from whole(self.complete(request)))
        if self.chat:
            return (yield from text_of("chat", self.stream_events(request)))
        self._begin(request)
        assert self._cpu is not None
        handle = self._cpu.begin()
        pieces: list[str] = []
        probs: list[dict[str, Any]] = []  # with want_confidence each event carries its tokens' probabilities
        final: dict[str, Any] = {}
        try:
            for event in sse_data(self.server.stream_lines("/completion", {**self._body(request), "stream": True})):
                probs.extend(event.get("completion_probabilities") or [])
                piece = str(event.get("content") or "")
                if piece:
                    pieces.append(piece)
                    yield piece
                if event.get("stop"):
                    final = event
        finally:
            cpu = self._cpu.end(handle)
        if not final:
            raise ProviderError("bad_response", "llama-server's stream ended without its final event")
        self._end(request)
        return self._priced(generated("".join(pieces), {**final, "completion_probabilities": probs}), cpu)

    def _own_prompt(self, request: Request) -> Request:
        """A distilled student reads the item's raw input through its own template, not the task prompt."""
        template = self.config.input_template
        if template is None or request.input is None:
            return request
        return replace(request, prompt=template.format(input=request.input.strip()))

    def _priced(self, completion: Completion, cpu: float) -> Completion:
        completion.cpu_seconds = cpu
        completion.cost_usd = price_of(self.config).cost(Usage(cpu_seconds=cpu)) or 0.0
        return completion

    def _body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": request.prompt, "n_predict": request.max_tokens or -1,
                                "stop": list(request.stop), "cache_prompt": True}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        body.update({name: value for name in ("top_p", "seed") if (value := getattr(request, name)) is not None})
        if request.temperature == 0:
            # Greedy as a one-step chain: the default chain (top-k 40, top-p, min-p… over a 262k vocabulary)
            # costs more CPU per token than the batched forward pass at 8 slots, for the same argmax.
            body.update(top_k=1, samplers=["top_k"])
        if request.json_schema is not None:
            body["json_schema"] = request.json_schema
        if request.want_confidence:
            body["n_probs"] = 1  # each generated token's probability under the model (before sampling)
        return body

    def _generate(self, request: Request) -> Completion:
        data = self.server.post("/completion", self._body(request))
        return generated(str(data.get("content", "")), data)

    def _score_labels(self, request: Request) -> Completion:
        labels = request.labels
        assert labels is not None
        # an instruct model's answer follows its own chat template's assistant header
        prompt = templated(self.server, request.messages) if self.chat else request.prompt
        prompt_tokens = self.tokenize(prompt, special=True)
        # The label follows the prompt as the next word: tokenize it with the leading space it will have.
        sep = "" if prompt.endswith((" ", "\n")) else " "
        sequences = {label: self.tokenize(sep + label) for label in labels}
        scores, tokens_in, evaluated = self._walk(prompt_tokens, sequences, 1.0)
        probs = normalize_probs(scores)
        best = max(probs, key=lambda label: probs[label])
        return Completion(text=best, tokens_in=tokens_in, tokens_out=1, label_probs=probs,
                          extra={"prompt_evaluated": evaluated}, tokens_cached=tokens_in - evaluated)

    def _walk(self, prefix: list[int], sequences: dict[str, list[int]],
              mass: float) -> tuple[dict[str, float], int, int]:
        """Probability of each label's token sequence after `prefix`, one server call per trie branch; also the
        prompt tokens sent and those the server evaluated (the rest came from its cache)."""
        top, tokens_in, evaluated = self._next_token_probs(prefix)
        scores: dict[str, float] = {}
        groups: dict[int, dict[str, list[int]]] = {}
        for label, tokens in sequences.items():
            if not tokens:  # this label ended here while a longer one continues: it gets the rest of the mass
                scores[label] = mass * max(FLOOR_PROB, 1 - sum(top.get(t[0], 0) for t in sequences.values() if t))
                continue
            groups.setdefault(tokens[0], {})[label] = tokens[1:]
        for token, members in groups.items():
            p = mass * top.get(token, FLOOR_PROB)
            if len(members) == 1:
                scores[next(iter(members))] = p
            else:
                deeper, used, computed = self._walk([*prefix, token], members, p)
                scores.update(deeper)
                tokens_in += used
                evaluated += computed
        return scores, tokens_in, evaluated

    def _next_token_probs(self, prompt_tokens: list[int]) -> tuple[dict[int, float], int, int]:
        data = self.server.post("/completion", {
            "prompt": prompt_tokens, "n_predict": 1, "n_probs": TOP_PROBS, "temperature": 0.0,
            "cache_prompt": True})
        probs = data.get("completion_probabilities") or []
        if not probs:
            raise ProviderError("bad_response", "llama-server returned no token probabilities")
        sent = int(data.get("tokens_evaluated", len(prompt_tokens)))
        return parse_top_probs(probs[0]), sent, prompt_evaluated(data, sent)

    def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Token ids of `text` under the model's tokenizer (cached for label strings)."""
        if not special and text in self._token_cache:
            return self._token_cache[text]
        data = self.server.post("/tokenize", {"content": text, "add_special": special})
        tokens = [int(t) for t in data.get("tokens", [])]
        if not special:
            self._token_cache[text] = tokens
        return tokens

    def close(self) -> None:
        """Stop the llama-server process."""
        self.server.stop()


def generated(text: str, data: dict[str, Any]) -> Completion:
    """A Completion from llama-server's /completion answer (or a stream's final event)."""
    completion = Completion(text=text, tokens_in=int(data.get("tokens_evaluated", 0)),
                            tokens_out=int(data.get("tokens_predicted", 0)),
                            answer_prob=answer_probability(data.get("completion_probabilities") or []))
    completion.extra["prompt_evaluated"] = prompt_evaluated(data, completion.tokens_in)
    # `timings.cache_n`: prompt tokens reused from the slot's cache (the top-level `tokens_cached` of this
    # llama-server build counts every token the slot holds, generated ones included: not what was reused)
    completion.tokens_cached = int((data.get("timings") or {}).get(
        "cache_n", completion.tokens_in - completion.extra["prompt_evaluated"]))
    timings = data.get("timings") or {}
    if "draft_n" in timings:  # present when the server runs speculative decoding
        completion.extra.update(draft_tokens=int(timings["draft_n"]),
                                draft_accepted=int(timings.get("draft_n_accepted", 0)))
    return completion


def prompt_evaluated(data: dict[str, Any], sent: int) -> int:
    """Prompt tokens llama-server computed for an answer (`timings.prompt_n`); the others came from its cache."""
    return int((data.get("timings") or {}).get("prompt_n", sent))


def answer_probability(entries: list[dict[str, Any]]) -> float | None:
    """Geometric mean probability of the generated tokens (None when the server sent no probabilities)."""
    logprobs = [float(e["logprob"]) for e in entries if "logprob" in e]
    return math.exp(sum(logprobs) / len(logprobs)) if logprobs else None


@dataclass(frozen=True)
class DraftStats:
    """Speculative decoding over a set of calls: tokens drafted, accepted, and the acceptance rate."""

    calls: int
    drafted: int
    accepted: int

    @property
    def acceptance_rate(self) -> float | None:
        """accepted / drafted (None when nothing was drafted)."""
        return self.accepted / self.drafted if self.drafted else None


def draft_stats(metas: Iterable[dict[str, Any] | None]) -> DraftStats:
    """Sum the draft counts in call metas (e.g. `row["meta"] for row in store.iter_calls(run_id)`)."""
    calls = drafted = accepted = 0
    for meta in metas:
        if meta and "draft_tokens" in meta:
            calls += 1
            drafted += int(meta["draft_tokens"])
            accepted += int(meta["draft_accepted"])
    return DraftStats(calls, drafted, accepted)


def parse_top_probs(entry: dict[str, Any]) -> dict[int, float]:
    """{token id: probability} from one `completion_probabilities` entry (logprob or prob format)."""
    out: dict[int, float] = {}
    for alt in entry.get("top_logprobs") or entry.get("top_probs") or entry.get("probs") or []:
        if "logprob" in alt:
            out[int(alt["id"])] = math.exp(float(alt["logprob"]))
        elif "prob" in alt:
            out[int(alt["id"])] = float(alt["prob"])
    return out
