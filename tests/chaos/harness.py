"""What the chaos scenarios share: configs, latigo processes with their logs in files, fault injectors,
deadline-bound waits on the ledger, and the per-scenario report.

Everything here drives the real thing: `python -m latigo` processes, real PostgreSQL / SQLite, real
signals. Nothing of latigo is replaced.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from latigo.config import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import QueuedTask, TaskRecord
from tests.support.processes import REPO, child_env, write_config

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
INTERVAL = timedelta(minutes=10)
PROVIDER = "tests.support.providers:StaticModels"

TaskKey = tuple[str, datetime, datetime]
"""(model, window start, window end)"""


# ---------------------------------------------------------------- tasks and configs


def grid_windows(count: int, start: datetime = START) -> list[tuple[datetime, datetime]]:
    return [(start + i * INTERVAL, start + (i + 1) * INTERVAL) for i in range(count)]


def task_keys(models: Iterable[str], count: int, start: datetime = START) -> list[TaskKey]:
    return [(model, a, b) for model in models for a, b in grid_windows(count, start)]


def backfill_args(count: int, start: datetime = START) -> list[str]:
    """`latigo backfill` arguments for `count` windows of every listed model."""
    return ["backfill", "--from", start.isoformat(), "--to", (start + count * INTERVAL).isoformat(), "--no-progress"]


def chaos_config(path: Path, url: str, models: list[str], *, sleep: float = 0.0, concurrency: int = 4,
                 lease: str = "60s", executor: dict[str, Any] | None = None, scheduler: dict[str, Any] | None = None,
                 predictions: dict[str, Any] | None = None, provider: str = PROVIDER) -> Path:
    """A loop config over StaticModels (deterministic predictions; see tests/support/providers.py) on the
    database queue, with a 10-minute grid and no delay."""
    sections: dict[str, Any] = dict(
        database={"url": url, "connect_timeout": "3s"},
        task_queue={"type": "database", "lease": lease, "poll_interval": "200ms"},
        sensor_data={"type": PROVIDER},
        model_information={"type": provider, "models": models, "sleep": sleep},
        model_execution={"type": provider, "models": models, "sleep": sleep},
        scheduler={"interval": "10m", "delay": "0s", "check_interval": "1s", **(scheduler or {})},
        executor={"concurrency": concurrency, "shutdown_timeout": "5s", "poll_timeout": "500ms", **(executor or {})},
        metrics={"enabled": False},
    )
    if predictions:
        sections["predictions"] = predictions
    return write_config(path, **sections)


# ---------------------------------------------------------------- processes


class LatigoProcess:
    """`python -m latigo --config CONFIG ARGS...` with stdout+stderr in a log file (a pipe nobody reads
    would block a busy executor)."""

    def __init__(self, config: Path, args: tuple[str, ...], log_path: Path) -> None:
        self.args, self.log_path = args, log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in wait()
        self.popen = subprocess.Popen([sys.executable, "-m", "latigo", "--config", str(config), *args], cwd=REPO,
                                      env=child_env(), stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        self.pid = self.popen.pid

    def __repr__(self) -> str:
        return f"<latigo {' '.join(self.args[:1])} pid {self.pid} log {self.log_path.name}>"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    STARTED = {"executor": " running ", "scheduler": "scheduler running"}

    def wait_started(self, timeout: float) -> None:
        """Until the service logs that it runs (its signal handlers are installed by then), or exits."""
        marker = self.STARTED.get(self.args[0])
        deadline = time.monotonic() + timeout
        while marker and self.alive() and marker not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self} did not start within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.popen.wait(timeout)
        finally:
            if self.popen.returncode is not None:
                self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def count(self, text: str) -> int:
        return self.output().count(text)

    def reap(self) -> None:
        """Teardown: a process still here (maybe SIGSTOPped) is continued and killed, by its PID."""
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)
        self._log.close()


class Processes:
    """The latigo processes one test started; all reaped at teardown."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[LatigoProcess] = []

    def start(self, config: Path, *args: str, name: str | None = None) -> LatigoProcess:
        name = name or args[0]
        process = LatigoProcess(config, args, self.log_dir / f"{len(self.started):02d}-{name}.log")
        self.started.append(process)
        return process

    def run(self, config: Path, *args: str, timeout: float = 120, name: str | None = None) -> tuple[int, str]:
        """Run to the end (bounded by `timeout`); returns (exit code, output)."""
        process = self.start(config, *args, name=name)
        try:
            code = process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.reap()
            raise AssertionError(f"latigo {' '.join(args)} still running after {timeout:.0f}s:\n{process.tail()}") \
                from None
        return code, process.output()

    def run_ok(self, config: Path, *args: str, timeout: float = 120, name: str | None = None) -> str:
        code, output = self.run(config, *args, timeout=timeout, name=name)
        assert code == 0, f"latigo {' '.join(args)} exited {code}:\n{output[-4000:]}"
        return output

    def stop(self, processes: Iterable[LatigoProcess], timeout: float = 30) -> list[int]:
        """SIGTERM each (the graceful stop) once it has started up (a SIGTERM during its imports would kill
        it before it installs its handler), then wait for all; returns the exit codes."""
        processes = list(processes)
        for process in processes:
            process.wait_started(timeout)
            process.send(signal.SIGTERM)
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{process} did not stop within {timeout:.0f}s of SIGTERM:\n{process.tail()}") \
                    from None
        return codes

    def reap_all(self) -> None:
        for process in self.started:
            process.reap()

    def log_count(self, text: str, command: str = "executor") -> int:
        return sum(p.count(text) for p in self.started if p.args[:1] == (command,))

    def tails(self, lines: int = 25) -> str:
        return "\n".join(f"--- {p} (exit {p.popen.poll()}):\n{p.tail(lines)}" for p in self.started)


