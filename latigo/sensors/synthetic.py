"""Deterministic synthetic sensors: the demo's data, and a data source needing no server.

Sensors come in correlated groups: every sensor of a group follows the group's
daily cycle and slow drift with its own gain and offset, plus noise. An injected
anomaly shifts one sensor (or a whole group) for a while, breaking the correlation
a model learnt. Values are a pure function of (seed, sensor, minute), so any range
asked twice, or in pieces, gives the same numbers.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from latigo.errors import ConfigError
from latigo.interfaces import SensorDataProvider, SensorInformationProvider, check_aggregation
from latigo.types import SensorFrame, TimeRange, parse_timestamp

if TYPE_CHECKING:
    import pandas as pd

SAMPLE = timedelta(minutes=1)
DAY_MINUTES = 1440.0
LONGEST_DRIFT_DAYS = 7
"""A group's slow drift repeats every 3 to this many days."""


@dataclass(frozen=True)
class Anomaly:
    sensor: str
    window: TimeRange
    magnitude: float


class SyntheticSensors(SensorInformationProvider, SensorDataProvider):
    @dataclass
    class Settings:
        groups: int = 4
        sensors_per_group: int = 5
        seed: int = 42
        noise: float = 0.03
        prefix: str = "sensor"
        anomalies: list[dict] = field(default_factory=list)
        """Each {sensor: NAME (or a group prefix like "sensor-g0"), start: ISO, end: ISO, magnitude: 0.5}."""

    @classmethod
    def from_settings(cls, settings: Settings, components: Any = None) -> SyntheticSensors:
        return cls(settings)

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or self.Settings()
        if self.settings.groups < 1 or self.settings.sensors_per_group < 1:
            raise ConfigError("sensor_data: groups and sensors_per_group must be at least 1")
        self.sensors = [f"{self.settings.prefix}-g{g}-{i}" for g in range(self.settings.groups)
                        for i in range(self.settings.sensors_per_group)]
        self._known = set(self.sensors)
        self.anomalies = [self._parse_anomaly(i, raw) for i, raw in enumerate(self.settings.anomalies)]

    def _parse_anomaly(self, index: int, raw: Mapping[str, Any]) -> Anomaly:
        where = f"sensor_data.anomalies[{index}]"
        try:
            window = TimeRange(parse_timestamp(str(raw["start"])), parse_timestamp(str(raw["end"])))
            sensor = str(raw["sensor"])
            magnitude = float(raw.get("magnitude", 0.5))
        except KeyError as exc:
            raise ConfigError(f"{where}: missing {exc.args[0]!r} (needs sensor, start, end)") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if not any(name == sensor or name.startswith(sensor + "-") for name in self.sensors):
            raise ConfigError(f"{where}: no sensor {sensor!r} (sensors look like {self.sensors[0]!r})")
        return Anomaly(sensor, window, magnitude)

    # ------------------------------------------------------------------ information
    def get_sensor_list(self) -> list[str]:
        return list(self.sensors)

    def sensor_exists(self, name: str) -> bool:
        return name in self._known

    # ------------------------------------------------------------------ data
    def get_native_range_specifier(self, start: datetime, end: datetime, parameters: Mapping[str, Any]) -> str:
        sensors = list(parameters.get("sensors", self.sensors))
        resolution = parameters.get("resolution", SAMPLE)
        return (f"synthetic(seed={self.settings.seed}, sensors={sensors}, start={start.isoformat()}, "
                f"end={end.isoformat()}, resolution={int(resolution.total_seconds())}s, mean of 1-minute samples)")

    def get_data_for_range(
        self, start: datetime, end: datetime, sensors: Sequence[str], resolution: timedelta,
        aggregation: str = "mean",
    ) -> SensorFrame:
        window = TimeRange(start, end)
        if resolution < SAMPLE or resolution % SAMPLE:
            raise ValueError(f"synthetic sensors: resolution {resolution} must be a whole number of minutes")
        present = [s for s in sensors if s in self._known]
        missing = tuple(s for s in sensors if s not in self._known)
        import pandas as pd  # here, not at import: `latigo status` loads this module to check the config

        minutes = pd.date_range(pd.Timestamp(window.start).ceil(SAMPLE), window.end, freq=SAMPLE, inclusive="left")
        samples = pd.DataFrame({name: self._samples(name, minutes) for name in present}, index=minutes, dtype=float)
        buckets = samples.resample(resolution, origin="epoch", label="left", closed="left").agg(
            check_aggregation(aggregation))
        return SensorFrame(buckets, missing)

    def _samples(self, name: str, minutes: pd.DatetimeIndex) -> np.ndarray:
        group, member = _group_and_member(name)
        rng = np.random.default_rng([self.settings.seed, group])
        phase, drift_period = rng.uniform(0, 2 * np.pi), rng.uniform(3, LONGEST_DRIFT_DAYS) * DAY_MINUTES
        member_rng = np.random.default_rng([self.settings.seed, group, member])
        gain, offset = member_rng.uniform(0.5, 1.5), member_rng.uniform(-1, 1)
        t = minutes.as_unit("s").asi8 // 60  # minutes since the epoch
        base = np.sin(2 * np.pi * t / DAY_MINUTES + phase) + 0.4 * np.sin(2 * np.pi * t / drift_period)
        values = offset + gain * base + self.settings.noise * _hash_noise(t, zlib.crc32(name.encode()))
        for anomaly in self.anomalies:
            if anomaly.sensor == name or name.startswith(anomaly.sensor + "-"):
                inside = (minutes >= anomaly.window.start) & (minutes < anomaly.window.end)
                values = values + np.where(inside, anomaly.magnitude * gain * 2, 0.0)
        return values


def _group_and_member(name: str) -> tuple[int, int]:
    group_part, member = name.rsplit("-", 2)[-2:]
    return int(group_part[1:]), int(member)


def _hash_noise(t: np.ndarray, salt: int) -> np.ndarray:
    """Noise in [-1, 1] that depends only on (minute, sensor): the same minute always gives the same value."""
    x = (t.astype(np.uint64) * np.uint64(2654435761) + np.uint64(salt)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(2246822519)) & np.uint64(0xFFFFFFFF)
    x ^= x >> np.uint64(13)
    return x.astype(np.float64) / 0xFFFFFFFF * 2 - 1
