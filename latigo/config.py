"""latigo's configuration: built-in defaults < YAML file < LATIGO_* environment.

Everything is validated at load into typed dataclasses, so a typo or a bad value
stops the program at start with one line naming the key (and file:line) rather
than failing an hour later inside a worker. Every value remembers where it came
from, which `latigo check-config` prints.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from latigo.durations import format_duration, parse_duration
from latigo.errors import ConfigError
from latigo.secrets import MASK, is_secret_key, mask_text, mask_url, register_secret
from latigo.settings import (
    AlertSettings,
    ComponentSettings,
    Config,
    DatabaseSettings,
    ExecutorSettings,
    LoggingSettings,
    MetricsSettings,
    PredictionSettings,
    RetentionSettings,
    SchedulerSettings,
)

ENV_PREFIX = "LATIGO_"
CONFIG_FILE_ENV = "LATIGO_CONFIG_FILE"
DEFAULT_CONFIG_FILE = "local_config.yaml"
# The seed's variable names, kept so existing deployments work unchanged.
EVENT_HUB_ALIAS = "LATIGO_INTERNAL_EVENT_HUB"
ENV_ALIASES = {
    EVENT_HUB_ALIAS: ("task_queue", "connection_string"),
    "LATIGO_INTERNAL_DATABASE": ("database", "url"),
}
PROCESS_VARIABLES = frozenset({
    CONFIG_FILE_ENV, "LATIGO_ROLE", "LATIGO_EXECUTORS", "LATIGO_METRICS_BASE_PORT", "LATIGO_RUN_DIR",
    "LATIGO_MIGRATE", "LATIGO_SCHEDULER_AUTOSTART", "LATIGO_EXECUTOR_AUTOSTART", "LATIGO_SUPERVISORD_CONF",
})
"""LATIGO_* variables that are not config keys: the container entrypoint's and supervisord's."""
RESERVED_PREFIXES = ("LATIGO_TEST_",)
"""LATIGO_* names kept for the test suite."""
COMPONENT_SECTIONS = ("task_queue", "sensor_information", "sensor_data", "model_information", "model_execution")
OPTIONAL_COMPONENT_SECTIONS = ("prediction_metadata",)
"""Component sections that are absent unless configured."""
PLAIN_SECTIONS: dict[str, type] = {
    "database": DatabaseSettings,
    "scheduler": SchedulerSettings,
    "executor": ExecutorSettings,
    "predictions": PredictionSettings,
    "retention": RetentionSettings,
    "alerts": AlertSettings,
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
    """SafeLoader with YAML 1.2's numbers and no timestamps, so `start_time: 12:30` (a base-60 integer in
    YAML 1.1) and `start_time: 2024-01-01T00:00:00Z` (a datetime) both stay the text that was written."""


_ConfigLoader.yaml_implicit_resolvers = {
    key: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp")
    ]
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


def parse_yaml_text(text: str) -> Any:
    """One YAML value read with latigo's rules (how environment values are parsed)."""
    return yaml.load(text, Loader=_ConfigLoader)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def read_yaml_file(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The file's mapping and the line (1-based) of every dotted key in it."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read config file {path}: {reason}") from exc
    loader = _ConfigLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{path}{_yaml_problem(exc)}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: broken YAML: {_one_line(str(exc))}") from exc
    finally:
        loader.dispose()
    if node is None:
        return {}, {}
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}:{node.start_mark.line + 1}: the config file must be a mapping of sections")
    lines: dict[str, int] = {}
    _collect_lines(node, "", lines, path)
    return data or {}, lines


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """":<line>: broken YAML: <problem> (<context> at line N)" on one line."""
    mark = exc.problem_mark or exc.context_mark
    text = f":{mark.line + 1}: broken YAML: " if mark else ": broken YAML: "
    text += _one_line(exc.problem or exc.context or "unreadable")
    if exc.context and exc.context_mark and exc.problem_mark and exc.context_mark.line != exc.problem_mark.line:
        text += f" ({_one_line(exc.context)} at line {exc.context_mark.line + 1})"
    return text


