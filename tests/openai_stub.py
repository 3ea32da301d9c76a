"""An OpenAI-compatible stub server on 127.0.0.1 that injects faults: the only fake in the test suite.

The answer is decided by the prompt's last line: it contains "spam" → "spam", else "ham"; extraction prompts
get a JSON object. Fault markers in the prompt's last line fire on the first attempts of that prompt:
  FAIL500   → HTTP 500 twice, then success
  ALWAYS500 → HTTP 500 every time
  RATE429   → HTTP 429 with Retry-After: 0.05 once
  SLOW      → sleeps longer than the client timeout once
  BADJSON   → a body that is not JSON once
  NONSENSE  → a 200 answer that is not one of the labels / not valid JSON (every time)
  AGENT-CALL / AGENT-LOOP → on an agent prompt (last line "Next:"), see agent_turn
  a prompt ending "Instruction:" or "Words:" (an optimizer's proposer request) → see proposal
  a prompt ending "Topic:" (examples/topics) → the topic of the most similar in-prompt example (nearest_topic)
  FABRICATED → on a guardrail prompt (last line "Verdict:"), the label "unsupported" instead of "supported"
  a prompt ending "Grade:" (a pass/fail judge) → "fail" when the line before mentions spam, else "pass"
  UNSURE    → the answer's token probability is 0.3 instead of 0.8 (logprobs, label distributions)
  CACHED / REASONING (anywhere in the prompt) → usage reports half the prompt tokens as cached
              (`prompt_tokens_details.cached_tokens`) / 7 reasoning tokens (`completion_tokens_details`)
  DIE-MIDSTREAM → with `stream: true`, the connection drops after the first chunk (every time)
  STALL-MIDSTREAM → with `stream: true`, a pause of slow_s after the first chunk (every time)
  NO-FINISH → with `stream: true`, the text pieces and `data: [DONE]`, but no finish_reason and no usage chunk
With `stream: true` the answer comes as server-sent events in pieces of at most two characters, then a usage
chunk when `stream_options.include_usage` is set, then `data: [DONE]`.
Chat requests with `tools` whose last turn is the user's get a `tool_calls` answer (the first tool, called with
{"query": the user's text}); after a `tool` turn the answer is text again. `n` gives that many choices. Every
POST body is kept in `state.bodies`, so a test can see exactly what arrived.
GET /health answers 200, or 503 while `state.healthy` is False (llama-server and vLLM have the route); any other
GET answers the model list. `StubServer.kill()` stops the server like a dead process: the port refuses new
connections and every open one (idle or mid-request) is cut.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubState:
    """Counters the tests inspect."""

    def __init__(self, delay_s: float = 0.0, slow_s: float = 2.0):
        self.delay_s = delay_s
        self.slow_s = slow_s
        self.attempts: Counter[str] = Counter()
        self.answered = 0  # 200 answers to POSTs written out in full (what a client may have paid for)
        self.lock = threading.Lock()
        self.down = False  # set when the server stops: kept-alive connections must fail too
        self.healthy = True  # what GET /health says
        self.health_checks = 0  # GET /health requests
        self.connections: set[socket.socket] = set()  # open client connections (cut by kill)
        self.bodies: list[dict[str, Any]] = []  # every POST body, as received

    def attempt(self, key: str) -> int:
        with self.lock:
            self.attempts[key] += 1
            return self.attempts[key]


def _last_line(body: dict[str, Any]) -> str:
    text = body["messages"][-1].get("content") if "messages" in body else body.get("prompt", "")
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    # The item is on the second-to-last line for "…\nLabel:" prompts; use the last two lines.
    return " ".join(lines[-2:]) if lines else ""


def make_handler(state: StubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections.add(self.connection)

        def finish(self) -> None:
            with state.lock:
                state.connections.discard(self.connection)
            with contextlib.suppress(OSError):  # a connection kill() cut
                super().finish()

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            # The client may have given up (timeout test) or been killed (resume test).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(payload)
                if status == 200 and self.command == "POST":
                    with state.lock:
                        state.answered += 1

        def do_GET(self) -> None:
            if state.down:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if self.path.rstrip("/").endswith("/health"):
                with state.lock:
                    state.health_checks += 1
                return self._send(200 if state.healthy else 503,
                                  json.dumps({"status": "ok" if state.healthy else "unavailable"}).encode())
            self._send(200, json.dumps({"object": "list", "data": [{"id": "stub-model"}]}).encode())

        def do_POST(self) -> None:
            if state.down:  # a stopped server: drop the connection without an answer
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            length = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(length))
            with state.lock:
                state.bodies.append(body)
            line = _last_line(body)
            n = state.attempt(line)
            if state.delay_s:
                time.sleep(state.delay_s)
            if "ALWAYS500" in line or ("FAIL500" in line and n <= 2):
                return self._send(500, b'{"error": "injected"}')
            if "RATE429" in line and n == 1:
                return self._send(429, b'{"error": "slow down"}', {"Retry-After": "0.05"})
            if "SLOW" in line and n == 1:
                time.sleep(state.slow_s)
            if "BADJSON" in line and n == 1:
                return self._send(200, b"{not json")
            if body.get("stream"):
                return self._stream(body, answer(body, line), die="DIE-MIDSTREAM" in line,
                                    stall_s=state.slow_s if "STALL-MIDSTREAM" in line else 0.0,
                                    finish="NO-FINISH" not in line)
            self._send(200, json.dumps(answer(body, line)).encode())

        def _stream(self, body: dict[str, Any], result: dict[str, Any], die: bool, stall_s: float,
                    finish: bool = True) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")  # so a connection cut short is visibly broken
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for event in [*(f"data: {json.dumps(e)}\n\n" for e in stream_events(body, result, finish)),
                              "data: [DONE]\n\n"]:
                    data = event.encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    if die:  # a backend that dies mid-answer
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(stall_s)
                    stall_s = 0.0
                self.wfile.write(b"0\r\n\r\n")
                with state.lock:
                    state.answered += 1

    return Handler


def answer(body: dict[str, Any], line: str) -> dict[str, Any]:
    """A completion in the chat or completions shape, with logprobs when asked."""
    if "response_format" in body:
        text = "{broken" if "NONSENSE" in line else json.dumps({"entities": [{"text": "Paris", "type": "geo-loc"}]})
        top: dict[str, float] = {}
    else:
        label = "maybe" if "NONSENSE" in line else ("spam" if "spam" in line.lower() else "ham")
        other = "ham" if label == "spam" else "spam"
        if line.endswith("Next:"):  # an agent turn: see agent_turn
            return _completion(body, agent_turn(str(body.get("prompt") or body.get("messages", [{}])[-1].get(
                "content", ""))), {})
        if line.endswith(("Instruction:", "Words:")):  # an optimizer's proposer request: see proposal
            return _completion(body, proposal(_prompt(body)), {})
        if line.endswith("Verdict:"):  # guardrail tier 2: an answer line with FABRICATED is unsupported
            label, other = ("unsupported", "supported") if "FABRICATED" in line else ("supported", "unsupported")
        if line.endswith("Grade:"):  # a pass/fail grader (judges): an answer line mentioning spam fails
            label, other = ("fail", "pass") if "spam" in line.lower() else ("pass", "fail")
        if line.endswith("Topic:"):  # a topics prompt: see nearest_topic
            label, other = nearest_topic(_prompt(body))
        text = label
        sure = 0.3 if "UNSURE" in line else 0.8
        top = {label: math.log(sure), other: math.log((1 - sure) * 0.75), "\n": math.log((1 - sure) * 0.25)}
    return _completion(body, text, top)


def nearest_topic(prompt: str) -> tuple[str, str]:
    """Topic prompts (examples/topics): the topic of the in-prompt example whose question shares the most words
    with the asked one (a cheap teacher that is often right), and the runner-up's topic for the logprobs."""
    lines = [ln.strip() for ln in prompt.strip().splitlines() if ln.strip()]
    asked = set(lines[-2].removeprefix("Question:").lower().split()) if len(lines) >= 2 else set()
    shots = [(set(q.removeprefix("Question:").lower().split()), t.removeprefix("Topic:").strip())
             for q, t in itertools.pairwise(lines)
             if q.startswith("Question:") and t.startswith("Topic:") and t.removeprefix("Topic:").strip()]
    ranked = sorted(shots, key=lambda shot: -len(shot[0] & asked))
    topics = [*dict.fromkeys(topic for _, topic in ranked), "trivia", "ai"]
    return topics[0], next(t for t in topics[1:] if t != topics[0])


