"""Gordo's wire formats: its resolution strings, metadata, prediction answers (JSON with bare NaN,
or parquet) and the aligned model input latigo sends."""

from __future__ import annotations

import ast
import io
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import requests

from latigo.durations import parse_frequency
from latigo.errors import (
    PermanentError,
    TransientError,
)
from latigo.http import describe_response
from latigo.types import ModelInfo, PredictionFrame

log = logging.getLogger(__name__)

NON_NUMERIC_GROUPS = frozenset({"start", "end"})
"""Output groups that carry the row's interval as text, not values."""
DEFAULT_INTERPOLATION_LIMIT = timedelta(hours=48)
"""gordo-core's default interpolation_limit ("48H")."""


# ---------------------------------------------------------------- parsing Gordo's values

def _tag_names(raw: Any) -> tuple[str, ...]:
    """Tag names from Gordo's tag lists (plain names, or {"name": ...} objects in older builds)."""
    if not raw:
        return ()
    return tuple(item["name"] if isinstance(item, Mapping) else str(item) for item in raw)


def parse_model_info(name: str, project: str, revision: str, body: Mapping[str, Any]) -> ModelInfo:
    """ModelInfo from Gordo's metadata answer; what is missing or malformed is named."""
    meta = body.get("metadata") if isinstance(body, Mapping) else None
    dataset = meta.get("dataset") if isinstance(meta, Mapping) else None
    if not isinstance(dataset, Mapping):
        raise PermanentError(f"gordo model {name!r}: metadata has no metadata.dataset section")
    tags = _tag_names(dataset.get("tag_list") or dataset.get("tags"))
    if not tags:
        raise PermanentError(f"gordo model {name!r}: metadata.dataset.tag_list is empty")
    targets = _tag_names(dataset.get("target_tag_list")) or tags
    try:
        resolution = parse_frequency(dataset.get("resolution") or "10T")
    except ValueError as exc:
        raise PermanentError(f"gordo model {name!r}: metadata.dataset.resolution {exc}") from None
    build = ((meta.get("metadata") or {}).get("build_metadata") or {}).get("model") or {}  # type: ignore[union-attr]
    try:
        offset = int(build.get("model_offset") or 0)
    except (TypeError, ValueError):
        raise PermanentError(f"gordo model {name!r}: model_offset {build.get('model_offset')!r} "
                             "is not an integer") from None
    extra = {
        "train_start_date": dataset.get("train_start_date"),
        "train_end_date": dataset.get("train_end_date"),
        "asset": dataset.get("asset"),
        "model_creation_date": build.get("model_creation_date"),
        "gordo_server_version": body.get("gordo-server-version"),
    }
    return ModelInfo(
        name=name, tags=tags, target_tags=targets, resolution=resolution, project=project,
        revision=str(body.get("revision") or revision), model_offset=max(offset, 0),
        aggregation=_aggregation(name, dataset.get("aggregation_methods")),
        interpolation_method=str(dataset.get("interpolation_method") or "linear_interpolation"),
        interpolation_limit=_interpolation_limit(name, dataset),
        row_filter=_row_filter(name, dataset.get("row_filter")),
        extra=extra,
    )


def _aggregation(name: str, raw: Any) -> str | tuple[str, ...]:
    """Gordo's aggregation_methods: one name (plain columns) or a list (columns per tag and method)."""
    if raw is None or raw == "":
        return "mean"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    raise PermanentError(f"gordo model {name!r}: metadata.dataset.aggregation_methods {raw!r} is neither a "
                         "method name nor a list of them")


def _interpolation_limit(name: str, dataset: Mapping[str, Any]) -> timedelta | None:
    """None when Gordo's metadata says null (no limit); Gordo's default (48H) when it says nothing."""
    if "interpolation_limit" not in dataset:
        return DEFAULT_INTERPOLATION_LIMIT
    raw = dataset["interpolation_limit"]
    if raw is None:
        return None
    try:
        return parse_frequency(str(raw))
    except ValueError as exc:
        raise PermanentError(f"gordo model {name!r}: metadata.dataset.interpolation_limit {exc}") from None


def _row_filter(name: str, raw: Any) -> str | tuple[str, ...]:
    if raw is None or isinstance(raw, str):
        return raw or ""
    if isinstance(raw, list) and all(isinstance(item, str) for item in raw):
        return tuple(raw)
    raise PermanentError(f"gordo model {name!r}: metadata.dataset.row_filter {raw!r} is neither an expression "
                         "nor a list of them")


def _timestamp(key: Any) -> datetime:
    """An output row's timestamp (Gordo writes "2026-02-01 00:00:00+00:00"); naive means UTC,
    which is what latigo sent."""
    if isinstance(key, datetime):
        stamp = key
    else:
        try:
            stamp = datetime.fromisoformat(str(key))
        except ValueError:
            stamp = pd.Timestamp(key).to_pydatetime()
    if stamp.tzinfo is None:
        return stamp.replace(tzinfo=timezone.utc)
    return stamp.astimezone(timezone.utc)


