"""Fixtures for integration tests that need a server of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.influxd import InfluxServer, serve_for_tests


@pytest.fixture(scope="session")
def influxd() -> Iterator[InfluxServer]:
    """A throwaway influxd on free loopback ports for the whole session, stopped by PID at the end."""
    yield from serve_for_tests()
