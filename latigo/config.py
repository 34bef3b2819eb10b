"""latigo's configuration: built-in defaults < YAML file < LATIGO_* environment.

Everything is validated at load into typed dataclasses, so a typo or a bad value
stops the program at start with one line naming the key (and file:line) rather
than failing an hour later inside a worker. Every value remembers where it came
from, which `latigo check-config` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from latigo.durations import format_duration, parse_duration
from latigo.errors import ConfigError
from latigo.secrets import is_secret_key, mask_url, register_secret

ENV_PREFIX = "LATIGO_"
CONFIG_FILE_ENV = "LATIGO_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "local_config.yaml"
# The seed's variable names, kept so existing deployments work unchanged.
ENV_ALIASES = {
    "LATIGO_INTERNAL_EVENT_HUB": ("task_queue", "connection_string"),
    "LATIGO_INTERNAL_DATABASE": ("database", "url"),
}
COMPONENT_SECTIONS = ("task_queue", "sensor_information", "sensor_data", "model_information", "model_execution")
DEFAULT_OUTPUTS = (
    "model-output",
    "total-anomaly-scaled",
    "tag-anomaly-scaled",
    "anomaly-confidence",
    "total-anomaly-confidence",
)


def _spec(default: Any = dataclasses.MISSING, *, factory: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with validation rules (min, choices) kept in its metadata."""
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class DatabaseSettings:
    url: str = "sqlite:///latigo.db"
    pool_size: int = _spec(10, min=1)
    connect_timeout: timedelta = timedelta(seconds=10)


@dataclass
class SchedulerSettings:
    start_time: str = "00:00"
    """Anchor of the tick grid: a UTC time of day "HH:MM" or an ISO 8601 instant."""
    interval: timedelta = timedelta(minutes=30)
    delay: timedelta = timedelta(minutes=5)
    """Data latency: a window is scheduled only once its data is this old."""
    run_at_once: bool = False
    catch_up_limit: timedelta = timedelta(hours=24)
    batch_size: int = _spec(1000, min=1)
    check_interval: timedelta = timedelta(seconds=10)
    """How often the loop wakes to look for due windows and model changes."""


@dataclass
class ExecutorSettings:
    concurrency: int = _spec(8, min=1)
    max_attempts: int = _spec(5, min=1)
    retry_base_delay: timedelta = timedelta(seconds=2)
    retry_max_delay: timedelta = timedelta(minutes=5)
    shutdown_timeout: timedelta = timedelta(seconds=30)
    poll_timeout: timedelta = timedelta(seconds=2)


@dataclass
class PredictionSettings:
    outputs: list[str] = _spec(factory=lambda: list(DEFAULT_OUTPUTS))
    """Which of the model's output groups are stored."""
    sinks: list[Any] = _spec(factory=list)
    """Extra destinations besides the database, each {type: ..., options...}; ComponentSettings once loaded."""


@dataclass
class LoggingSettings:
    level: str = _spec("INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
    format: str = _spec("text", choices=("text", "json"))


@dataclass
class MetricsSettings:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = _spec(9100, min=0)


@dataclass
class ComponentSettings:
    """A pluggable part: `type` picks the implementation, the other keys are its typed settings."""

    type: str
    settings: Any


@dataclass
class Config:
    database: DatabaseSettings
    task_queue: ComponentSettings
    scheduler: SchedulerSettings
    executor: ExecutorSettings
    sensor_information: ComponentSettings
    sensor_data: ComponentSettings
    model_information: ComponentSettings
    model_execution: ComponentSettings
    predictions: PredictionSettings
    logging: LoggingSettings
    metrics: MetricsSettings
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """Dotted key -> where its value came from: "default", "file <path>:<line>" or "env <VAR>"."""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    """The merged plain mapping the settings were built from (for printing)."""


PLAIN_SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "scheduler": SchedulerSettings,
    "executor": ExecutorSettings,
    "predictions": PredictionSettings,
    "logging": LoggingSettings,
    "metrics": MetricsSettings,
}
DEFAULT_COMPONENTS: dict[str, dict[str, Any]] = {
    "task_queue": {"type": "database"},
    "sensor_data": {"type": "synthetic"},
    "model_information": {"type": "local"},
    "model_execution": {"type": "local"},
}