def frame_from_groups(model: str, groups: Mapping[str, Mapping[str, Mapping[Any, Any]]]) -> PredictionFrame:
    """PredictionFrame from Gordo's {group: {column: {timestamp: value}}}, without the start/end groups.

    Timestamps are parsed once per distinct key rather than once per value."""
    stamps: dict[Any, datetime] = {}
    numeric: dict[str, dict[str, dict[datetime, Any]]] = {}
    for group, columns in groups.items():
        if group in NON_NUMERIC_GROUPS:
            continue
        numeric[group] = {}
        for column, series in columns.items():
            converted = {}
            for key, value in series.items():
                stamp = stamps.get(key)
                if stamp is None:
                    try:
                        stamp = stamps[key] = _timestamp(key)
                    except (TypeError, ValueError):
                        raise PermanentError(f"gordo model {model!r}: {key!r} in the prediction answer is not "
                                             "a timestamp") from None
                converted[stamp] = value
            numeric[group][column] = converted
    try:
        return PredictionFrame.from_groups(model, numeric)
    except (TypeError, ValueError) as exc:
        raise PermanentError(f"gordo model {model!r}: unexpected value in the prediction answer: {exc}") from None


def groups_from_parquet(content: bytes) -> dict[str, dict[str, dict[Any, Any]]]:
    """Gordo's parquet answer (columns (group, column), '' for single-column groups) as groups.

    Read with pyarrow rather than as a pandas frame: rebuilding the frame's two-level column index costs
    more than everything else done with an answer of a few rows (about 10 ms, against 2 ms). A file
    without a single timestamp index (no pandas metadata, a RangeIndex) goes the general way."""
    table = pq.read_table(io.BytesIO(content))
    meta = table.schema.pandas_metadata or {}
    index = [column for column in meta.get("index_columns", []) if isinstance(column, str)]
    if len(index) != 1 or not pa.types.is_timestamp(table.schema.field(index[0]).type):
        return _groups_from_frame(pd.read_parquet(io.BytesIO(content)))
    stamps_type = table.schema.field(index[0]).type
    stamps = [_timestamp(ts) for ts in
              table.column(index[0]).cast(pa.timestamp("us", tz=stamps_type.tz), safe=False).to_pylist()]
    names = {column.get("field_name"): column.get("name") for column in meta.get("columns", [])}
    groups: dict[str, dict[str, dict[Any, Any]]] = {}
    for field_name in table.column_names:
        if field_name == index[0]:
            continue
        group, name = _column_key(names.get(field_name) or field_name)
        groups.setdefault(group, {})[name or group] = dict(
            zip(stamps, table.column(field_name).to_pylist(), strict=True))
    return groups


def _column_key(name: str) -> tuple[str, str]:
    """(group, column) from a parquet column's pandas name: "('model-output', 'tag-1')" for a two-level
    column, the plain name for one level."""
    if name.startswith("("):
        try:
            key = ast.literal_eval(name)
        except (ValueError, SyntaxError):
            key = None
        if isinstance(key, tuple):
            if len(key) != 2:
                raise ValueError(f"column {name} is not (group, column)")
            return str(key[0]), str(key[1])
    return name, ""


def _groups_from_frame(frame: pd.DataFrame) -> dict[str, dict[str, dict[Any, Any]]]:
    if not isinstance(frame.index, pd.DatetimeIndex):
        raise ValueError(f"its index is {type(frame.index).__name__}, not timestamps")
    stamps = [_timestamp(ts) for ts in frame.index.to_pydatetime()]
    groups: dict[str, dict[str, dict[Any, Any]]] = {}
    for column in frame.columns:
        group, name = column if isinstance(column, tuple) else (column, "")
        groups.setdefault(group, {})[name or group] = dict(zip(stamps, frame[column].tolist(), strict=True))
    return groups


def parse_prediction(model: str, response: requests.Response) -> PredictionFrame:
    """The rows of a prediction answer, JSON (bare NaN tokens allowed) or parquet."""
    content = response.content
    if content[:4] == b"PAR1":
        try:
            return frame_from_groups(model, groups_from_parquet(content))
        except (OSError, ValueError) as exc:
            raise TransientError(f"gordo model {model!r}: unreadable parquet answer: {exc}") from None
    try:
        body = json.loads(content)
    except ValueError:
        raise TransientError(f"gordo model {model!r}: answer is neither JSON nor parquet: "
                             f"{describe_response(response)}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise PermanentError(f"gordo model {model!r}: prediction answer has no 'data' object")
    return frame_from_groups(model, data)


# ---------------------------------------------------------------- model input


def json_columns(frame: pd.DataFrame) -> dict[str, Any]:
    """{column: {iso timestamp: value}}, or {tag: {method: {timestamp: value}}} for columns per tag and
    aggregation method: the shapes gordo-client sends and Gordo's dataframe_from_dict reads."""
    keys = [stamp.isoformat() for stamp in frame.index.to_pydatetime()]
    if isinstance(frame.columns, pd.MultiIndex):
        nested: dict[str, Any] = {}
        for tag, method in frame.columns:
            nested.setdefault(str(tag), {})[str(method)] = dict(
                zip(keys, frame[(tag, method)].tolist(), strict=True))
        return nested
    return {str(column): dict(zip(keys, frame[column].tolist(), strict=True)) for column in frame.columns}


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, engine="pyarrow", compression="snappy")
    return buffer.getvalue()
