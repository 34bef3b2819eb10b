"""A TCP proxy a test switches, to make a real peer unreachable in the ways networks fail.

`TcpProxy(upstream_host, upstream_port)` listens on a free loopback port and forwards every connection
byte for byte. `mode` decides what a NEW connection gets (connections already forwarding are cut at the
switch, as a failing network would, unless the mode is "forward"):

- "forward": passed through to the upstream;
- "refuse": the port is closed (connection refused: a server that is not running);
- "reset": accepted, then reset (RST) once the request has arrived (a server crashing mid-request);
- "blackhole": accepted and never answered (a hung server, or packets dropped after the handshake).

`connections` counts the connections accepted per mode, `attempts` keeps when (while refusing nothing is
accepted, so nothing is counted: the port is closed).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections import Counter

MODES = ("forward", "refuse", "reset", "blackhole")


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.mode = "forward"
        self.connections: Counter[str] = Counter()
        self.attempts: list[tuple[float, str]] = []
        """(monotonic time, mode) of every connection the proxy took."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._open: set[socket.socket] = set()
        self._server: socket.socket | None = None
        self.port = 0
        self._thread: threading.Thread | None = None

    # ------------------------------------------------ the switch

    def set_mode(self, mode: str) -> None:
        """Switch what new connections get; cuts the live ones unless back to forwarding."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
        with self._lock:
            previous, self.mode = self.mode, mode
            cut = list(self._open) if mode != "forward" else []
        for sock in cut:
            _reset(sock)
        if mode == "refuse" and previous != "refuse":
            self._close_listener()
        elif mode != "refuse" and previous == "refuse":
            self._listen(self.port)

    def connections_since(self, moment: float) -> int:
        with self._lock:
            return sum(1 for at, _ in self.attempts if at >= moment)

    # ------------------------------------------------ lifecycle

    def start(self) -> TcpProxy:
        self._listen(0)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._close_listener()
        with self._lock:
            live = list(self._open)
        for sock in live:
            _reset(sock)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _listen(self, port: int) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.host, port))
        server.listen(128)
        self.port = server.getsockname()[1]
        self._server = server
        self._thread = threading.Thread(target=self._accept_loop, args=(server,), name="tcp-proxy", daemon=True)
        self._thread.start()

    def _close_listener(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _accept_loop(self, server: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                ready, _, _ = select.select([server], [], [], 0.2)
                if not ready:
                    continue
                client, _ = server.accept()
            except (OSError, ValueError):
                return  # the listener was closed (refuse, or stop)
            with self._lock:
                mode = self.mode
                self.connections[mode] += 1
                self.attempts.append((time.monotonic(), mode))
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client, mode), daemon=True).start()

    def _serve(self, client: socket.socket, mode: str) -> None:
        try:
            if mode == "forward":
                self._forward(client)
            elif mode == "reset":
                with contextlib.suppress(OSError):
                    client.settimeout(5)
                    client.recv(65536)  # the request arrived
                _reset(client)
            else:  # blackhole: hold it open, read and drop, until the client gives up or the mode changes
                client.settimeout(0.5)
                while not self._stopping.is_set() and self.mode == "blackhole":
                    try:
                        if not client.recv(65536):
                            break
                    except TimeoutError:
                        continue
                    except OSError:
                        break
        finally:
            with self._lock:
                self._open.discard(client)
            with contextlib.suppress(OSError):
                client.close()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.add(upstream)
        try:
            pair = {client: upstream, upstream: client}
            while not self._stopping.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pair[sock].sendall(data)
        except OSError:
            return
        finally:
            with self._lock:
                self._open.discard(upstream)
            with contextlib.suppress(OSError):
                upstream.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a middlebox does."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
