"""Sensors listed in a YAML or CSV file (name[, description, unit, ...]): a SensorInformationProvider."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latigo.catalog_file import read_catalog
from latigo.interfaces import SensorInformationProvider


class SensorCatalog(SensorInformationProvider):
    @dataclass
    class Settings:
        path: str = "sensors.yaml"

    @classmethod
    def from_settings(cls, settings: Settings, components: Any = None) -> SensorCatalog:
        return cls(settings.path)

    def __init__(self, path: str) -> None:
        self.records = {str(r["name"]).strip(): r for _, r in read_catalog(path, "sensors", ["name"])}

    def get_sensor_list(self) -> list[str]:
        return list(self.records)

    def sensor_exists(self, name: str) -> bool:
        return name in self.records
