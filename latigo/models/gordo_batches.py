"""Which rows go into which prediction request.

Gordo answers a request of n rows with n - model_offset rows: a windowed model (an LSTM with
lookback_window k has offset k - 1) needs the k - 1 rows before each output row, and it fails (500)
on a request that holds no more rows than its window. So consecutive batches overlap by the offset,
and a short tail batch reaches further back instead of being sent too small. gordo-client does
neither (its batches do not overlap): with its default batch size of 100,000 rows it rarely matters.
"""

from __future__ import annotations

from dataclasses import dataclass

from latigo.errors import NoDataError


@dataclass(frozen=True)
class Batch:
    """Input rows [start, stop); outputs are produced for rows [start + offset, stop)."""

    start: int
    stop: int


def plan_batches(rows: int, first_wanted: int, offset: int, batch_size: int, min_rows: int) -> list[Batch]:
    """Batches whose outputs cover rows first_wanted..rows-1 (those at or after `offset`), each holding
    between `min_rows` and max(batch_size, min_rows) input rows."""
    if rows < min_rows:
        raise NoDataError(f"the model needs at least {min_rows} complete rows per request, "
                          f"only {rows} are available around the window")
    size = max(batch_size, min_rows, offset + 1)
    per_batch = size - offset
    batches = []
    output = max(first_wanted, offset)
    while output < rows:
        stop = min(output + per_batch, rows)
        start = min(output - offset, stop - min_rows)
        batches.append(Batch(max(start, 0), stop))
        output = stop
    return batches
