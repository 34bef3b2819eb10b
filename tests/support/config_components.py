"""A plug-in component for config tests: one settings field of every supported kind.

Selected by type path ("tests.support.config_components:Thing"), so config tests do not
depend on any real adapter's schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

THING = "tests.support.config_components:Thing"


class Thing:
    @dataclass
    class Settings:
        name: str = "thing"
        count: int = 3
        ratio: float = 0.5
        enabled: bool = False
        every: timedelta = timedelta(minutes=1)
        tags: list[str] = field(default_factory=list)
        extra: dict = field(default_factory=dict)
        note: str | None = None
        limit: int | None = None
        connection_string: str | None = None
        password: str = ""
        token_url: str = "https://login.example.com/token"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: Settings, components: Any) -> Thing:
        return cls(settings)


# The embedded default implementation of each component section. While one is not importable
# (a fresh checkout being assembled), tests select Thing for that section instead.
DEFAULT_MODULES = {
    "task_queue": "latigo.queues.database",
    "sensor_data": "latigo.sensors.synthetic",
    "model_information": "latigo.models.local",
    "model_execution": "latigo.models.local",
}