def _collect_lines(node: yaml.Node, prefix: str, lines: dict[str, int], path: Path) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = f"{prefix}{key_node.value}"
        if key in seen:
            raise ConfigError(f"{path}:{key_node.start_mark.line + 1}: {key}: duplicate key (given twice)")
        seen.add(key)
        lines[key] = key_node.start_mark.line + 1
        _collect_lines(value_node, key + ".", lines, path)


# ---------------------------------------------------------------- merging sources


def find_config_file(explicit: str | os.PathLike | None, env: Mapping[str, str]) -> Path | None:
    """--config, else $LATIGO_CONFIG_FILE, else ./local_config.yaml when it exists."""
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV])
    local = Path(DEFAULT_CONFIG_FILE)
    return local if local.exists() else None


def check_env_names(env: Mapping[str, str]) -> None:
    """A LATIGO_* variable that is neither a config key (LATIGO_<SECTION>__<KEY>), a seed alias nor one of
    the process variables is a typo: refused by name, with the closest known spelling."""
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or "__" in name or name in ENV_ALIASES or name in PROCESS_VARIABLES:
            continue
        if name.startswith(RESERVED_PREFIXES):
            continue
        raise ConfigError(f"environment variable {name}: not a latigo setting" + _env_suggestion(name))


def _env_suggestion(name: str) -> str:
    """The alias or process variable it resembles, or the LATIGO_<SECTION>__<KEY> it would be."""
    known = [*ENV_ALIASES, *PROCESS_VARIABLES]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
    if close:
        return f" (did you mean {close[0]}?)"
    rest = name[len(ENV_PREFIX):].lower()
    for section in (*PLAIN_SECTIONS, *COMPONENT_SECTIONS, *OPTIONAL_COMPONENT_SECTIONS):
        if rest.startswith(section + "_") and len(rest) > len(section) + 1:
            return f" (did you mean {ENV_PREFIX}{section.upper()}__{rest[len(section) + 1:].upper()}?)"
    return f" (settings are {ENV_PREFIX}<SECTION>__<KEY>, e.g. {ENV_PREFIX}SCHEDULER__INTERVAL)"


def env_overrides(env: Mapping[str, str]) -> list[tuple[tuple[str, ...], EnvText, str]]:
    """(key path, value, variable) for every LATIGO_<SECTION>__<KEY>[__<KEY>...] and seed alias."""
    check_env_names(env)
    found: list[tuple[tuple[str, ...], EnvText, str]] = []
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
    """Defaults, then the file, then the environment; returns the tree and each leaf's source.

    A component section whose `type` a higher layer changes starts afresh: the lower layer's keys belong to
    another implementation's schema. A section left empty in the file (all keys commented out) changes nothing.
    """
    tree: dict[str, Any] = {section: dataclasses.asdict(cls()) for section, cls in PLAIN_SECTIONS.items()}
    tree.update({section: dict(values) for section, values in DEFAULT_COMPONENTS.items()})
    sources: dict[str, _Source] = {}
    _mark(tree, "", _Source("default"), sources)
    for section, values in file_data.items():
        if not isinstance(section, str):
            raise ConfigError(f"{file_label}: section name {section!r} is not text")
        if values is None or values == {}:
            continue
        if section in (*COMPONENT_SECTIONS, *OPTIONAL_COMPONENT_SECTIONS) and isinstance(values, dict) \
                and "type" in values:
            _drop_replaced_component(tree, sources, section, values["type"])
        _merge_into(tree, (section,), values, file_label, file_lines, sources)
    overrides = env_overrides(env)
    if _implies_eventhub(env, overrides, sources):
        overrides.insert(0, (("task_queue", "type"), EnvText("eventhub"), EVENT_HUB_ALIAS))
    for path, value, _variable in overrides:
        if len(path) == 2 and path[0] in COMPONENT_SECTIONS and path[1] == "type":
            _drop_replaced_component(tree, sources, path[0], value.strip())
    for path, value, variable in overrides:
        where = f"env {variable}"
        _set_path(tree, path, value, where)
        sources[".".join(path)] = _Source(where)
    return tree, sources


def _drop_replaced_component(tree: dict[str, Any], sources: dict[str, _Source], section: str, kind: Any) -> None:
    current = tree.get(section)
    if isinstance(current, dict) and current.get("type") != kind:
        del tree[section]
        for key in [k for k in sources if k == section or k.startswith(section + ".")]:
            del sources[key]


