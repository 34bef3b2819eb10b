"""The time grid every sensor provider returns: mean per `resolution` bucket, aligned to the epoch.

InfluxDB's `GROUP BY time(r)` aligns buckets to multiples of `r` since 1970-01-01
and labels each by its start; sources that hand back raw points (the Data API) are
bucketed here the same way, so a model sees identical frames whichever source
feeds it. A range that does not start on the grid gets a first bucket that starts
before it but holds only points inside the range (exactly what InfluxDB does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from latigo.interfaces import check_aggregation
from latigo.types import ensure_utc

_EPOCH = pd.Timestamp(0, tz="UTC")


def to_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of a tz-aware instant."""
    return int((pd.Timestamp(ensure_utc(moment)) - _EPOCH) // pd.Timedelta(1, "ns"))


def resolution_ns(resolution: timedelta) -> int:
    value = int(pd.Timedelta(resolution).value)
    if value <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    return value


class BucketGrid:
    """The buckets covering [start, end): starts at multiples of `resolution` since the epoch."""

    def __init__(self, start: datetime, end: datetime, resolution: timedelta) -> None:
        self.start_ns, self.end_ns = to_ns(start), to_ns(end)
        if self.end_ns <= self.start_ns:
            raise ValueError(f"empty time range: end {end.isoformat()} <= start {start.isoformat()}")
        self.step = resolution_ns(resolution)
        self.first = (self.start_ns // self.step) * self.step
        self.size = -(-(self.end_ns - self.first) // self.step)  # ceil: last bucket starts before `end`

    @property
    def index(self) -> pd.DatetimeIndex:
        starts = self.first + self.step * np.arange(self.size, dtype=np.int64)
        return pd.DatetimeIndex(starts.view("datetime64[ns]")).tz_localize("UTC")

    def place(self, bucket_ns: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Values already aggregated per bucket (labelled by bucket start) put on the grid; NaN elsewhere."""
        out = np.full(self.size, np.nan)
        positions = (np.asarray(bucket_ns, dtype=np.int64) - self.first) // self.step
        keep = (positions >= 0) & (positions < self.size)
        out[positions[keep]] = np.asarray(values, dtype=float)[keep]
        return out

    def aggregate(self, times_ns: np.ndarray, values: np.ndarray, method: str = "mean") -> np.ndarray:
        """One value per bucket from the raw points inside [start, end) by `method` (pandas' name, as
        Gordo's `aggregation_methods` spells it); NaN for a bucket with no points."""
        if method == "mean":
            return self.means(times_ns, values)
        check_aggregation(method)
        times_ns = np.asarray(times_ns, dtype=np.int64)
        values = np.asarray(values, dtype=float)
        keep = (times_ns >= self.start_ns) & (times_ns < self.end_ns) & np.isfinite(values)
        positions = (times_ns[keep] - self.first) // self.step
        per_bucket = pd.Series(values[keep]).groupby(positions).agg(method)
        out = np.full(self.size, np.nan)
        out[per_bucket.index.to_numpy(dtype=np.int64)] = per_bucket.to_numpy(dtype=float)
        return out

    def means(self, times_ns: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Mean of the raw points inside [start, end) per bucket; NaN for a bucket with no points.

        Non-finite values are not measurements and are left out of the mean."""
        times_ns = np.asarray(times_ns, dtype=np.int64)
        values = np.asarray(values, dtype=float)
        keep = (times_ns >= self.start_ns) & (times_ns < self.end_ns) & np.isfinite(values)
        positions = (times_ns[keep] - self.first) // self.step
        sums = np.bincount(positions, weights=values[keep], minlength=self.size)
        counts = np.bincount(positions, minlength=self.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def frame(grid: BucketGrid, columns: Mapping[str, np.ndarray], order: Sequence[str]) -> pd.DataFrame:
    """A float DataFrame on the grid with the columns of `order` that are in `columns`, in that order."""
    names = [name for name in order if name in columns]
    data = {name: np.asarray(columns[name], dtype=float) for name in names}
    result = pd.DataFrame(data, index=grid.index, columns=pd.Index(names, dtype=object))
    return result.astype(float) if names else result


def as_timedelta(value: Any) -> timedelta:
    """A resolution given as a timedelta, a pandas Timedelta or a duration text like "10m"."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, str):
        from latigo.durations import parse_duration

        return parse_duration(value)
    return pd.Timedelta(value).to_pytimedelta()


def unique(names: Sequence[str]) -> list[str]:
    """The names in their first-seen order without repeats (a frame cannot hold a column twice)."""
    if isinstance(names, str):
        raise TypeError("sensors must be a sequence of names, not one string")
    return list(dict.fromkeys(names))
