"""supervisord for real, with the project's supervisord.conf, started through deploy/entrypoint.sh.

The embedded configuration (SQLite in a temp dir, the database task queue, synthetic sensors, local
models) runs a scheduler and two executors; the tests watch tasks reach `done` in the ledger, kill an
executor with SIGKILL and see supervisord bring it back and the work go on, and stop everything with
`supervisorctl stop all`, which must end every program with its own exit status 0 (no SIGKILL).

The tests of this module share one supervisord and run in file order: start, work, kill, stop.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from latigo.config import load_config
from latigo.factory import Components
from latigo.models.local import machines_for_groups
from latigo.storage import migrations
from latigo.storage.tables import TaskRecord
from latigo.types import TimeRange

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "deploy" / "entrypoint.sh"
MODELS = 3
WAIT = 180.0
"""Upper bound for any wait below; reached only when something is broken."""
STOPWAITSECS = 45


def wait_for(what: str, condition: Callable[[], Any], timeout: float = WAIT, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def free_port_block(size: int) -> int:
    """A base port with `size` consecutive free ports after it."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + size > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports")


class _Collector(threading.Thread):
    """Drains one output pipe of supervisord (its log and the programs' output) into a list."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in iter(self.stream.readline, ""):
            self.lines.append(line.rstrip("\n"))


@dataclass
class Stack:
    directory: Path
    env: dict[str, str]
    config_file: Path
    engine: sa.engine.Engine
    process: subprocess.Popen
    stdout: _Collector
    stderr: _Collector
    socket_path: Path
    base_port: int
    backfilled: list[TimeRange] = field(default_factory=list)

    def rpc(self) -> Any:
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(None, None, f"unix://{self.socket_path}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport).supervisor

    def processes(self) -> dict[str, dict[str, Any]]:
        return {info["name"]: info for info in self.rpc().getAllProcessInfo()}

    def supervisorctl(self, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "supervisor.supervisorctl", "-c", str(ROOT / "supervisord.conf"), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=STOPWAITSECS + 60)

    def latigo(self, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.directory / "bin" / "latigo"), *args]
        result = subprocess.run(command, env=self.env, cwd=self.directory, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        return result

    def backfill(self, days_back: int) -> None:
        """Enqueue one day of windows for every model, `days_back` days ago (a distinct day per call)."""
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=days_back)
        window = TimeRange(end - timedelta(days=1), end)
        self.latigo("backfill", "--from", window.start.isoformat(), "--to", window.end.isoformat(), "--no-progress")
        self.backfilled.append(window)

    def task_states(self, executor: str | None = None) -> dict[str, int]:
        query = sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)
        if executor is not None:
            query = query.where(TaskRecord.executor == executor)
        with self.engine.connect() as connection:
            return dict(connection.execute(query).all())

    def log(self) -> str:
        return "\n".join(self.stdout.lines + self.stderr.lines)


def write_config(directory: Path) -> Path:
    """The embedded defaults, quickened: short leases so a killed executor's tasks come back soon."""
    config = {
        "database": {"url": f"sqlite:///{directory / 'latigo.db'}"},
        "task_queue": {"type": "database", "lease": "5s", "poll_interval": "200ms"},
        "scheduler": {"interval": "10m", "delay": "0s", "run_at_once": True, "check_interval": "1s"},
        "executor": {"concurrency": 2, "shutdown_timeout": "20s", "poll_timeout": "500ms"},
        "logging": {"level": "INFO"},
        "metrics": {"host": "127.0.0.1"},
    }
    path = directory / "latigo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_models(config_file: Path) -> sa.engine.Engine:
    """A migrated database with local models trained on synthetic data (what `latigo demo` does)."""
    components = Components(load_config(config_file, {}))
    migrations.upgrade(components.engine)
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    training = TimeRange(now - timedelta(days=10), now - timedelta(days=8))
    for machine in machines_for_groups(components.sensor_data.get_sensor_list(), MODELS, training):
        components.model_execution.register_model(machine)
    return components.engine


def latigo_shim(bin_dir: Path) -> None:
    """The console script pip would install, for this interpreter and this checkout."""
    bin_dir.mkdir()
    script = bin_dir / "latigo"
    script.write_text(f"#!{sys.executable}\nimport sys\nfrom latigo.cli import main\nsys.exit(main())\n")
    script.chmod(0o755)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("supervisord")
    latigo_shim(directory / "bin")
    config_file = write_config(directory)
    engine = train_models(config_file)
    base_port = free_port_block(3)
    run_dir = directory / "run"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    env = {
        **base_env,
        "PATH": os.pathsep.join([str(directory / "bin"), str(Path(sys.executable).parent), base_env["PATH"]]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), base_env.get("PYTHONPATH", "")])),
        "LATIGO_CONFIG_FILE": str(config_file),
        "LATIGO_ROLE": "all",
        "LATIGO_EXECUTORS": "2",
        "LATIGO_METRICS_BASE_PORT": str(base_port),
        "LATIGO_RUN_DIR": str(run_dir),
        "LATIGO_MIGRATE": "1",
    }
    process = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, cwd=directory, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = _Collector(process.stdout), _Collector(process.stderr)
    stdout.start()
    stderr.start()
    stack = Stack(directory, env, config_file, engine, process, stdout, stderr, run_dir / "supervisor.sock", base_port)
    try:
        wait_for("supervisord's socket", lambda: stack.socket_path.exists() or process.poll() is not None)
        assert process.poll() is None, f"supervisord exited {process.returncode}:\n{stack.log()}"
        yield stack
    finally:
        _stop(process)
        engine.dispose()