def _implies_eventhub(env: Mapping[str, str], overrides: list, sources: Mapping[str, _Source]) -> bool:
    """The seed's LATIGO_INTERNAL_EVENT_HUB alone (no queue type chosen anywhere) means the Event Hub queue."""
    if EVENT_HUB_ALIAS not in env or any(path == ("task_queue", "type") for path, _, _ in overrides):
        return False
    source = sources.get("task_queue.type")
    return source is not None and source.label == "default"


def _merge_into(tree, path, value, label, lines, sources) -> None:
    dotted = ".".join(path)
    if isinstance(value, dict) and value:
        existing = tree
        for part in path:
            existing = existing.setdefault(part, {}) if isinstance(existing, dict) else existing
        if not isinstance(existing, dict):
            _set_path(tree, path, {}, label)
        sources[dotted] = _Source(label, lines.get(dotted))  # where the mapping itself is (for error lines)
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
            values[name] = _check_rules(_convert(data[name], hints[name], key, sources), fld.metadata, key, sources)
            if is_secret_key(name) and isinstance(values[name], str):
                register_secret(values[name])
        elif fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
            raise ConfigError(_located(key, sources, "is required"))
    return cls(**values)


_NULL_WORDS = ("", "null", "none", "~")


def _convert(value: Any, target: Any, key: str, sources: Mapping[str, _Source]) -> Any:
    """Coerce `value` to the annotated type; environment text is parsed, file values must already fit."""
    origin = typing.get_origin(target)
    if origin in (typing.Union, types.UnionType):
        options = [t for t in typing.get_args(target) if t is not type(None)]
        if value is None or (isinstance(value, EnvText) and value.strip().lower() in _NULL_WORDS):
            return None
        return _convert(value, options[0], key, sources)
    try:
        return _coerce(value, target, origin, key, sources)
    except ValueError as exc:
        if is_secret_key(key.rsplit(".", 1)[-1]):
            shown = "a value of another kind (not shown: secret)"
        else:
            shown = _describe(value)
        detail = str(exc) if str(exc) else f"expected {_type_name(target)}, got {shown}"
        raise ConfigError(_located(key, sources, detail)) from None


def _coerce(value: Any, target: Any, origin: Any, key: str, sources: Mapping[str, _Source]) -> Any:
    """_convert's work for one non-optional type; raises ValueError (with or without a message) on a misfit.
    Environment text is parsed first (as YAML), except for text and durations, which read it themselves."""
    if target is str:
        return _as_text(value)
    from_env = isinstance(value, EnvText)
    if from_env:
        value = _parse_env_text(value, keep_text=target is timedelta)
    container = origin or target
    if container is list:
        return _as_list(value, target, key, sources, from_env)
    if container is dict:
        if not isinstance(value, dict):
            raise ValueError
        return _parse_nested_env(value)
    if target is Any:
        return value
    scalar = _SCALARS.get(target)
    if scalar is None:
        raise ValueError(f"unsupported setting type {target!r}")
    return scalar(value)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return str(value)
    raise ValueError


def _as_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        duration = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        duration = timedelta(seconds=value)  # a bare number is seconds
    elif isinstance(value, str):
        duration = parse_duration(value)
    else:
        raise ValueError
    if duration < timedelta(0):
        raise ValueError(f"a duration cannot be negative, got {format_duration(duration)}")
    return duration


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError


def _as_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError


