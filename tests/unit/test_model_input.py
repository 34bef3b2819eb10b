"""Model input per window equals what Gordo's dataset builds over one long range.

The reference here is an independent, direct transcription of gordo-core's client-side steps over
the whole range (bucket mean, interpolate/ffill with the limit, rows with every tag); the real
Gordo server and gordo-client judge the full pipeline in tests/e2e/test_gordo_conformance.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latigo.errors import NoDataError, PermanentError
from latigo.interfaces import SensorDataProvider
from latigo.model_input import build_model_input
from latigo.scheduler import Grid
from latigo.sensors.resample import BucketGrid, frame
from latigo.types import ModelInfo, SensorFrame, TimeRange

UTC = timezone.utc
T0 = datetime(2026, 3, 1, tzinfo=UTC)
RES = timedelta(minutes=10)
TAGS = ("a", "b")


class PointSource(SensorDataProvider):
    """Raw points per tag (one per minute), aggregated per bucket by the same code the Data API uses."""

    def __init__(self, points: dict[str, pd.Series]) -> None:
        self.points = {name: (series.index.as_unit("ns").asi8, series.to_numpy(dtype=float))
                       for name, series in points.items()}
        self.reads: list[tuple[datetime, datetime]] = []

    def get_native_range_specifier(self, start, end, parameters):
        return f"points {start} {end}"

    def get_data_for_range(self, start, end, sensors, resolution, aggregation="mean"):
        self.reads.append((start, end))
        grid = BucketGrid(start, end, resolution)
        columns = {}
        for name in sensors:
            times, values = self.points[name]
            columns[name] = grid.aggregate(times, values, aggregation)
        return SensorFrame(frame(grid, columns, list(sensors)))


def minute_points(values_per_bucket: list[float | None], tag_offset: float) -> pd.Series:
    """Two points per 10-minute bucket (minutes 2 and 7), NaN buckets have none."""
    stamps, values = [], []
    for i, value in enumerate(values_per_bucket):
        if value is None:
            continue
        for minute, delta in ((2, -0.25), (7, 0.25)):
            stamps.append(T0 + i * RES + timedelta(minutes=minute))
            values.append(value + delta + tag_offset)
    return pd.Series(values, index=pd.DatetimeIndex(stamps, dtype="datetime64[ns, UTC]"), dtype=float)


def reference_rows(points: dict[str, pd.Series], end: datetime, info: ModelInfo) -> pd.DataFrame:
    """gordo-core over [T0, end): bucket means, fill within the limit, rows with every tag."""
    index = pd.date_range(T0, end, freq=RES, inclusive="left")
    columns = {}
    for tag in info.tags:
        series = points[tag]
        means = series.groupby(series.index.floor(RES)).mean().reindex(index)
        limit = None if info.interpolation_limit is None else int(info.interpolation_limit / RES)
        if info.interpolation_method == "ffill":
            columns[tag] = means.ffill(limit=limit)
        else:
            columns[tag] = means.interpolate(limit=limit)
    return pd.DataFrame(columns).dropna()


def info(method="linear_interpolation", limit=timedelta(minutes=30), offset=0, row_filter="") -> ModelInfo:
    return ModelInfo(name="m", tags=TAGS, target_tags=TAGS, resolution=RES, model_offset=offset,
                     interpolation_method=method, interpolation_limit=limit, row_filter=row_filter)


bucket_values = st.lists(st.one_of(st.none(), st.floats(min_value=-5, max_value=5)), min_size=60, max_size=60)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bucket_values, bucket_values, st.sampled_from(["linear_interpolation", "ffill"]),
       st.sampled_from([timedelta(minutes=20), timedelta(minutes=30), timedelta(hours=48), None]))
def test_each_window_has_the_rows_of_the_long_range_whatever_the_gaps(a, b, method, limit):
    # Clean data around the whole range, so the reference's own edges do not matter.
    a = [1.0] * 10 + a + [2.0] * 10
    b = [0.5] * 10 + b + [1.5] * 10
    points = {"a": minute_points(a, 0.0), "b": minute_points(b, 0.1)}
    end = T0 + len(a) * RES
    model = info(method, limit)
    truth = reference_rows(points, end, model)
    grid = Grid(T0, timedelta(minutes=30), timedelta(minutes=5))
    source = PointSource(points)
    for window in grid.windows_between(T0 + 12 * RES, end - 12 * RES):
        try:
            got = build_model_input(model, window, source)
        except NoDataError:
            got = None
        span = TimeRange(window.start - timedelta(minutes=5), window.end - timedelta(minutes=5))
        expected = truth[(truth.index >= span.start) & (truth.index < span.end)]
        if got is None or got.empty:
            assert expected.empty, f"{window}: latigo has no rows, the long range has {len(expected)}"
            continue
        assert got.span == span
        rows = got.X[got.X.index >= span.start]
        pd.testing.assert_frame_equal(rows, expected[list(TAGS)], check_freq=False, check_names=False,
                                      check_index_type=False, rtol=1e-12, atol=1e-12)


def test_a_gap_at_the_window_end_is_interpolated_towards_the_value_after_it():
    values = [1.0] * 20 + [None, None] + [3.0] * 10
    points = {"a": minute_points(values, 0), "b": minute_points([1.0] * 32, 0)}
    window = TimeRange(T0 + 15 * RES, T0 + 22 * RES)  # its last two buckets (20, 21) are the gap
    got = build_model_input(info(), window, PointSource(points))
    assert got.X["a"].iloc[-2:].tolist() == pytest.approx([1 + 2 / 3, 1 + 4 / 3])


def test_a_gap_at_the_window_start_is_filled_from_the_value_before_it_even_beyond_the_margin():
    values = [2.0] * 5 + [None] * 10 + [4.0] * 10
    points = {"a": minute_points(values, 0), "b": minute_points([1.0] * 25, 0)}
    model = info(limit=timedelta(hours=48))
    source = PointSource(points)
    window = TimeRange(T0 + 12 * RES, T0 + 15 * RES)  # buckets 12..14: the gap, 8+ buckets after its start
    got = build_model_input(model, window, source)
    assert got.X["a"].tolist()[-3:] == pytest.approx([2 + 2 * 8 / 11, 2 + 2 * 9 / 11, 2 + 2 * 10 / 11])
    # the window; once back to max_history (the gap starts before it); once ahead (it reaches its end)
    assert len(source.reads) == 3


def test_an_lstm_gets_its_offset_rows_before_the_window_even_across_missing_rows():
    values = [1.0] * 30
    b = [1.0] * 10 + [None] * 12 + [1.0] * 8  # rows 10..21 missing for good (limit 20 min = 2 rows)
    points = {"a": minute_points(values, 0), "b": minute_points(b, 0)}
    window = TimeRange(T0 + 22 * RES, T0 + 24 * RES)
    got = build_model_input(info(offset=5, limit=timedelta(minutes=20)), window, PointSource(points))
    before = got.X[got.X.index < window.start]
    assert len(before) >= 5 + 1  # the offset, and one more so a one-row window is a valid request


def test_a_tag_without_any_data_is_no_data_naming_it():
    points = {"a": minute_points([1.0] * 20, 0), "b": pd.Series([], index=pd.DatetimeIndex([]), dtype=float)}
    with pytest.raises(NoDataError, match="no data for b"):
        build_model_input(info(), TimeRange(T0 + 10 * RES, T0 + 13 * RES), PointSource(points))


def test_the_row_filter_removes_rows_and_says_so_when_it_removes_all():
    points = {"a": minute_points([1.0] * 10 + [5.0] * 10, 0), "b": minute_points([1.0] * 20, 0)}
    model = info(row_filter="a > 3")
    got = build_model_input(model, TimeRange(T0 + 9 * RES, T0 + 12 * RES), PointSource(points))
    assert got.X.index.min() >= T0 + 10 * RES
    none = build_model_input(model, TimeRange(T0 + 4 * RES, T0 + 7 * RES), PointSource(points))
    assert none.empty and none.note == "row_filter 'a > 3' rejects every row of the window"


def test_a_row_filter_tag_the_model_does_not_use_is_read_and_dropped():
    points = {"a": minute_points([1.0] * 20, 0), "b": minute_points([1.0] * 20, 0),
              "switch": minute_points([0.0] * 10 + [1.0] * 10, 0)}
    got = build_model_input(info(row_filter="switch > 0.5"), TimeRange(T0 + 9 * RES, T0 + 12 * RES),
                            PointSource(points))
    assert list(got.X.columns) == list(TAGS) and got.X.index.min() >= T0 + 10 * RES


def test_an_interpolation_limit_below_the_resolution_is_refused_as_gordo_does():
    points = {"a": minute_points([1.0] * 20, 0), "b": minute_points([1.0] * 20, 0)}
    with pytest.raises(PermanentError, match="interpolation_limit"):
        build_model_input(info(limit=timedelta(minutes=5)), TimeRange(T0 + 9 * RES, T0 + 12 * RES),
                          PointSource(points))


def test_no_bucket_completing_in_the_window_is_not_an_error():
    points = {"a": minute_points([1.0] * 20, 0), "b": minute_points([1.0] * 20, 0)}
    nothing = build_model_input(info(), TimeRange(T0 + timedelta(minutes=1), T0 + timedelta(minutes=9)),
                                PointSource(points))
    assert nothing.empty and nothing.note.startswith("no 0:10:00 bucket of the model completes in")
