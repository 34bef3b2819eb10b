"""The latigo image, built from the repository's Dockerfile and run with podman.

One command (`latigo --version`, `latigo status` against this machine's PostgreSQL), then the default
role as a deployment runs it: LATIGO_MIGRATE=1 migrates a new database, supervisord starts the scheduler
and two executors, the HEALTHCHECK command passes, tasks complete on the embedded providers (synthetic
sensors, local models trained in the container), and SIGTERM stops everything with exit code 0 within
the compose file's grace period. Containers use the host's network to reach PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
import yaml

from latigo import __version__
from latigo.durations import parse_duration
from tests.conftest import create_pg_database, drop_pg_database
from tests.container.conftest import REPORT
from tests.support import containers
from tests.support.containers import Container, ContainerError, wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

TRAIN_SCRIPT = containers.IMAGES_DIR / "train_local_models.py"
COMPOSE = yaml.safe_load((containers.REPO / "docker-compose.yml").read_text())
GRACE = int(parse_duration(COMPOSE["x-latigo"]["stop_grace_period"]).total_seconds())
"""What docker compose gives a latigo container between SIGTERM and SIGKILL."""
SUPERVISORCTL_ENV = ["-e", "LATIGO_SCHEDULER_AUTOSTART=true", "-e", "LATIGO_EXECUTOR_AUTOSTART=true"]
"""supervisord.conf expands these; the entrypoint exports them to supervisord only, not to `podman exec`."""


def run_once(image: str, *command: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`podman run --rm --network host IMAGE COMMAND` (not checked: the tests look at the exit code)."""
    args = ["run", "--rm", "--network", "host"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    return containers.podman(*args, image, *command, timeout=timeout, check=False)


def show(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    url = create_pg_database("latigo_container")
    yield url
    drop_pg_database(url)


# ---------------------------------------------------------------- one command


def test_the_image_runs_latigo_as_a_non_root_user(latigo_image: str) -> None:
    version = run_once(latigo_image, "latigo", "--version")
    assert version.returncode == 0, show(version)
    assert version.stdout.strip() == f"latigo {__version__}"
    ids = run_once(latigo_image, "id", "-u")
    assert ids.stdout.strip() == "10001", show(ids)
    assert containers.podman("image", "inspect", "--format", "{{.Config.User}}", latigo_image).stdout.strip() \
        == "latigo"


def test_latigo_status_against_postgresql(latigo_image: str, pg_database: str) -> None:
    env = {"LATIGO_DATABASE__URL": pg_database}
    empty = run_once(latigo_image, "latigo", "status", env=env)
    assert empty.returncode != 0, show(empty)
    assert "latigo db upgrade" in empty.stderr, show(empty)
    assert "Traceback" not in empty.stderr, show(empty)

    upgrade = run_once(latigo_image, "latigo", "db", "upgrade", env=env)
    assert upgrade.returncode == 0, show(upgrade)
    status = run_once(latigo_image, "latigo", "status", env=env)
    assert status.returncode == 0, show(status)
    assert re.search(r"^tasks:", status.stdout, re.M), show(status)
    as_json = run_once(latigo_image, "latigo", "status", "--json", env=env)
    assert as_json.returncode == 0, show(as_json)
    assert json.loads(as_json.stdout)["queue_size"] == 0


# ---------------------------------------------------------------- the default role


@dataclass
class Running:
    container: Container
    database_url: str
    engine: sa.engine.Engine
    metrics_base: int
    seconds_to_healthy: float
    models: list[str] = field(default_factory=list)

    def logs(self) -> str:
        return self.container.logs()

    def scalar(self, sql: str) -> object:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql)).scalar()

    def states(self) -> dict[str, int]:
        with self.engine.connect() as connection:
            return dict(connection.execute(sa.text("SELECT state, count(*) FROM tasks GROUP BY state")).all())

    def train(self, count: int = 2) -> list[str]:
        """Local models in the database, trained inside the container (once per container)."""
        if not self.models:
            result = self.container.exec("python", "-", str(count), "1m", input=TRAIN_SCRIPT.read_text(),
                                         timeout=300)
            self.models = result.stdout.split()
            assert len(self.models) == count, show(result)
        return self.models


@pytest.fixture(scope="module")
def default_role(latigo_image: str) -> Iterator[Running]:
    """The image as it starts by default (supervisord: scheduler + 2 executors), migrating a new
    PostgreSQL database first. A 1-minute schedule without delay, so a window is due every minute."""
    url = create_pg_database("latigo_container")
    base = containers.free_port_run(3)
    env = {
        "LATIGO_MIGRATE": "1",
        "LATIGO_DATABASE__URL": url,
        "LATIGO_METRICS_BASE_PORT": str(base),
        "LATIGO_SCHEDULER__INTERVAL": "1m",
        "LATIGO_SCHEDULER__DELAY": "0s",
        "LATIGO_SCHEDULER__RUN_AT_ONCE": "true",
    }
    began = time.monotonic()
    container = Container(latigo_image, env=env, options=["--network", "host"])
    engine = sa.create_engine(url)
    try:
        wait_until(lambda: container.healthcheck().returncode == 0, timeout=120,
                   what="the container's HEALTHCHECK to pass (scheduler and 2 executors serving /healthz)",
                   logs=container.logs)
        healthy = time.monotonic() - began
        REPORT.add("start-up to healthy (migration + scheduler + 2 executors)", f"{healthy:.1f} s")
        yield Running(container, url, engine, base, healthy)
    finally:
        container.remove()
        engine.dispose()
        drop_pg_database(url)