def _as_float(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ValueError


_SCALARS: dict[Any, Any] = {timedelta: _as_duration, bool: _as_bool, int: _as_int, float: _as_float}


def _as_list(value: Any, target: Any, key: str, sources: Mapping[str, _Source], from_env: bool) -> list[Any]:
    if from_env and isinstance(value, str):
        value = [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list):
        raise ValueError
    (item_type,) = typing.get_args(target) or (Any,)
    if item_type is Any:
        return list(value)
    return [_convert(v, item_type, f"{key}[{i}]", sources) for i, v in enumerate(value)]


def _parse_nested_env(value: Any) -> Any:
    """Keys set one by one from the environment (LATIGO_S__MAPPING__KEY=8) are read as YAML like any other."""
    if isinstance(value, EnvText):
        return _parse_env_text(value)
    if isinstance(value, dict):
        return {key: _parse_nested_env(item) for key, item in value.items()}
    return value


def _parse_env_text(text: str, keep_text: bool = False) -> Any:
    """An environment value read as a YAML scalar or flow collection ("8", "true", "[a, b]", "{k: v}")."""
    if not text.strip():
        return ""
    try:
        value = parse_yaml_text(text)
    except yaml.YAMLError as exc:
        if keep_text:
            return str(text)
        problem = getattr(exc, "problem", None) or "unreadable"
        raise ValueError(f"cannot read the environment value as YAML: {_one_line(problem)}") from None
    if keep_text and isinstance(value, str):
        return str(text)
    return value


def _check_rules(value: Any, rules: Mapping[str, Any], key: str, sources: Mapping[str, _Source]) -> Any:
    """The value after the field's rules (min, choices); a choice matches regardless of case."""
    if "min" in rules and value is not None and value < rules["min"]:
        raise ConfigError(_located(key, sources, f"must be at least {rules['min']}, got {value}"))
    if "choices" in rules and value not in rules["choices"]:
        same = [c for c in rules["choices"] if isinstance(value, str) and c.lower() == value.lower()]
        if same:
            return same[0]
        raise ConfigError(
            _located(key, sources, f"must be one of {', '.join(rules['choices'])}, got {value!r}"
                     + _did_you_mean(str(value), rules["choices"]))
        )
    return value


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
    if value is None:
        return "nothing (null)"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, EnvText) else repr(str(value))


