"""`latigo models ...`: the seed's model lifecycle (register, unregister, status) and the provider's own
check, over whichever ModelExecutionProvider / ModelInformationProvider is configured."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from latigo.errors import ConfigError
from latigo.factory import Components
from latigo.interfaces import CheckableProvider
from latigo.scheduler import as_refs
from latigo.types import DEFAULT_PROJECT, ModelRef


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


def model_ref(components: Components, text: str) -> ModelRef:
    """`PROJECT/NAME`, or `NAME` where the configuration names one project."""
    project, slash, name = text.rpartition("/")
    if slash:
        return ModelRef(project, name)
    sole = components.config.sole_project()
    if sole is None:
        raise ConfigError(f"model {text!r}: the model provider serves several projects; name it as PROJECT/{text}")
    return ModelRef(sole, text)


def unregister(components: Components, name: str) -> None:
    components.model_execution.unregister_model(model_ref(components, name))


def model_status(components: Components, name: str) -> dict[str, Any]:
    ref = model_ref(components, name)
    return {"project": ref.project, **asdict(components.model_execution.get_model_status(ref))}


def model_list(components: Components, projects: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The listed models by project (only `projects` when given), sorted."""
    grouped: dict[str, list[str]] = {}
    for ref in sorted(as_refs(components.model_information.get_model_list())):
        if not projects or ref.project in projects:
            grouped.setdefault(ref.project, []).append(ref.name)
    return grouped


def format_model_list(grouped: dict[str, list[str]]) -> str:
    """One block per project: its name and count, then its models (a single default project: names only)."""
    if list(grouped) in ([], [DEFAULT_PROJECT]):
        return "".join(f"{name}\n" for name in grouped.get(DEFAULT_PROJECT, []))
    lines = []
    for project, names in grouped.items():
        lines.append(f"{project} ({len(names)} models)")
        lines.extend(f"  {name}" for name in names)
    return "\n".join(lines) + "\n"


def check_report(components: Components) -> str:
    provider = components.model_information
    if not isinstance(provider, CheckableProvider):
        raise ConfigError(f"models check: model_information type {components.config.model_information.type!r} "
                          "has no server to check (gordo does)")
    return provider.check_report()
