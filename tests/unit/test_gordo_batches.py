"""Batches for Gordo: every wanted row gets its output, no request is too small for the model."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo.errors import NoDataError
from latigo.models.gordo_batches import plan_batches


@settings(max_examples=500)
@given(st.integers(min_value=0, max_value=12), st.integers(min_value=1, max_value=50),
       st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=60))
def test_batches_cover_every_wanted_output_with_enough_rows(offset, batch_size, rows, first_wanted):
    min_rows = offset + 2 if offset else 1
    if rows < min_rows:
        with pytest.raises(NoDataError):
            plan_batches(rows, first_wanted, offset, batch_size, min_rows)
        return
    batches = plan_batches(rows, first_wanted, offset, batch_size, min_rows)
    covered: set[int] = set()
    for batch in batches:
        assert 0 <= batch.start < batch.stop <= rows
        assert min_rows <= batch.stop - batch.start <= max(batch_size, min_rows, offset + 1)
        covered |= set(range(batch.start + offset, batch.stop))
    wanted = set(range(max(first_wanted, offset), rows))
    assert wanted <= covered


def test_a_one_row_tail_of_an_lstm_window_reaches_back_instead_of_failing():
    # offset 5 (lookback_window 6), 5 outputs per batch of 10: the last output row (16) alone would make a
    # request of 6 rows, which Gordo answers with 500; it is sent with one more row of history instead.
    batches = plan_batches(rows=17, first_wanted=6, offset=5, batch_size=10, min_rows=7)
    assert [(b.start, b.stop) for b in batches] == [(1, 11), (6, 16), (10, 17)]
