"""The one time grid: buckets of a model's resolution aligned to the Unix epoch, and which buckets a
schedule window predicts.

Sensor sources bucket on this grid (InfluxDB's `GROUP BY time(r)` aligns to multiples of r since
1970-01-01 and labels a bucket by its start; pandas' `resample` does the same for resolutions that
divide a day, which is what Gordo trained on). A schedule window rarely lines up with it: with a
30-minute interval and a 5-minute delay the windows end at :25 and :55 while a 10-minute model's
buckets end at :00, :10, ...

The rule: **a bucket [b, b + r) belongs to the window in which it completes**, i.e. the window
[ws, we) with ws < b + r <= we. So every stored row comes from a bucket whose data was complete when
its window was due, and consecutive windows predict every bucket exactly once, whatever interval,
delay and resolution.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from latigo.types import TimeRange, ensure_utc

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def floor(moment: datetime, step: timedelta) -> datetime:
    """`moment` rounded down onto the epoch-aligned grid of `step`."""
    _check_step(step)
    return EPOCH + ((ensure_utc(moment) - EPOCH) // step) * step


def ceil(moment: datetime, step: timedelta) -> datetime:
    """`moment` rounded up onto the epoch-aligned grid of `step`."""
    low = floor(moment, step)
    return low if low == moment else low + step


def is_aligned(moment: datetime, step: timedelta) -> bool:
    return floor(moment, step) == moment


def predicted_buckets(window: TimeRange, resolution: timedelta) -> TimeRange | None:
    """The starts of the buckets that complete inside `window`, as a half-open range of bucket starts
    [first, last + resolution); None when no bucket completes in it (a window shorter than the
    resolution that contains no bucket end)."""
    # The bucket holding the window's start is the first to complete after it; the last is the one that
    # completes at or before the window's end.
    first = floor(window.start, resolution)
    end = floor(window.end, resolution)
    if end <= first:
        return None
    return TimeRange(first, end)


def bucket_starts(span: TimeRange, resolution: timedelta) -> list[datetime]:
    """Every bucket start in `span` (which starts on the grid)."""
    count = (span.end - span.start) // resolution
    return [span.start + i * resolution for i in range(count)]


def divides_a_day(resolution: timedelta) -> bool:
    """Whether epoch alignment equals pandas' default (midnight) alignment for this resolution, which
    is how Gordo bucketed its training data."""
    return timedelta(days=1) % resolution == timedelta(0)


def _check_step(step: timedelta) -> None:
    if step <= timedelta(0):
        raise ValueError(f"a grid step must be positive, got {step}")
