"""Reading catalog files (YAML or CSV) of sensors or models, as exported from Tilstandomatic.

A catalog is a list of records; every malformed record is rejected with its row
number (the CSV line, or the YAML list position) so a bad export is fixed at once.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from latigo.errors import ConfigError


def read_catalog(path: str | Path, list_key: str, required: Sequence[str],
                 scope: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(row label, record) for each record of a .yaml/.yml (a list, or a mapping with `list_key`) or a
    .csv (header row) file. In YAML a plain string record means {"name": string}. A name is listed once
    per `scope` (a field such as `project`: the same name in two projects is two records)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"catalog {path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(path)
    elif suffix in (".yaml", ".yml"):
        records = _yaml_records(path, list_key)
    else:
        raise ConfigError(f"catalog {path}: use a .yaml, .yml or .csv file")
    seen: dict[str, str] = {}
    for label, record in records:
        missing = [key for key in required if not str(record.get(key) or "").strip()]
        if missing:
            raise ConfigError(f"catalog {path} {label}: missing {', '.join(missing)}")
        name = str(record["name"]).strip()
        within = str(record.get(scope) or "").strip() if scope else ""
        name = f"{within}/{name}" if within else name
        if name in seen:
            raise ConfigError(f"catalog {path} {label}: {name!r} already listed at {seen[name]}")
        seen[name] = label
    return records


def _csv_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ConfigError(f"catalog {path}: empty file (a header row is needed)")
        records = []
        for record in reader:
            label = f"row {reader.line_num}"
            if None in record:
                raise ConfigError(f"catalog {path} {label}: more fields than the header has")
            if any(value is None for value in record.values()):
                raise ConfigError(f"catalog {path} {label}: fewer fields than the header has")
            records.append((label, {k.strip(): v.strip() for k, v in record.items()}))
        return records


def _yaml_records(path: Path, list_key: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else "?"
        raise ConfigError(f"catalog {path}:{line}: broken YAML: {exc.problem}") from None
    if isinstance(data, dict):
        data = data.get(list_key)
    if not isinstance(data, list):
        raise ConfigError(f"catalog {path}: expected a list of records (or a mapping with {list_key!r})")
    records = []
    for index, item in enumerate(data, start=1):
        label = f"row {index}"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise ConfigError(f"catalog {path} {label}: expected a mapping or a name, got {type(item).__name__}")
        records.append((label, item))
    return records


def split_list(value: Any) -> list[str]:
    """A YAML list, or CSV text separated by ';' or '|'."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    text = str(value or "")
    separator = ";" if ";" in text else "|"
    return [part.strip() for part in text.split(separator) if part.strip()]
