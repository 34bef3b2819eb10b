"""Models listed in a YAML or CSV file: a ModelInformationProvider for models served elsewhere.

Columns/keys: name, tags (list, or ';'-separated in CSV), optional target_tags,
resolution (10m or Gordo's 10T; default 10m), model_offset (default 0), project (default
`default`: a catalog may list several projects, and the same name in two of them is two models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from latigo.catalog_file import read_catalog, split_list
from latigo.durations import parse_resolution
from latigo.errors import ConfigError, PermanentError, UnknownModelError
from latigo.interfaces import ModelInformationProvider
from latigo.types import DEFAULT_PROJECT, ModelInfo, ModelRef


class ModelCatalog(ModelInformationProvider):
    @dataclass
    class Settings:
        path: str = "models.yaml"

    @classmethod
    def from_settings(cls, settings: Settings, components: Any = None) -> ModelCatalog:
        return cls(settings.path)

    def __init__(self, path: str) -> None:
        self.models: dict[ModelRef, ModelInfo] = {}
        for label, record in read_catalog(path, "models", ["name", "tags"], scope="project"):
            try:
                info = _model_info(record)
            except (ValueError, PermanentError) as exc:
                raise ConfigError(f"catalog {path} {label}: {exc}") from None
            self.models[ModelRef(info.project, info.name)] = info

    def get_model_list(self) -> list[ModelRef]:
        return list(self.models)

    def model_exists(self, model: ModelRef) -> bool:
        return model in self.models

    def get_model_info(self, model: ModelRef) -> ModelInfo:
        try:
            return self.models[model]
        except KeyError:
            raise UnknownModelError(f"model {str(model)!r} is not in the catalog") from None


def _model_info(record: dict[str, Any]) -> ModelInfo:
    tags = tuple(split_list(record["tags"]))
    targets = tuple(split_list(record.get("target_tags"))) or tags
    offset = int(record.get("model_offset") or 0)
    if offset < 0:
        raise ValueError(f"model_offset {offset} is negative")
    return ModelInfo(name=str(record["name"]).strip(), tags=tags, target_tags=targets,
                     resolution=parse_resolution(record.get("resolution") or "10m"),
                     project=str(record.get("project") or "").strip() or DEFAULT_PROJECT, model_offset=offset)