class EnvText(str):
    """A value from the environment: text to be parsed into the target type (a file value is already typed)."""


@dataclass
class _Source:
    label: str
    line: int | None = None

    def where(self) -> str:
        return f"{self.label}:{self.line}" if self.line else self.label


# ---------------------------------------------------------------- YAML reading


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's base-60 numbers, so `start_time: 12:30` stays a string."""


_ConfigLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(0|[1-9][0-9_]*|0x[0-9a-fA-F_]+|0o[0-7_]+)$"), list("-+0123456789")
)
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d[\d_]*\.\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"),
    list("-+0123456789."),
)


def read_yaml_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping and the line (1-based) of every dotted key in it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        node = yaml.compose(text, Loader=_ConfigLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: broken YAML: {exc.problem}") from exc
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the config file must be a mapping of sections")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines)
    return yaml.load(text, Loader=_ConfigLoader) or {}, lines


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        lines[key] = key_node.start_mark.line + 1
        _collect_lines(value_node, key + ".", lines)


# ---------------------------------------------------------------- merging sources


def find_config_file(explicit: str | os.PathLike | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $LATIGO_CONFIG_FILE, else ./local_config.yaml when it exists."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


def env_overrides(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], EnvText, str]]:
    """(key path, value, variable) for every LATIGO_<SECTION>__<KEY>[__<KEY>...] and seed alias."""
    found = []
    for name, (section, key) in ENV_ALIASES.items():
        if name in env:
            found.append(((section, key), EnvText(env[name]), name))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        parts = tuple(p.lower() for p in name[len(ENV_PREFIX) :].split("__"))
        if any(not p for p in parts):
            raise ConfigError(f"environment variable {name}: empty key between '__' separators")
        found.append((parts, EnvText(env[name]), name))
    return found


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any, where: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(path)}: {part!r} is a value, not a section")
        node = child
    node[path[-1]] = value


def merge_sources(
    file_data: Mapping[str, Any], file_lines: Mapping[str, int], file_label: str, env: Mapping[str, str]
) -> tuple[dict[str, Any], dict[str, _Source]]:
    """Defaults, then the file, then the environment; returns the tree and each leaf's source."""
    tree: dict[str, Any] = {section: dataclasses.asdict(cls()) for section, cls in PLAIN_SECTIONS.items()}
    tree.update({section: dict(values) for section, values in DEFAULT_COMPONENTS.items()})
    sources: dict[str, _Source] = {}
    _mark(tree, "", _Source("default"), sources)
    for section, values in file_data.items():
        if not isinstance(section, str):
            raise ConfigError(f"{file_label}: section name {section!r} is not text")
        if section in COMPONENT_SECTIONS and isinstance(values, dict) and "type" in values:
            # A new type replaces the default component wholesale: its keys are another schema.
            if values["type"] != tree.get(section, {}).get("type"):
                tree.pop(section, None)
                sources = {k: v for k, v in sources.items() if not k.startswith(section + ".")}
        _merge_into(tree, (section,), values, file_label, file_lines, sources)
    for path, value, variable in env_overrides(env):
        where = f"env {variable}"
        _set_path(tree, path, value, where)
        sources[".".join(path)] = _Source(where)
    return tree, sources


def _merge_into(tree, path, value, label, lines, sources) -> None:
    dotted = ".".join(path)
    if isinstance(value, dict) and value:
        existing = tree
        for part in path:
            existing = existing.setdefault(part, {}) if isinstance(existing, dict) else existing
        if not isinstance(existing, dict):
            _set_path(tree, path, {}, label)
        for key, sub in value.items():
            _merge_into(tree, (*path, str(key)), sub, label, lines, sources)
        return
    _set_path(tree, path, value, label)
    sources[dotted] = _Source(label, lines.get(dotted))


