"""The project's docker-compose.yml, run by podman-compose on the stand-in images, after the README's
`eval "$(./set_env.py)"` on a config file freshly made from the template.

podman 4.3 (Debian 12) cannot wait for health checks, so podman-compose ignores `condition:
service_healthy` there (it says so), and podman's `--requires` cannot start a container whose
dependency has a dependency that already exited. The stack is therefore brought up in the order the
compose file's depends_on conditions give, each step waiting for what the next needs:
`up -d postgres influxdb`, both healthy (the test runs `podman healthcheck run`, as the engine's timer
would), `up -d --no-deps migrate` exiting 0, `up -d --no-deps scheduler executor`. With podman 4.6 or
newer, or Docker, a plain `up` does the same by itself.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.container.conftest import REPORT
from tests.support import containers
from tests.support.containers import ComposeProject, Container, ContainerError, wait_until

pytestmark = [pytest.mark.container, pytest.mark.slow]

COMPOSE_FILE = containers.REPO / "docker-compose.yml"
TRAIN_SCRIPT = containers.IMAGES_DIR / "train_local_models.py"
SCHEDULE = {"LATIGO_SCHEDULER__INTERVAL": "1m", "LATIGO_SCHEDULER__DELAY": "0s"}
"""Exported after set_env's values, as a user would override the template: a window due every minute."""


def published_ports() -> list[int]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return [int(str(port).split(":")[-2]) for service in services.values() for port in service.get("ports", [])]


@pytest.fixture
def project(latigo_image: str, tmp_path: Path) -> Iterator[ComposeProject]:
    """A compose project with its own name. Depends on the image test's build only to fill podman's layer
    cache first: podman-compose builds the three latigo services in parallel."""
    busy = [port for port in published_ports() if not containers.port_is_free(port)]
    if busy:
        raise ContainerError(f"docker-compose.yml publishes ports {busy} on 127.0.0.1, which are in use here")
    config = tmp_path / "local_config.yaml"
    set_env = f'"{sys.executable}" ./set_env.py --file "{config}"'
    exports = " ".join(f"{key}={value}" for key, value in SCHEDULE.items())
    # The README's recipe: the first run creates the file from the template, the second exports it.
    prefix = f'set -e\n{set_env}\neval "$({set_env})"\nexport {exports}'
    compose = ComposeProject(f"latigotest{uuid.uuid4().hex[:8]}", COMPOSE_FILE, prefix)
    image = "localhost/" + yaml.safe_load(COMPOSE_FILE.read_text())["x-latigo"]["image"]
    previous = containers.podman("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
    try:
        yield compose
    finally:
        compose.run("down", "-v", "-t", "5", check=False, timeout=300)
        compose.force_remove()
        current = containers.podman("image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
        if previous and previous != current:
            containers.podman("rmi", previous, check=False)  # the image compose's build replaced


def healthy(compose: ComposeProject, names: list[str]) -> bool:
    return all(Container.attach(name).healthcheck().returncode == 0 for name in names)


def psql(compose: ComposeProject, sql: str) -> str:
    result = Container.attach(compose.container("postgres")).exec(
        "psql", "-U", "latigo", "-d", "latigo", "-tAc", sql, timeout=60)
    return result.stdout.strip()


def test_compose_runs_the_stack_into_its_postgresql_and_comes_down_clean(project: ComposeProject) -> None:
    compose = project
    began = time.monotonic()
    compose.run("build", timeout=900)
    built = time.monotonic()

    compose.run("up", "-d", "postgres", "influxdb")
    stores = [compose.container("postgres"), compose.container("influxdb")]
    wait_until(lambda: healthy(compose, stores), timeout=120, what="postgres and influxdb health checks",
               logs=compose.logs, every=1)

    compose.run("up", "-d", "--no-deps", "migrate")
    migrate = Container.attach(compose.container("migrate"))
    wait_until(lambda: migrate.state() == "exited", timeout=120, what="the migrate service to finish",
               logs=compose.logs)
    assert migrate.exit_code() == 0, compose.logs()
    assert "database schema at" in migrate.logs(tail=None), migrate.logs()

    compose.run("up", "-d", "--no-deps", "scheduler", "executor")
    latigo = [compose.container("scheduler"), compose.container("executor", 1), compose.container("executor", 2)]
    wait_until(lambda: healthy(compose, latigo), timeout=120, what="the scheduler and both executors healthy",
               logs=compose.logs, every=2)
    up = time.monotonic()
    states = compose.containers()
    assert {name: states.get(name) for name in latigo} == dict.fromkeys(latigo, "running"), states
    assert f"{compose.name}_executor_3" not in states

    # The template exported no database URL, so compose's PostgreSQL default reached every container.
    for name in latigo:
        url = Container.attach(name).exec("sh", "-c", "echo \"$LATIGO_DATABASE__URL\"").stdout.strip()
        assert url == "postgresql://latigo:latigo@postgres:5432/latigo", f"{name}: {url}"
        assert Container.attach(name).exec("test", "!", "-e", "/data/latigo.db", check=False).returncode == 0

    scheduler = Container.attach(compose.container("scheduler"))
    models = scheduler.exec("python", "-", "2", "1m", input=TRAIN_SCRIPT.read_text(), timeout=300).stdout.split()
    assert len(models) == 2

    def predicted() -> bool:
        done = int(psql(compose, "SELECT count(DISTINCT model) FROM tasks WHERE state = 'done' AND rows > 0"))
        return done == len(models) and int(psql(compose, "SELECT count(*) FROM predictions")) > 0

    wait_until(predicted, timeout=150, what=f"predictions of {models} in compose's PostgreSQL", logs=compose.logs,
               every=2)
    assert psql(compose, "SELECT count(*) FROM tasks WHERE state = 'failed'") == "0", compose.logs()

    stop_began = time.monotonic()
    compose.run("stop", timeout=300)
    stopped = time.monotonic() - stop_began
    for name in latigo:
        container = Container.attach(name)
        assert container.state() == "exited", name
        assert container.exit_code() == 0, f"{name} did not stop cleanly:\n{container.logs()}"

    compose.run("down", "-v", timeout=300)
    assert compose.leftovers() == []
    REPORT.add("compose", f"build {built - began:.0f} s, up to 3 healthy latigo containers {up - built:.0f} s, "
                          f"stop {stopped:.0f} s; postgres, influxdb, migrate, scheduler, 2 executor replicas")
