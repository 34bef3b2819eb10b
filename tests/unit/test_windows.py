"""The scheduler's window math, as properties that must hold for any grid and any moment."""

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo.errors import ConfigError
from latigo.scheduler import Grid, due_windows, parse_anchor

UTC = timezone.utc
intervals = st.sampled_from([timedelta(minutes=m) for m in (1, 5, 10, 15, 30, 60, 90, 180, 1440)])
delays = st.sampled_from([timedelta(0), timedelta(minutes=5), timedelta(minutes=7), timedelta(hours=2)])
anchors = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC, microsecond=0))
moments = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda d: d.replace(tzinfo=UTC))


def on_grid(grid: Grid, instant: datetime) -> bool:
    return (instant - (grid.anchor - grid.delay)) % grid.interval == timedelta(0)


@settings(max_examples=300)
@given(anchors, intervals, delays, moments)
def test_latest_window_is_aligned_full_length_and_never_in_the_future(anchor, interval, delay, now):
    grid = Grid(anchor, interval, delay)
    window = grid.latest_window(now)
    assert window.duration == interval
    assert on_grid(grid, window.start) and on_grid(grid, window.end)
    assert window.end <= now - delay
    assert window.end > now - delay - interval  # and it is the newest such window


@settings(max_examples=300)
@given(anchors, intervals, delays, moments, st.integers(min_value=0, max_value=200),
       st.sampled_from([timedelta(hours=h) for h in (1, 5, 24, 72)]))
def test_catch_up_windows_are_contiguous_aligned_and_bounded(anchor, interval, delay, now, missed, limit):
    grid = Grid(anchor, interval, delay)
    latest = grid.latest_window(now)
    last_end = latest.end - missed * interval
    windows = due_windows(grid, now, last_end, limit)
    for earlier, later in zip(windows, windows[1:], strict=False):
        assert earlier.end == later.start  # contiguous, non-overlapping, oldest first
    for window in windows:
        assert on_grid(grid, window.start) and window.duration == interval
        assert window.start >= last_end  # nothing already scheduled comes again
        assert window.end <= now - delay
    expected = min(missed, max(int(limit / interval), 1))
    assert len(windows) == expected
    if windows:
        assert windows[-1] == latest


def test_a_five_hour_outage_enqueues_exactly_the_missed_windows():
    grid = Grid(parse_anchor("00:00"), timedelta(minutes=30), timedelta(minutes=5))
    before = datetime(2026, 3, 1, 8, 1, tzinfo=UTC)
    last_end = grid.latest_window(before).end  # 07:55
    after = before + timedelta(hours=5)  # 13:01 -> newest window ends 12:55
    windows = due_windows(grid, after, last_end, timedelta(hours=24))
    assert [w.start.strftime("%H:%M") for w in windows] == [
        "07:55", "08:25", "08:55", "09:25", "09:55", "10:25", "10:55", "11:25", "11:55", "12:25"]
    bounded = due_windows(grid, after, last_end, timedelta(hours=2))
    assert [w.start.strftime("%H:%M") for w in bounded] == ["10:55", "11:25", "11:55", "12:25"]


def test_a_new_model_gets_only_the_current_window():
    grid = Grid(parse_anchor("00:00"), timedelta(minutes=30), timedelta(minutes=5))
    now = datetime(2026, 3, 1, 8, 1, tzinfo=UTC)
    assert due_windows(grid, now, None, timedelta(hours=24)) == [grid.latest_window(now)]


def test_windows_between_covers_whole_grid_windows_only():
    grid = Grid(parse_anchor("00:00"), timedelta(minutes=10), timedelta(0))
    windows = grid.windows_between(datetime(2026, 1, 1, 0, 5, tzinfo=UTC), datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
    assert windows[0].start == datetime(2026, 1, 1, 0, 10, tzinfo=UTC)
    assert windows[-1].end == datetime(2026, 1, 1, 1, 0, tzinfo=UTC)
    assert len(windows) == 5


@pytest.mark.parametrize("text,expected", [
    ("00:00", datetime(1970, 1, 1, tzinfo=UTC)),
    ("06:30", datetime(1970, 1, 1, 6, 30, tzinfo=UTC)),
    ("2026-01-01T00:07:00+01:00", datetime(2025, 12, 31, 23, 7, tzinfo=UTC)),
])
def test_anchor_forms(text, expected):
    assert parse_anchor(text) == expected


@pytest.mark.parametrize("text", ["25:00", "noon", "2026-01-01T00:00:00"])
def test_bad_anchors_are_config_errors(text):
    with pytest.raises(ConfigError, match="scheduler.start_time"):
        parse_anchor(text)
