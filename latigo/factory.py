"""Config `type:` -> implementation, in one registry.

Implementations are named by import path and imported only when configured, so
a deployment that uses the database queue never imports the Event Hub SDK or confluent-kafka. A
`type` may also be a full "package.module:Class" path for a plug-in.
Every implementation class carries a `Settings` dataclass (its config schema)
and a `from_settings(settings, components)` constructor.
"""

from __future__ import annotations

import importlib
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

from latigo.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from latigo.interfaces import (
        ModelExecutionProvider,
        ModelInformationProvider,
        SensorDataProvider,
        SensorInformationProvider,
        TaskQueue,
    )
    from latigo.lifecycle import TaskLifecycle
    from latigo.prediction_metadata import MetadataPublisher
    from latigo.settings import Config
    from latigo.sinks import SinkSet
    from latigo.storage.prediction_store import PredictionStore

REGISTRY: dict[str, dict[str, str]] = {
    "task_queue": {
        "database": "latigo.queues.database:DatabaseTaskQueue",
        "eventhub": "latigo.queues.eventhub:EventHubTaskQueue",
        "kafka": "latigo.queues.kafka:KafkaTaskQueue",
    },
    "sensor_data": {
        "synthetic": "latigo.sensors.synthetic:SyntheticSensors",
        "influx": "latigo.sensors.influx:InfluxSensors",
        "data_api": "latigo.sensors.data_api:DataApiSensors",
    },
    "sensor_information": {
        "synthetic": "latigo.sensors.synthetic:SyntheticSensors",
        "influx": "latigo.sensors.influx:InfluxSensors",
        "data_api": "latigo.sensors.data_api:DataApiSensors",
        "catalog": "latigo.sensors.catalog:SensorCatalog",
    },
    "model_information": {
        "local": "latigo.models.local:LocalModels",
        "gordo": "latigo.models.gordo_projects:GordoProjects",
        "catalog": "latigo.models.catalog:ModelCatalog",
    },
    "model_execution": {
        "local": "latigo.models.local:LocalModels",
        "gordo": "latigo.models.gordo_projects:GordoProjects",
    },
    "prediction_metadata": {
        "metadata_api": "latigo.prediction_metadata:MetadataPublisher",
    },
    "prediction_sink": {
        "influx": "latigo.sensors.influx_sink:InfluxPredictionSink",
        "data_api": "latigo.sensors.data_api_sink:DataApiPredictionSink",
    },
}


def implementation(section: str, kind: str, where: str = "") -> type[Plugin]:
    """The class for `kind` in `section`; an unknown kind is a ConfigError listing the known ones."""
    known = REGISTRY.get(section, {})
    target = known.get(kind) or (kind if ":" in kind else None)
    label = where or f"{section}.type"
    if target is None:
        names = ", ".join(sorted(known)) or "none"
        raise ConfigError(f"{label}: unknown type {kind!r}; known types: {names} (or a 'package.module:Class' path)")
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{label}: type {kind!r} cannot be loaded: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{label}: type {kind!r}: {module_name} has no {class_name}")
    missing = [name for name in ("Settings", "from_settings") if not hasattr(cls, name)]
    if missing:
        raise ConfigError(f"{label}: type {kind!r}: {target} lacks {' and '.join(missing)} (a plug-in needs a "
                          "Settings dataclass and a from_settings(settings, components) constructor)")
    return cast("type[Plugin]", cls)


def settings_class(section: str, kind: str, where: str = "") -> type:
    return implementation(section, kind, where).Settings


class Plugin(Protocol):
    """What every configurable part provides: its settings schema and how to build it from them (with the
    other parts at hand, e.g. the engine or the sensor provider)."""

    Settings: ClassVar[type]

    @classmethod
    def from_settings(cls, settings: Any, components: Components) -> Any: ...


class Components:
    """Builds each configured part once, on first use, and hands parts to each other
    (the Gordo executor needs the sensor provider, the local models need the database)."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def _build(self, section: str) -> Any:
        component = getattr(self.config, section)
        cls = implementation(section, component.type)
        return cls.from_settings(component.settings, self)

    @cached_property
    def engine(self) -> Engine:
        from latigo.storage.db import create_engine_for

        return create_engine_for(self.config.database)

    @cached_property
    def lifecycle(self) -> TaskLifecycle:
        from latigo.lifecycle import TaskLifecycle

        return TaskLifecycle(self.engine, self.prediction_store)

    @cached_property
    def prediction_store(self) -> PredictionStore:
        from latigo.storage.prediction_store import PredictionStore

        return PredictionStore(self.engine, self.config.predictions.partition_size)

    @cached_property
    def task_queue(self) -> TaskQueue:
        return self._build("task_queue")

    @cached_property
    def sensor_data(self) -> SensorDataProvider:
        return self._build("sensor_data")

    @cached_property
    def sensor_information(self) -> SensorInformationProvider:
        same = self.config.sensor_information == self.config.sensor_data
        return self.sensor_data if same else self._build("sensor_information")  # type: ignore[return-value]

    @cached_property
    def model_execution(self) -> ModelExecutionProvider:
        return self._build("model_execution")

    @cached_property
    def model_information(self) -> ModelInformationProvider:
        same = self.config.model_information == self.config.model_execution
        return self.model_execution if same else self._build("model_information")  # type: ignore[return-value]

    @cached_property
    def prediction_metadata(self) -> MetadataPublisher | None:
        """Who tells the Metadata API about a model's series (`prediction_metadata:`); None when not configured."""
        if self.config.prediction_metadata is None:
            return None
        return self._build("prediction_metadata")

    @cached_property
    def prediction_sinks(self) -> SinkSet:
        from latigo.sinks import SinkSet

        sinks = []
        for index, component in enumerate(self.config.predictions.sinks):
            cls = implementation("prediction_sink", component.type, f"predictions.sinks[{index}].type")
            sinks.append((cls.from_settings(component.settings, self), component.required))
        return SinkSet(sinks)
