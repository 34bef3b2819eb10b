"""The window/bucket rule: every bucket is predicted once, by the window in which it completes."""

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from latigo.scheduler import Grid
from latigo.timegrid import bucket_starts, ceil, floor, is_aligned, predicted_buckets
from latigo.types import TimeRange

UTC = timezone.utc
minutes = st.sampled_from([1, 2, 5, 7, 10, 15, 20, 30, 45, 60, 90, 180, 1440])
delays = st.sampled_from([0, 1, 3, 5, 7, 10, 25, 60, 125])
anchors = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC, second=0, microsecond=0))


def test_the_default_schedule_predicts_the_buckets_that_complete_in_each_window():
    # interval 30m, delay 5m: windows end at :25 and :55; a 10-minute model's buckets end at :x0.
    window = TimeRange(datetime(2026, 1, 1, 0, 25, tzinfo=UTC), datetime(2026, 1, 1, 0, 55, tzinfo=UTC))
    span = predicted_buckets(window, timedelta(minutes=10))
    assert bucket_starts(span, timedelta(minutes=10)) == [
        datetime(2026, 1, 1, 0, m, tzinfo=UTC) for m in (20, 30, 40)]


def test_a_window_in_which_no_bucket_completes_predicts_nothing():
    window = TimeRange(datetime(2026, 1, 1, 0, 21, tzinfo=UTC), datetime(2026, 1, 1, 0, 29, tzinfo=UTC))
    assert predicted_buckets(window, timedelta(minutes=10)) is None


@settings(max_examples=400, deadline=None)
@given(anchors, minutes, delays, minutes, st.integers(min_value=1, max_value=40))
def test_consecutive_windows_predict_every_bucket_exactly_once_and_only_complete_ones(
        anchor, interval_min, delay_min, resolution_min, count):
    grid = Grid(anchor, timedelta(minutes=interval_min), timedelta(minutes=delay_min))
    resolution = timedelta(minutes=resolution_min)
    windows = grid.windows_between(anchor, anchor + count * grid.interval + grid.interval)
    seen: list[datetime] = []
    for window in windows:
        span = predicted_buckets(window, resolution)
        if span is None:
            continue
        assert is_aligned(span.start, resolution) and is_aligned(span.end, resolution)
        for bucket in bucket_starts(span, resolution):
            # complete when its window is due, and completing inside this window (not an earlier one)
            assert window.start < bucket + resolution <= window.end
            seen.append(bucket)
    assert len(seen) == len(set(seen))
    if seen:  # contiguous: no bucket between the first and the last is skipped
        expected = (seen[-1] - seen[0]) // resolution + 1
        assert len(seen) == expected


@settings(max_examples=200)
@given(anchors, minutes)
def test_floor_and_ceil_bracket_the_moment_on_the_epoch_grid(moment, step_min):
    step = timedelta(minutes=step_min)
    low, high = floor(moment, step), ceil(moment, step)
    assert low <= moment <= high and high - low in (timedelta(0), step)
    assert is_aligned(low, step) and is_aligned(high, step)