def _prompt(body: dict[str, Any]) -> str:
    return str(body.get("prompt") or body.get("messages", [{}])[-1].get("content", ""))


def proposal(prompt: str) -> str:
    """Proposer requests (`llmbus optimize --proposer`): an instruction rewrite that quotes the request's tip,
    or other words for the labels ham and spam."""
    if prompt.rstrip().endswith("Words:"):
        return "ham: fine\nspam: junk"
    tip = next((ln.removeprefix("Tip: ") for ln in prompt.splitlines() if ln.startswith("Tip: ")), "")
    return f"Instruction: Tell spam from ham. {tip}"


def stream_events(body: dict[str, Any], result: dict[str, Any], ends: bool = True) -> list[dict[str, Any]]:
    """A complete answer as OpenAI streaming chunks: two-character pieces, a finish chunk, a usage chunk (only
    the pieces when not `ends`: a backend that never says it finished)."""
    chat = "messages" in body
    choice = result["choices"][0]
    text = (choice["message"]["content"] or "") if chat else choice["text"]
    kind = "chat.completion.chunk" if chat else "text_completion"
    if chat and choice["message"].get("tool_calls"):
        call = choice["message"]["tool_calls"][0]
        arguments = call["function"]["arguments"]
        events = [{"id": "stub", "object": kind, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                                  "function": {"name": call["function"]["name"],
                                                                               "arguments": ""}}]}}]}]
        events += [{"id": "stub", "object": kind, "choices": [{"index": 0, "finish_reason": None, "delta": {
            "tool_calls": [{"index": 0, "function": {"arguments": arguments[i:i + 8]}}]}}]}
            for i in range(0, len(arguments), 8)]
        events.append({"id": "stub", "object": kind, "choices": [{"index": 0, "delta": {},
                                                                  "finish_reason": "tool_calls"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append({"id": "stub", "object": kind, "choices": [], "usage": result["usage"]})
        return events

    def chunk(piece: str, finish: str | None = None) -> dict[str, Any]:
        part = {"delta": {"content": piece} if piece or not finish else {}} if chat else {"text": piece}
        return {"id": "stub", "object": kind, "choices": [{"index": 0, **part, "finish_reason": finish}]}

    events = [chunk(text[i:i + 2]) for i in range(0, len(text), 2)]
    if not ends:
        return events
    events.append(chunk("", "stop"))
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({"id": "stub", "object": kind, "choices": [], "usage": result["usage"]})
    return events


def agent_turn(prompt: str) -> str:
    """Agent prompts: the goal's `AGENT-CALL tool {args}` is called once, then the last observation is the
    answer; with AGENT-LOOP in the goal the stub never answers (budget tests)."""
    lines = prompt.splitlines()
    start = max((i for i, ln in enumerate(lines) if ln.startswith("Goal:")), default=0)  # after the worked example
    goal = lines[start] if lines else ""
    call = goal.partition("AGENT-CALL")[2].strip()
    observations = [ln.removeprefix("Observation: ") for ln in lines[start:] if ln.startswith("Observation:")]
    if observations and "AGENT-LOOP" not in goal:
        return f"answer {observations[-1]}"
    return f"call {call}" if call else "answer nothing to do"


def tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """The stub's tool call: the first offered tool, when the last turn is the user's."""
    tools = body.get("tools") or []
    if not tools or body.get("tool_choice") == "none" or body["messages"][-1].get("role") != "user":
        return None
    query = str(body["messages"][-1].get("content"))
    return {"id": "call_stub_1", "type": "function",
            "function": {"name": tools[0]["function"]["name"], "arguments": json.dumps({"query": query})}}


def _completion(body: dict[str, Any], text: str, top: dict[str, float]) -> dict[str, Any]:
    result = _one_completion(body, text, top)
    for i in range(1, int(body.get("n") or 1)):
        result["choices"].append({**result["choices"][0], "index": i})
    return result


def _one_completion(body: dict[str, Any], text: str, top: dict[str, float]) -> dict[str, Any]:
    chat = "messages" in body
    usage: dict[str, Any] = {"prompt_tokens": len(str(body).split()), "completion_tokens": 1}
    prompt = _prompt(body)
    if "CACHED" in prompt:  # half the prompt read from the provider's prompt cache, as OpenAI reports it
        usage["prompt_tokens_details"] = {"cached_tokens": usage["prompt_tokens"] // 2}
    if "REASONING" in prompt:  # hidden reasoning tokens, counted in completion_tokens too
        usage["completion_tokens"] += 7
        usage["completion_tokens_details"] = {"reasoning_tokens": 7}
    if chat and (call := tool_call(body)) is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"id": "stub", "object": "chat.completion", "usage": usage,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}
    if chat:
        message = {"role": "assistant", "content": text}
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
        if body.get("logprobs") and top:
            choice["logprobs"] = {"content": [{"token": text, "logprob": top.get(text, max(top.values())),
                                               "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top.items()]}]}
    else:
        choice = {"index": 0, "text": text, "finish_reason": "stop"}
        if body.get("logprobs") and top:
            choice["logprobs"] = {"tokens": [text], "token_logprobs": [top.get(text, max(top.values()))],
                                  "top_logprobs": [top]}
    return {"id": "stub", "object": "chat.completion" if chat else "text_completion", "choices": [choice],
            "usage": usage}


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection cut by kill() mid-request: no traceback on stderr


class StubServer:
    """Context manager: a threaded stub server on a free 127.0.0.1 port (or `port`, to restart one)."""

    def __init__(self, delay_s: float = 0.0, slow_s: float = 2.0, port: int = 0):
        self.state = StubState(delay_s, slow_s)
        self.httpd = _QuietServer(("127.0.0.1", port), make_handler(self.state))
        self.httpd.daemon_threads = True
        # a short poll: stopping takes 50 ms, not half a second of still answering
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.state.down = True
        self.httpd.shutdown()
        self.httpd.server_close()

    def kill(self) -> None:
        """Die like a killed process: refuse new connections and cut every open one, mid-answer or idle."""
        self.__exit__()
        with self.state.lock:
            open_connections = list(self.state.connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    @property
    def requests(self) -> int:
        """POSTs this server received (every attempt of every prompt)."""
        return sum(self.state.attempts.values())
