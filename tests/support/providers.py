"""Small, real implementations of the provider interfaces for testing the loop itself.

They are plugged in through config by import path ("tests.support.providers:StaticModels"),
exactly as a third-party provider would be; the queue, executor and storage under test are
the real code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from latigo.errors import PermanentError, TransientError, UnknownModelError
from latigo.interfaces import ModelExecutionProvider, ModelInformationProvider
from latigo.types import DEFAULT_PROJECT, ModelInfo, ModelRef, ModelStatus, PredictionFrame, PredictionRow

RESOLUTION = timedelta(minutes=10)
TAGS = ("tag-a", "tag-b")
OUTPUTS = ("model-output", "total-anomaly-scaled")


def expected_rows(start: datetime, end: datetime) -> int:
    """Rows StaticModels writes for one window: per step, one per tag for model-output plus one total."""
    steps = int((end - start) / RESOLUTION)
    return steps * (len(TAGS) + 1)


class StaticModels(ModelInformationProvider, ModelExecutionProvider):
    """Models named in config (`name`, or `project/name` for a project other than the default);
    predictions are a deterministic function of (model, tag, ts).

    Models named `transient-N-*` fail N times with a TransientError per task before succeeding
    (counted in this process), `broken-*` fail permanently, `crash-*` raise a plain bug."""

    @dataclass
    class Settings:
        models: list[str] = field(default_factory=lambda: ["m-1", "m-2"])
        sleep: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings, components: Any) -> StaticModels:
        return cls(settings.models, settings.sleep)

    def __init__(self, models: list[str], sleep: float = 0.0) -> None:
        self.models, self.sleep = [_ref(m) for m in models], sleep
        self.calls: dict[tuple[str, datetime], int] = {}
        """Runs per (model label: `name`, or `project/name` outside the default project, window start)."""
        self._lock = threading.Lock()

    def get_model_list(self) -> list[ModelRef]:
        return list(self.models)

    def model_exists(self, model: ModelRef) -> bool:
        return model in self.models

    def get_model_info(self, model: ModelRef) -> ModelInfo:
        if model not in self.models:
            raise UnknownModelError(f"unknown model {model.label!r}")
        return ModelInfo(name=model.name, tags=TAGS, target_tags=TAGS, resolution=RESOLUTION, project=model.project)

    def register_model(self, model_data: Mapping[str, Any]) -> None:
        self.models.append(ModelRef(model_data.get("project") or DEFAULT_PROJECT, model_data["name"]))

    def unregister_model(self, model: ModelRef) -> None:
        self.models.remove(model)

    def get_model_status(self, model: ModelRef) -> ModelStatus:
        return ModelStatus(model.name, "ready" if model in self.models else "unknown")

    def execute_model(self, model: ModelRef, start: datetime, end: datetime) -> PredictionFrame:
        name = model.name
        with self._lock:
            call = self.calls[(model.label, start)] = self.calls.get((model.label, start), 0) + 1
        if self.sleep:
            time.sleep(self.sleep)
        if name.startswith("transient-") and call <= int(name.split("-")[1]):
            raise TransientError(f"simulated outage {call}")
        if name.startswith("broken-"):
            raise PermanentError("simulated bad request: Unexpected features")
        if name.startswith("crash-"):
            raise KeyError("simulated bug")
        if model not in self.models:
            raise UnknownModelError(f"unknown model {model.label!r}")
        rows = []
        ts = start
        while ts < end:
            minute = ts.timestamp() / 60
            for index, tag in enumerate(TAGS):
                rows.append(PredictionRow("model-output", tag, ts, minute + index))
            rows.append(PredictionRow("total-anomaly-scaled", "total-anomaly-scaled", ts, minute / 2))
            rows.append(PredictionRow("model-input", TAGS[0], ts, 0.0))  # not a stored output by default
            ts += RESOLUTION
        return PredictionFrame(name, rows, project=model.project)


def _ref(text: str) -> ModelRef:
    """`name` (the default project) or `project/name`."""
    project, _, name = text.rpartition("/")
    return ModelRef(project or DEFAULT_PROJECT, name)