def _stop(process: subprocess.Popen) -> None:
    """supervisord stops its programs on SIGTERM; SIGKILL the whole session only if that hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOPWAITSECS + 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def running(stack: Stack, names: set[str]) -> dict[str, dict[str, Any]] | None:
    processes = stack.processes()
    if all(processes.get(n, {}).get("statename") == "RUNNING" for n in names):
        return processes
    return None


PROGRAMS = {"scheduler", "executor_01", "executor_02"}


def test_the_scheduler_and_two_executors_run_and_complete_tasks(stack):
    processes = wait_for("scheduler and two executors RUNNING", lambda: running(stack, PROGRAMS))
    assert set(processes) == PROGRAMS
    assert len({p["pid"] for p in processes.values()}) == 3
    for name in ("executor_01", "executor_02"):
        # The executor logs its name (host:pid) once it is up; then both share the backfill.
        ready = f"{socket.gethostname()}:{processes[name]['pid']}"
        wait_for(f"{name} up", lambda text=ready: text in stack.log())
    stack.backfill(days_back=1)
    # The migration ran first (LATIGO_MIGRATE=1), then supervisord took over the entrypoint's pid.
    assert stack.rpc().getPID() == stack.process.pid
    expected = MODELS * 24 * 6  # one day of 10-minute windows per model
    wait_for("the backfilled tasks done", lambda: stack.task_states().get("done", 0) >= expected)
    # Both executors took part, and the scheduler added the live window of every model (run_at_once).
    for name in ("executor_01", "executor_02"):
        done_by = stack.task_states(executor=f"{socket.gethostname()}:{processes[name]['pid']}").get("done", 0)
        assert done_by > 0, f"{name} completed no task"
    wait_for("the live windows done", lambda: stack.task_states().get("done", 0) >= expected + MODELS)


def test_each_program_serves_health_and_metrics_on_its_own_port(stack):
    ports = {"scheduler": stack.base_port, "executor_01": stack.base_port + 1, "executor_02": stack.base_port + 2}
    for name, port in ports.items():
        status, body = wait_for(f"{name}'s /healthz on {port}", lambda p=port: _get(f"http://127.0.0.1:{p}/healthz"),
                                timeout=30)
        assert status == 200, f"{name}: {body}"
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "latigo_" in body, name
    wait_for("tasks done by an executor", lambda: stack.task_states().get("done", 0) >= 1)
    done = sum(_sample(_get(f"http://127.0.0.1:{stack.base_port + n}/metrics")[1], "latigo_tasks_done_total")
               for n in (1, 2))
    assert done >= 1  # the executors count what they did, not just declare the counter
    scheduler = _get(f"http://127.0.0.1:{stack.base_port}/metrics")[1]
    assert _sample(scheduler, "latigo_last_schedule_time_seconds") > 1_700_000_000
    for n in (1, 2):  # only the scheduler says when it last scheduled: an executor's 0 would look like a stall
        assert "latigo_last_schedule_time_seconds" not in _get(f"http://127.0.0.1:{stack.base_port + n}/metrics")[1]


def _sample(text: str, name: str) -> float:
    """The value of an unlabelled sample in the Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def _get(url: str) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return None


def test_a_killed_executor_is_restarted_and_the_work_goes_on(stack):
    before = wait_for("all RUNNING", lambda: running(stack, PROGRAMS))
    done_before = stack.task_states().get("done", 0)
    stack.backfill(days_back=2)
    # Kill it while it works: its claimed tasks come back when their leases expire.
    wait_for("work under way", lambda: stack.task_states().get("done", 0) > done_before + 10, every=0.05)
    victim = before["executor_01"]["pid"]
    os.kill(victim, signal.SIGKILL)

    def restarted() -> dict[str, Any] | None:
        info = stack.processes()["executor_01"]
        return info if info["statename"] == "RUNNING" and info["pid"] != victim else None

    new_pid = wait_for("executor_01 restarted with a new pid", restarted)["pid"]
    assert stack.processes()["executor_02"]["pid"] == before["executor_02"]["pid"], "only the killed one restarts"
    assert "exited: executor_01 (terminated by SIGKILL" in stack.log()

    stack.backfill(days_back=3)  # more work after the restart
    expected = len(stack.backfilled) * MODELS * 24 * 6
    wait_for("every backfilled task done, the killed executor's included",
             lambda: stack.task_states().get("done", 0) >= expected + MODELS)
    states = stack.task_states()
    assert states.get("failed", 0) == 0, states
    new_name = f"{socket.gethostname()}:{new_pid}"
    assert stack.task_states(executor=new_name).get("done", 0) > 0, "the restarted executor completes tasks"


def test_stop_all_ends_every_program_cleanly(stack):
    wait_for("all RUNNING", lambda: running(stack, PROGRAMS))
    stack.backfill(days_back=4)  # stop while they are busy
    result = stack.supervisorctl("stop", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in PROGRAMS:
        assert f"{name}: stopped" in result.stdout
    processes = stack.processes()
    for name in PROGRAMS:
        info = processes[name]
        assert info["statename"] == "STOPPED", info
        assert info["exitstatus"] == 0, f"{name} exit status {info['exitstatus']}"
        assert f"stopped: {name} (exit status 0)" in stack.log()
    assert "with SIGKILL" not in stack.log(), "supervisord had to kill a program that did not stop in time"
    # Graceful: nothing is left claimed; unfinished tasks were handed back to the queue.
    assert stack.task_states().get("running", 0) == 0