def test_the_default_role_migrates_then_runs_a_scheduler_and_two_executors(default_role: Running) -> None:
    assert default_role.scalar("SELECT version_num FROM alembic_version"), default_role.logs()
    expected = {"scheduler": "RUNNING", "executor:executor_01": "RUNNING", "executor:executor_02": "RUNNING"}

    def programs() -> dict[str, str]:
        status = default_role.container.exec("supervisorctl", "-c", "/app/supervisord.conf", "status",
                                             options=SUPERVISORCTL_ENV, check=False)
        return dict(re.findall(r"^(\S+)\s+(\S+)", status.stdout, re.M))

    # RUNNING once a program has stayed up for supervisord's startsecs (10 s).
    wait_until(lambda: programs() == expected, timeout=60, what=f"supervisord to report {expected}",
               logs=lambda: f"last status: {programs()}\n{default_role.logs()}")
    assert default_role.container.state() == "running"


def test_the_health_check_passes_and_notices_a_dead_program(default_role: Running) -> None:
    container = default_role.container
    check = container.healthcheck()
    assert check.returncode == 0, show(check) + default_role.logs()
    assert container.inspect("{{.State.Health.Status}}") == "healthy"
    (command,) = [json.loads(line.split("CMD", 1)[1]) for line in
                  (containers.REPO / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
                  if line.startswith("HEALTHCHECK")]
    assert container.exec(*command, check=False).returncode == 0

    supervisorctl = ["supervisorctl", "-c", "/app/supervisord.conf"]
    container.exec(*supervisorctl, "stop", "executor:executor_02", options=SUPERVISORCTL_ENV)
    try:
        assert container.exec(*command, check=False).returncode != 0, "a stopped executor must fail the check"
    finally:
        container.exec(*supervisorctl, "start", "executor:executor_02", options=SUPERVISORCTL_ENV, timeout=60)
    wait_until(lambda: container.healthcheck().returncode == 0, timeout=60,
               what="the health check to pass again after the executor restarted", logs=container.logs)


def test_scheduled_tasks_complete_on_the_embedded_providers(default_role: Running) -> None:
    models = default_role.train()

    def scheduled_windows_done() -> bool:
        done = default_role.scalar(
            "SELECT count(DISTINCT t.model) FROM tasks t JOIN schedule_state s ON s.model = t.model "
            "WHERE t.state = 'done' AND t.rows > 0")
        return done == len(models)

    # The scheduler picks the new models up at its next tick (at most a minute away).
    wait_until(scheduled_windows_done, timeout=150, what=f"a scheduled window of each of {models} done with rows",
               logs=default_role.logs, every=2)
    assert default_role.states().get("failed", 0) == 0, default_role.logs()
    assert default_role.scalar("SELECT count(*) FROM predictions") > 0


def test_sigterm_finishes_in_flight_tasks_and_exits_0_within_the_grace_period(default_role: Running) -> None:
    container = default_role.container
    default_role.train()
    end = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    start = end - timedelta(hours=3)
    backfill = container.exec("latigo", "backfill", "--from", start.strftime("%Y-%m-%dT%H:%MZ"),
                              "--to", end.strftime("%Y-%m-%dT%H:%MZ"), "--no-progress", timeout=120)
    assert "enqueued" in backfill.stdout + backfill.stderr, show(backfill)
    wait_until(lambda: default_role.states().get("running", 0) > 0, timeout=60,
               what="executors working on the backfill", logs=default_role.logs, every=0.2)

    seconds = container.stop(GRACE)
    logs = container.logs(tail=None)
    assert container.exit_code() == 0, logs[-12000:]
    assert seconds < GRACE, f"stopping took {seconds:.1f} s, the grace period is {GRACE} s\n{logs[-12000:]}"
    REPORT.add("SIGTERM to exit 0 (tasks in flight)", f"{seconds:.1f} s (grace period {GRACE} s)")
    for program in ("scheduler", "executor_01", "executor_02"):
        assert f"stopped: {program} (exit status 0)" in logs, logs[-12000:]
    states = default_role.states()
    assert states.get("running", 0) == 0, f"tasks left claimed after a graceful stop: {states}\n{logs[-12000:]}"
    assert states.get("failed", 0) == 0, logs[-12000:]
    assert states.get("queued", 0) > 0, "the backfill was meant to outlast the stop"


def test_a_bad_role_stops_the_container_with_a_message(latigo_image: str) -> None:
    result = containers.podman("run", "--rm", "-e", "LATIGO_ROLE=everything", latigo_image, check=False,
                               timeout=60)
    assert result.returncode == 2, show(result)
    assert "LATIGO_ROLE" in result.stderr


def test_containers_report_their_failure_reason() -> None:
    """wait_until fails with the thing it waited for and the logs (what every test above relies on)."""
    with pytest.raises(ContainerError, match=r"(?s)waiting for nothing.*--- logs ---\nthe logs"):
        wait_until(lambda: False, timeout=0.1, what="nothing", logs=lambda: "the logs", every=0.05)