def _mark(tree: Mapping[str, Any], prefix: str, source: _Source, sources: dict[str, _Source]) -> None:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _mark(value, dotted + ".", source, sources)
        else:
            sources[dotted] = source


# ---------------------------------------------------------------- typed building


def build_dataclass(cls: type, data: Any, path: str, sources: Mapping[str, _Source]) -> Any:
    """Turn a mapping into `cls`, checking every key and value; errors name the key and its source."""
    if not isinstance(data, Mapping):
        raise ConfigError(_located(path, sources, f"expected a section (mapping), got {_describe(data)}"))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ConfigError(_located(f"{path}.{key}", sources, "unknown key" + _did_you_mean(str(key), fields)))
    values = {}
    for name, fld in fields.items():
        key = f"{path}.{name}"
        if name in data:
            values[name] = _convert(data[name], hints[name], key, sources)
            _check_rules(values[name], fld.metadata, key, sources)
            if is_secret_key(name) and isinstance(values[name], str):
                register_secret(values[name])
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(_located(key, sources, "is required"))
    return cls(**values)


def _convert(value: Any, target: Any, key: str, sources: Mapping[str, _Source]) -> Any:
    """Coerce `value` to the annotated type; environment text is parsed, file values must already fit."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(target) if t is not type(None)]
        if value is None or (isinstance(value, EnvText) and value.strip().lower() in ("", "null", "none", "~")):
            return None
        return _convert(value, options[0], key, sources)
    from_env = isinstance(value, EnvText)
    try:
        if target is timedelta:
            if isinstance(value, timedelta):
                return value
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return timedelta(seconds=value)
            return parse_duration(value)
        if target is str:
            if isinstance(value, str):
                return str(value)
            raise ValueError
        if from_env:
            value = yaml.load(value, Loader=_ConfigLoader) if value.strip() else ""
        if target is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if target is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise ValueError
        if target is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise ValueError
        if origin is list or target is list:
            if from_env and isinstance(value, str):
                value = [item.strip() for item in value.split(",") if item.strip()]
            if not isinstance(value, list):
                raise ValueError
            (item_type,) = typing.get_args(target) or (Any,)
            return [v if item_type is Any else _convert(v, item_type, f"{key}[{i}]", sources) for i, v in enumerate(value)]
        if origin is dict or target is dict:
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        if target is Any:
            return value
    except ValueError as exc:
        detail = str(exc) if str(exc) else f"expected {_type_name(target)}, got {_describe(value)}"
        raise ConfigError(_located(key, sources, detail)) from None
    raise ConfigError(_located(key, sources, f"unsupported setting type {target!r}"))


def _check_rules(value: Any, rules: Mapping[str, Any], key: str, sources: Mapping[str, _Source]) -> None:
    if "min" in rules and value is not None and value < rules["min"]:
        raise ConfigError(_located(key, sources, f"must be at least {rules['min']}, got {value}"))
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(
            _located(key, sources, f"must be one of {', '.join(rules['choices'])}, got {value!r}"
                     + _did_you_mean(str(value), rules["choices"]))
        )


def _type_name(target: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text", timedelta: "a duration like 30m"}
    if target in names:
        return names[target]
    origin = typing.get_origin(target) or target
    return {list: "a list", dict: "a mapping"}.get(origin, str(target))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, EnvText) else repr(str(value))


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _located(key: str, sources: Mapping[str, _Source], message: str) -> str:
    source = sources.get(key) or _nearest_source(key, sources)
    if source is None or source.label == "default":
        return f"{key}: {message}"
    if source.label.startswith("env "):
        return f"{key} ({source.label}): {message}"
    return f"{source.where()}: {key}: {message}"


def _nearest_source(key: str, sources: Mapping[str, _Source]) -> _Source | None:
    while "." in key:
        key = key.rsplit(".", 1)[0]
        if key in sources:
            return sources[key]
    return next((s for k, s in sources.items() if k.startswith(key + ".")), None)


# ---------------------------------------------------------------- loading


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load, merge and validate; raises ConfigError with a one-line message on any problem."""
    env = os.environ if env is None else env
    file_path = find_config_file(path, env)
    file_data: dict[str, Any] = {}
    file_lines: dict[str, int] = {}
    label = "file"
    if file_path is not None:
        label = f"file {file_path}"
        file_data, file_lines = read_yaml_file(file_path)
    tree, sources = merge_sources(file_data, file_lines, label, env)
    if "sensor_information" not in tree:
        tree["sensor_information"] = dict(tree["sensor_data"])
        for key, source in list(sources.items()):
            if key.startswith("sensor_data."):
                sources["sensor_information." + key.split(".", 1)[1]] = source
    known = [*PLAIN_SECTIONS, *COMPONENT_SECTIONS]
    for section in tree:
        if section not in known:
            raise ConfigError(_located(section, sources, "unknown section" + _did_you_mean(section, known)))
    built = {name: build_dataclass(cls, tree[name], name, sources) for name, cls in PLAIN_SECTIONS.items()}
    for section in COMPONENT_SECTIONS:
        built[section] = build_component(section, tree[section], sources)
    built["predictions"].sinks = [
        build_component("prediction_sink", raw, sources, f"predictions.sinks[{index}]")
        for index, raw in enumerate(built["predictions"].sinks)
    ]
    register_secret_url(built["database"].url)
    return Config(**built, sources={k: v.where() for k, v in sources.items()}, raw=tree)


