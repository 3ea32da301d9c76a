"""Cancel HTTP calls in flight: a stopped run must not wait for answers it no longer wants.

Closing an httpx client does not wake a thread blocked reading a slow answer (closing a socket's descriptor
leaves a `recv` in another thread waiting until data comes); shutting the socket down does, and tells the
server the client left (llama-server and vLLM then stop generating). `Sockets` wraps the network backend of a
client's connection pool, remembers every socket it opens, and `abort` shuts them all down and refuses new
connections, so a retry after the abort cannot send the request again.
"""

from __future__ import annotations

import socket
import threading
import weakref
from collections.abc import Iterable
from contextlib import suppress
from typing import Any

import httpcore
import httpx


class Sockets(httpcore.NetworkBackend):
    """A connection pool's network backend that keeps track of the sockets it opened."""

    def __init__(self, inner: httpcore.NetworkBackend):
        self.inner = inner
        self.aborted = False
        self._open: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        """A new connection, remembered (refused once aborted)."""
        return self._remember(self.inner.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        """A new Unix-socket connection, remembered (refused once aborted)."""
        return self._remember(self.inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        """What the pool's retries wait with."""
        self.inner.sleep(seconds)

    def abort(self) -> None:
        """Shut down every open socket (a blocked read returns at once) and refuse new connections."""
        with self._lock:
            self.aborted = True
            sockets = list(self._open)
        for sock in sockets:
            with suppress(OSError):  # already closed by its connection
                sock.shutdown(socket.SHUT_RDWR)

    def _remember(self, stream: httpcore.NetworkStream) -> httpcore.NetworkStream:
        sock = stream.get_extra_info("socket")
        with self._lock:
            if self.aborted:
                stream.close()
                raise httpcore.ConnectError("the client was stopped")
            if sock is not None:
                self._open.add(sock)
        return stream


def track_sockets(client: httpx.Client) -> Sockets | None:
    """Install a `Sockets` backend in the client's default connection pool; None where httpx's transport has
    no such pool (a custom transport), so that client cannot be aborted."""
    # httpx has no public hook for the network backend: its default transport keeps a httpcore pool in `_pool`
    # (pinned by tests/test_abort.py, which fails if an httpx upgrade moves it).
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(pool, httpcore.ConnectionPool) or inner is None:
        return None
    tracked = Sockets(inner)
    pool._network_backend = tracked
    return tracked
