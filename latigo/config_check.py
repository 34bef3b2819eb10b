"""`latigo check-config`: build every configured part the way start-up does, and (with --connect) ask
each one whether its peer answers.

Building finds what start-up would find — a missing Event Hub connection string, partial Azure AD
settings, a malformed URL — without touching the network. Probing connects: the database (and its
schema revision), the task queue, the model provider and the sensor source, each reported on its own line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from latigo.errors import LatigoError, describe_exception
from latigo.factory import Components

PARTS = ("engine", "task_queue", "sensor_data", "sensor_information", "model_information", "model_execution",
         "prediction_metadata", "prediction_sinks")
OPTIONAL_PARTS = frozenset({"prediction_metadata"})
"""Parts built only when configured."""
_LABELS = {"engine": "database", "prediction_sinks": "predictions.sinks"}


@dataclass
class Check:
    part: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"  {'ok  ' if self.ok else 'FAIL'} {self.part}: {self.detail}"


def build_all(components: Components) -> list[Check]:
    """Construct each configured part (nothing connects)."""
    checks = []
    for part in PARTS:
        label = _LABELS.get(part, part)
        if part in OPTIONAL_PARTS and getattr(components.config, part) is None:
            continue
        try:
            built = getattr(components, part)
        except LatigoError as exc:
            checks.append(Check(label, False, str(exc)))
            continue
        kind = getattr(components.config, part).type if hasattr(components.config, part) else type(built).__name__
        checks.append(Check(label, True, f"built ({kind})"))
    return checks


def probe_all(components: Components) -> list[Check]:
    """Connect to each peer and report what it says."""
    probes: list[tuple[str, Callable[[], str]]] = [
        ("database", lambda: _probe_database(components)),
        ("task_queue", lambda: components.task_queue.probe()),
        ("model_information", lambda: f"{len(components.model_information.get_model_list())} models listed"),
        ("sensor_information", lambda: f"{len(components.sensor_information.get_sensor_list())} sensors listed"),
    ]
    publisher = components.config.prediction_metadata
    if publisher is not None:
        probes.append(("prediction_metadata",
                       lambda: f"{len(components.prediction_metadata.client.projects())} projects listed"))  # type: ignore[union-attr]
    checks = []
    for part, probe in probes:
        try:
            checks.append(Check(part, True, probe()))
        except Exception as exc:  # every failure is a finding, reported on its line
            checks.append(Check(part, False, describe_exception(exc)))
    return checks


def _probe_database(components: Components) -> str:
    from latigo.storage import migrations
    from latigo.storage.db import database_location

    current, head = migrations.current_revision(components.engine), migrations.head_revision()
    state = "up to date" if current == head else f"behind {head}: run `latigo db upgrade`"
    where = database_location(components.config.database.url)
    if current != head:
        raise LatigoError(f"{where}: schema {current or 'empty'} ({state})")
    return f"{where}: schema {current} ({state})"
