"""`latigo models ...`: the seed's model lifecycle (register, unregister, status) and the provider's own
check, over whichever ModelExecutionProvider / ModelInformationProvider is configured."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from latigo.errors import ConfigError
from latigo.factory import Components
from latigo.interfaces import CheckableProvider


def read_machine(path: Path) -> dict[str, Any]:
    """A machine description from a YAML or JSON file (Gordo's machine format: name, dataset, model, ...)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"models register: cannot read {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"models register: {path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                          f"{' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or not data.get("name"):
        raise ConfigError(f"models register: {path} must hold one machine, a mapping with at least a name")
    return data


def register(components: Components, machine: dict[str, Any]) -> str:
    components.model_execution.register_model(machine)
    return str(machine["name"])


def unregister(components: Components, name: str) -> None:
    components.model_execution.unregister_model(name)


def model_status(components: Components, name: str) -> dict[str, Any]:
    return asdict(components.model_execution.get_model_status(name))


def check_report(components: Components) -> str:
    provider = components.model_information
    if not isinstance(provider, CheckableProvider):
        raise ConfigError(f"models check: model_information type {components.config.model_information.type!r} "
                          "has no server to check (gordo does)")
    return provider.check_report()