# ---------------------------------------------------------------- the ledger, polled


class Probe:
    """Reads the ledger and the queue while faults are injected: a failed read is 'not yet', not an error."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine_for(DatabaseSettings(url=url))

    def close(self) -> None:
        self.engine.dispose()

    def _read(self, read: Callable[[sa.Connection], Any], patience: float) -> Any:
        """`read` on a fresh connection, retried for up to `patience` seconds (the connection may have just
        been killed, the server restarting); None when it never answered."""
        deadline = time.monotonic() + patience
        while True:
            try:
                with self.engine.connect() as connection:
                    return read(connection)
            except Exception:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.1)

    def snapshot(self, patience: float = 0.0) -> dict[str, int] | None:
        def read(connection: sa.Connection) -> dict[str, int]:
            states = dict(connection.execute(
                sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
            queued, leased = connection.execute(sa.select(
                sa.func.count(), sa.func.count(QueuedTask.lease_owner)).select_from(QueuedTask)).one()
            return {**states, "queue_rows": queued, "leased": leased}

        return self._read(read, patience)

    def scalar(self, statement: Any, patience: float = 10.0) -> Any:
        """One value; raises when the database did not answer within `patience` seconds."""
        value = self._read(lambda connection: connection.execute(statement).scalar(), patience)
        if value is None:
            raise AssertionError(f"the database did not answer within {patience:.0f}s: {statement}")
        return value

    def count(self, *where: Any) -> int:
        return self.scalar(sa.select(sa.func.count()).select_from(TaskRecord).where(*where))

    def running(self) -> int:
        return self.count(TaskRecord.state == "running")

    def done(self) -> int:
        return self.count(TaskRecord.state == "done")

    def drained(self, total: int) -> bool:
        """`total` tasks finished, none running, the queue empty."""
        snap = self.snapshot()
        if snap is None:
            return False
        finished = sum(snap.get(state, 0) for state in ("done", "failed", "cancelled"))
        return finished >= total and not snap.get("running") and snap["queue_rows"] == 0


def wait_until(predicate: Callable[[], object], timeout: float, what: str,
               diagnostics: Callable[[], str] = lambda: "", every: float = 0.2) -> float:
    """Wait for `predicate` (a deadline, never forever); returns the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic() - began
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnostics()}")