def _did_you_mean(word: str, options: Any) -> str:
    choices = [str(option) for option in options]
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = difflib.get_close_matches(word.lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
        close = [c for c in choices if lowered and c.lower() == lowered[0]][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _located(key: str, sources: Mapping[str, _Source], message: str) -> str:
    source = _nearest_source(key, sources)
    if source is None or source.label == "default":
        return f"{key}: {message}"
    if source.label.startswith("env "):
        return f"{key} ({source.label}): {message}"
    return f"{source.where().removeprefix('file ')}: {key}: {message}"


def _nearest_source(key: str, sources: Mapping[str, _Source]) -> _Source | None:
    """Where `key` was set: itself, else the first key set inside it, else its nearest enclosing list/section."""
    if key in sources:
        return sources[key]
    inside = [s for k, s in sources.items() if k.startswith(key + ".") or k.startswith(key + "[")]
    if inside:
        return next((s for s in inside if s.label != "default"), inside[0])
    while True:
        stripped = re.sub(r"\[\d+\]$", "", key)
        if stripped != key:
            key = stripped
        elif "." in key:
            key = key.rsplit(".", 1)[0]
        else:
            return None
        if key in sources:
            return sources[key]


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
    known = [*PLAIN_SECTIONS, *COMPONENT_SECTIONS, *OPTIONAL_COMPONENT_SECTIONS]
    for section in tree:
        if section not in known:
            raise ConfigError(_located(section, sources, "unknown section" + _did_you_mean(section, known)))
    built = {name: build_dataclass(cls, tree[name], name, sources) for name, cls in PLAIN_SECTIONS.items()}
    for section in COMPONENT_SECTIONS:
        if section != "sensor_information" or section in tree:
            built[section] = build_component(section, tree[section], sources)
    if "sensor_information" not in tree:
        # Not configured: the sensor data provider answers the information questions too
        # (validated once, as sensor_data, so errors name the section the user wrote).
        built["sensor_information"] = built["sensor_data"]
        tree["sensor_information"] = tree["sensor_data"]
        for key, source in list(sources.items()):
            if key == "sensor_data" or key.startswith("sensor_data."):
                sources["sensor_information" + key[len("sensor_data"):]] = source
    for section in OPTIONAL_COMPONENT_SECTIONS:
        if section in tree:
            built[section] = build_component(section, tree[section], sources)
    built["predictions"].sinks = [_build_sink(raw, sources, index)
                                  for index, raw in enumerate(built["predictions"].sinks)]
    _check_window_bounds(built["scheduler"], built["executor"], sources)
    register_secret_url(built["database"].url)
    return Config(**built, sources={k: v.where() for k, v in sources.items()}, raw=tree)


def _build_sink(raw: Any, sources: Mapping[str, _Source], index: int) -> ComponentSettings:
    where = f"predictions.sinks[{index}]"
    required = False
    if isinstance(raw, Mapping) and "required" in raw:
        raw = dict(raw)
        required = _convert(raw.pop("required"), bool, f"{where}.required", sources)
    component = build_component("prediction_sink", raw, sources, where)
    component.required = required
    return component


def _check_window_bounds(scheduler: SchedulerSettings, executor: ExecutorSettings,
                         sources: Mapping[str, _Source]) -> None:
    if scheduler.interval > executor.max_window:
        raise ConfigError(_located("scheduler.interval", sources, f"{format_duration(scheduler.interval)} is longer "
                                   f"than executor.max_window ({format_duration(executor.max_window)}): every task "
                                   "would be refused"))


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
    kind = kind.strip() if isinstance(kind, str) else kind
    if not isinstance(kind, str) or not kind:
        raise ConfigError(_located(f"{path}.type", sources, "is required: which implementation to use"))
    settings_cls = settings_class(section, kind, where=_located(f"{path}.type", sources, "").rstrip(": "))
    options = {k: v for k, v in data.items() if k != "type"}
    return ComponentSettings(type=kind, settings=build_dataclass(settings_cls, options, path, sources))


def register_secret_url(url: str) -> None:
    """Remember the password of a database URL, as written (percent-encoded) and decoded."""
    from urllib.parse import unquote, urlsplit

    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        register_secret(password)
        register_secret(unquote(password))


# ---------------------------------------------------------------- printing


class _ConfigDumper(yaml.SafeDumper):
    """Quotes any text that YAML 1.1 or latigo's reader would take for something else ("12:30", "0o17")."""


for _first, _resolvers in _ConfigLoader.yaml_implicit_resolvers.items():
    for _tag, _regexp in _resolvers:
        _ConfigDumper.add_implicit_resolver(_tag, _regexp, [_first])


def effective_tree(config: Config) -> dict[str, Any]:
    """The typed settings as a plain mapping (component sections: `type` first, then their settings)."""
    return {
        f.name: _settings_tree(getattr(config, f.name))
        for f in dataclasses.fields(Config)
        if f.name not in ("sources", "raw")
        and not (f.name in OPTIONAL_COMPONENT_SECTIONS and getattr(config, f.name) is None)
    }


def _settings_tree(value: Any) -> Any:
    if isinstance(value, ComponentSettings):
        return {"type": value.type, **_settings_tree(value.settings)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _settings_tree(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_settings_tree(item) for item in value]
    if isinstance(value, dict):
        return {key: _settings_tree(item) for key, item in value.items()}
    return value


def masked_tree(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A copy with every secret value replaced, fit for printing or logging."""
    return {key: _masked(key, value, f"{prefix}{key}") for key, value in tree.items()}


def _masked(key: Any, value: Any, dotted: str) -> Any:
    if is_secret_key(str(key)) and value not in (None, ""):
        return MASK
    if isinstance(value, Mapping):
        return masked_tree(value, dotted + ".")
    if isinstance(value, list):
        return [_masked(f"{key}[{i}]", item, f"{dotted}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, str):
        return mask_text(mask_url(value) if "://" in value else value)
    return value


def describe_config(config: Config) -> str:
    """The effective config as YAML, secrets masked, each leaf followed by where it came from."""
    lines: list[str] = []
    _describe_tree(masked_tree(effective_tree(config)), "", 0, config.sources, lines)
    return "\n".join(lines) + "\n"


def _describe_tree(tree, prefix, depth, sources, lines) -> None:
    pad = "  " * depth
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            _describe_tree(value, dotted + ".", depth + 1, sources, lines)
            continue
        lines.append(f"{pad}{key}: {render_value(value)}  # {sources.get(dotted, 'default')}")


def render_value(value: Any) -> str:
    """One value as single-line YAML that latigo's reader reads back the same."""
    if isinstance(value, EnvText):
        value = str(value)
    text = yaml.dump(value, Dumper=_ConfigDumper, default_flow_style=True, width=float("inf"), allow_unicode=True)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    if "\n" in text:  # multi-line text: JSON's escaped string is valid YAML too
        return json.dumps(value, ensure_ascii=False, default=str)
    return text
