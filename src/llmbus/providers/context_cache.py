"""A shared prompt prefix kept on disk across llama-server restarts (`context_cache:` in llmbus.yaml).

A task's prompt starts with the same instructions and few-shot block for every item. Within one server process
llama-server already reuses that prefix (`cache_prompt`); this keeps it across restarts with the server's slot
save/restore (`--slot-save-path DIR`, `POST /slots/{id}?action=save|restore` with a file name):

- learn: the first two prompts a provider sends tell the shared prefix (their common start, cut after its last
  line break so that an item's first words stay out). When it has at least MIN_PREFIX_TOKENS tokens it is
  evaluated alone (llama-server picks the slot already holding it, so this costs about one token) and that
  slot's KV state is saved once.
- restore: after every server start (first use, or a restart after a crash), before the first request is sent,
  the saved prefix that this request's prompt begins with is restored into every slot.

Restored into every slot rather than pinning requests to one (`id_slot`): llama-server keeps choosing slots
itself (an idle one, the most similar cached prompt), so concurrent requests stay spread over the parallel slots
and each finds the prefix in whichever slot it gets. Pinning would need a client-side pool of slot ids that
duplicates the server's scheduler, and pinning all requests to the one restored slot would serialize them. The
cost is one file read per slot at start (Gemma 3 270M: ~18 KB per prefix token at f16).

A saved file is named by what its KV state is valid for — the GGUF and the llama-server binary (path, size,
mtime), the slot context size, the KV cache types and flash attention (which changes how V is laid out) — and by
the prefix's token count and hash. It is restored only when all of those match and the request's own first tokens
hash to the saved prefix, so a stale state never reaches another model or prefix. The folder holds the newest
KEEP_FILES states; like the logs, a state can quote prompt text, so the default folder is private to the user.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from llmbus.errors import ProviderError
from llmbus.providers.llamacpp import LlamaServer

MIN_PREFIX_TOKENS = 64  # a shorter shared prefix costs less to evaluate than to save and restore
KEEP_FILES = 8
FILE_PREFIX = "llmbus-ctx-"


def state_key(gguf: Path, binary: Path, ctx_per_slot: int, knobs: dict[str, str | None]) -> str:
    """Hash of everything a saved KV state is only valid for (see the module docstring)."""
    parts = [_file_id(gguf), _file_id(binary), ctx_per_slot,
             [knobs.get(name) or "default" for name in ("cache_type_k", "cache_type_v", "flash_attn")]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _file_id(path: Path) -> list[object]:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def prefix_digest(tokens: list[int]) -> str:
    """Short hash of a token sequence."""
    return hashlib.sha256(",".join(map(str, tokens)).encode()).hexdigest()[:16]


def common_length(a: Sequence[object], b: Sequence[object]) -> int:
    """How many leading items two sequences (strings, token lists) share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def shared_prefix(a: str, b: str) -> str:
    """The common start of two prompts, cut after its last line break ("" when they share no whole line)."""
    return a[:a.rfind("\n", 0, common_length(a, b)) + 1]


class ContextCache:
    """Saves one shared prompt prefix's KV state and restores it into every slot after each server start."""

    def __init__(self, server: LlamaServer, directory: Path, *, ctx_per_slot: int, slots: int,
                 knobs: dict[str, str | None], tokenize: Callable[[str], list[int]]):
        self.server = server
        self.directory = directory
        self.slots = slots
        self.saved: Path | None = None  # the state this provider restored or wrote last
        self.restored = 0  # slots restored at the last server start
        self._ctx_per_slot = ctx_per_slot
        self._knobs = knobs
        self._tokenize = tokenize
        self._lock = threading.Lock()
        self._ready_for = 0  # server.starts when the saved states were last looked at
        self._first: str | None = None  # the first prompt, until a second one tells the shared prefix
        self._learned = False

    def prepare(self, prompt: str) -> None:
        """Before a request: on a server that just started, restore the saved prefix this prompt begins with."""
        if self._ready_for == self.server.starts:
            return
        with self._lock:
            if self._ready_for == self.server.starts:
                return
            self._ready_for = self.server.starts
            self.restored = 0
            found = self._find(self._tokenize(prompt))
            if found is not None:
                self._restore(found)

    def learn(self, prompt: str) -> None:
        """After a request: the first two prompts tell the shared prefix; its KV state is saved once."""
        if self._learned:
            return
        with self._lock:
            if self._learned:
                return
            if self._first is None:
                self._first = prompt
                return
            self._learned = True
            text, self._first = shared_prefix(self._first, prompt), None
            if not text:
                return
            tokens = self._tokenize(text)
            tokens = tokens[:common_length(tokens, self._tokenize(prompt))]  # a line break may merge with the next
            if len(tokens) < MIN_PREFIX_TOKENS:
                return
            path = self.directory / f"{FILE_PREFIX}{self._key()}-{len(tokens)}-{prefix_digest(tokens)}.bin"
            if not path.exists() and not self._save(tokens, path.name):
                return
            self.saved = path
            with contextlib.suppress(OSError):
                os.utime(path)
            self._prune()

    def _key(self) -> str:
        assert self.server.binary is not None, "the server has started"
        return state_key(self.server.gguf, self.server.binary, self._ctx_per_slot, self._knobs)

    def _find(self, tokens: list[int]) -> Path | None:
        """The longest saved prefix of `tokens` under this model's key (shorter than the prompt: the last
        prompt token must be evaluated anyway)."""
        best: tuple[int, Path] | None = None
        for path in self.directory.glob(f"{FILE_PREFIX}{self._key()}-*.bin"):
            _, count, digest = path.stem.rsplit("-", 2)
            if not count.isdigit() or not 0 < int(count) < len(tokens):
                continue
            if prefix_digest(tokens[:int(count)]) == digest and (best is None or int(count) > best[0]):
                best = (int(count), path)
        return best[1] if best else None

    def _restore(self, path: Path) -> None:
        """Load the state into every slot; a file the server refuses is removed (it would be refused again)."""
        for slot in range(self.slots):
            try:
                self.server.post(f"/slots/{slot}?action=restore", {"filename": path.name})
            except ProviderError:
                with contextlib.suppress(OSError):
                    path.unlink()
                return
            self.restored += 1
        self.saved = path
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: kept by _prune

    def _save(self, tokens: list[int], name: str) -> bool:
        """Evaluate the prefix alone and save the slot that holds it. Another request may take that slot between
        the two calls; the file then holds a few tokens more than the prefix, which the server's own token match
        ignores on restore."""
        try:
            data = self.server.post("/completion", {"prompt": tokens, "n_predict": 0, "cache_prompt": True,
                                                    "temperature": 0.0})
            self.server.post(f"/slots/{int(data['id_slot'])}?action=save", {"filename": name})
        except (ProviderError, KeyError, ValueError):
            return False  # a cache that cannot be written only costs the prefix again after a restart
        return True

    def _prune(self) -> None:
        states = []
        for path in self.directory.glob(f"{FILE_PREFIX}*.bin"):
            with contextlib.suppress(OSError):
                states.append((path.stat().st_mtime, path))
        for _, path in sorted(states, reverse=True)[KEEP_FILES:]:
            with contextlib.suppress(OSError):
                path.unlink()