# ---------------------------------------------------------------- fault injectors


class ConnectionKiller(threading.Thread):
    """Every `period` seconds, terminate every backend connected to `database` (not its own):
    `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ... AND pid <> pg_backend_pid()`."""

    def __init__(self, admin_url: str, database: str, period: float, rounds: int | None = None) -> None:
        super().__init__(name="chaos-connection-killer", daemon=True)
        self.admin_url, self.database, self.period, self.max_rounds = admin_url, database, period, rounds
        self.rounds = 0
        self.terminated = 0
        self.hits = 0
        """Rounds that terminated at least one backend."""
        self.errors: list[str] = []
        self._halt = threading.Event()

    def run(self) -> None:
        connection = psycopg2.connect(self.admin_url)
        connection.autocommit = True
        try:
            while not self._halt.is_set() and (self.max_rounds is None or self.rounds < self.max_rounds):
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                                       " WHERE datname = %s AND pid <> pg_backend_pid()", (self.database,))
                        killed = cursor.fetchone()[0]
                except Exception as exc:  # noqa: BLE001 - reported, never raised in the thread
                    self.errors.append(repr(exc))
                    killed = 0
                self.rounds += 1
                self.terminated += killed
                self.hits += killed > 0
                self._halt.wait(self.period)
        finally:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def describe(self) -> str:
        return f"{self.rounds} pg_terminate_backend rounds, {self.terminated} backends terminated"


class SqliteLockHolder(threading.Thread):
    """Another connection holding SQLite's write lock (BEGIN IMMEDIATE) for `hold` seconds."""

    def __init__(self, path: Path, hold: float) -> None:
        super().__init__(name="chaos-sqlite-lock", daemon=True)
        self.path, self.hold = path, hold
        self.acquired = threading.Event()
        self.held_for = 0.0
        self.error = ""

    def run(self) -> None:
        connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")
            began = time.monotonic()
            self.acquired.set()
            time.sleep(self.hold)
            self.held_for = time.monotonic() - began
            connection.execute("ROLLBACK")
        except Exception as exc:  # noqa: BLE001
            self.error = repr(exc)
            self.acquired.set()
        finally:
            connection.close()


# ---------------------------------------------------------------- the report


@dataclass
class ScenarioResult:
    scenario: str
    backend: str
    tasks: int
    done: int
    failed: int
    runs_max: int
    lost: int
    attempts: int
    dead_letters: int
    faults_injected: str
    faults_seen: int
    """'database fault while ...' lines in the executors' logs: faults they met and released on."""
    wall_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        extra = "".join(f", {key} {value}" for key, value in self.extra.items())
        return (f"chaos {self.scenario} [{self.backend}]: tasks {self.tasks}, done {self.done}, failed {self.failed}, "
                f"runs max {self.runs_max}, lost {self.lost}, attempts {self.attempts}, "
                f"dead letters {self.dead_letters}, faults injected: {self.faults_injected}, "
                f"faults seen by executors {self.faults_seen}{extra}, {self.wall_seconds:.1f} s")


class ChaosReport:
    """Each scenario's one-line summary, printed at the end and written as JSON (the path is set by the
    session fixture, under pytest's base temporary directory)."""

    def __init__(self) -> None:
        self.results: list[ScenarioResult] = []
        self.path: Path | None = None

    def add(self, result: ScenarioResult) -> None:
        self.results.append(result)
        print("\n" + result.line(), flush=True)
        self.write()

    def write(self) -> None:
        if self.path is not None:
            self.path.write_text(json.dumps([asdict(result) for result in self.results], indent=2) + "\n")


REPORT = ChaosReport()
