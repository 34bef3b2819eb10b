"""Fixtures of the container tests: the stand-in base images and the latigo image, built once a session
from the repository's unmodified Dockerfile with podman (see tests/support/containers.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support import containers

IMAGE = "localhost/latigo-test:latest"


@dataclass
class StageReport:
    """Timings and sizes the container tests print at the end of the run."""

    lines: dict[str, str] = field(default_factory=dict)

    def add(self, key: str, text: str) -> None:
        self.lines[key] = text


REPORT = StageReport()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT.lines:
        terminalreporter.section("container stage")
        for key, text in REPORT.lines.items():
            terminalreporter.write_line(f"{key}: {text}")


@pytest.fixture(scope="session")
def podman_ready() -> None:
    reason = containers.unavailable_reason()
    if reason:
        pytest.skip(f"containers: {reason}")


@pytest.fixture(scope="session")
def base_images(podman_ready: None) -> None:
    """python:3.11-slim, postgres:16 and influxdb:1.8 stand-ins (cached in podman's store)."""
    began = time.monotonic()
    cached = all(containers.image_exists(r) for r in (containers.PYTHON_BASE, containers.POSTGRES,
                                                       containers.INFLUXDB))
    containers.ensure_base_images()
    if not cached:
        REPORT.add("stand-in base images", f"built in {time.monotonic() - began:.0f} s")


@pytest.fixture(scope="session")
def latigo_image(base_images: None) -> str:
    """The latigo image, built from the repository's Dockerfile (docker format, host network)."""
    built = containers.build(containers.REPO, IMAGE)
    size = containers.image_size(IMAGE)
    base = containers.image_size(containers.PYTHON_BASE)
    warm = built.step_was_cached("pip install -r /tmp/requirements.txt")
    kind = "warm: dependency layer from cache" if warm else "cold"
    REPORT.add("latigo image build", f"{built.seconds:.1f} s ({kind})")
    REPORT.add("latigo image size", f"{size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB over the "
                                    f"{base / 1e6:.0f} MB python:3.11-slim stand-in)")
    return IMAGE


@pytest.fixture
def container_cleanup() -> Iterator[list[containers.Container]]:
    """Containers appended here are removed after the test, whatever happened."""
    started: list[containers.Container] = []
    yield started
    for container in started:
        container.remove()
