"""HttpClient against a real socket server that cuts its answer: a connection reset in the middle of a
response body is a connection-level failure like a refused connection (a transient error, counted
against the peer's breaker), never an unexpected exception that fails the task as "internal"."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from latigo.errors import TransientError
from latigo.http import NO_RETRY, HttpClient
from latigo.peers import CircuitBreaker, PeerDown


@contextlib.contextmanager
def cutting_server(body_sent: int = 10, length: int = 100_000) -> Iterator[str]:
    """Answers every request with the headers of a `length`-byte body, `body_sent` bytes of it, then an RST."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    stopping = threading.Event()

    def serve() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with contextlib.suppress(OSError):
                conn.settimeout(5)
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % length + b"x" * body_sent)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()
        thread.join(5)


@pytest.mark.parametrize("body_sent", [0, 10])
def test_a_body_cut_by_a_reset_is_a_transient_error(body_sent: int) -> None:
    with cutting_server(body_sent) as url:
        client = HttpClient("gordo", timeout=5.0, retry=NO_RETRY)
        with pytest.raises(TransientError, match=r"gordo: GET http://127.0.0.1:\d+/models failed after 1 attempts: "
                                                 r"ConnectionError"):
            client.request("GET", f"{url}/models")


def test_bodies_cut_by_resets_open_the_peers_breaker() -> None:
    breaker = CircuitBreaker("gordo cut", threshold=3, verdict_wait=0.0)
    with cutting_server() as url:
        client = HttpClient("gordo", timeout=5.0, retry=NO_RETRY, peer=breaker)
        for _ in range(2):
            with pytest.raises(TransientError):
                client.request("GET", f"{url}/models")
        with pytest.raises(PeerDown):
            client.request("GET", f"{url}/models")
    assert breaker.is_open