def build_component(
    section: str, data: Any, sources: Mapping[str, _Source], path: str | None = None
) -> ComponentSettings:
    """Validate a pluggable section against the settings class of the implementation its `type` names.

    `section` is the registry section; `path` the dotted key it sits at (defaults to `section`)."""
    from latigo.factory import settings_class  # the registry imports implementations lazily

    path = path or section
    if not isinstance(data, Mapping):
        raise ConfigError(_located(path, sources, f"expected a section (mapping), got {_describe(data)}"))
    kind = data.get("type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError(_located(f"{path}.type", sources, "is required: which implementation to use"))
    settings_cls = settings_class(section, kind, where=_located(f"{path}.type", sources, "").rstrip(": "))
    options = {k: v for k, v in data.items() if k != "type"}
    return ComponentSettings(type=kind, settings=build_dataclass(settings_cls, options, path, sources))


def register_secret_url(url: str) -> None:
    from urllib.parse import urlsplit

    password = urlsplit(url).password
    if password:
        register_secret(password)


# ---------------------------------------------------------------- printing


def masked_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy with every secret value replaced, fit for printing or logging."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = masked_tree(value, f"{prefix}{key}.")
        elif is_secret_key(str(key)) and value not in (None, ""):
            out[key] = "***"
        elif isinstance(value, str) and "://" in value:
            out[key] = mask_url(value)
        elif isinstance(value, timedelta):
            out[key] = format_duration(value)
        else:
            out[key] = value
    return out


def describe_config(config: Config) -> str:
    """The effective config as YAML, secrets masked, each leaf followed by where it came from."""
    lines: list[str] = []
    _describe_tree(masked_tree(config.raw), "", 0, config.sources, lines)
    return "\n".join(lines) + "\n"


def _describe_tree(tree, prefix, depth, sources, lines) -> None:
    pad = "  " * depth
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            _describe_tree(value, dotted + ".", depth + 1, sources, lines)
            continue
        rendered = yaml.safe_dump({key: _plain(value)}, default_flow_style=True, width=10_000).strip()[1:-1]
        lines.append(f"{pad}{rendered}  # {sources.get(dotted, 'default')}")


def _plain(value: Any) -> Any:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, EnvText):
        return str(value)
    return value
