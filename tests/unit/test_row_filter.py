"""Gordo's row_filter: the rows kept are the rows pandas' query keeps; what cannot be evaluated is named."""

import pandas as pd
import pytest

from latigo.errors import PermanentError
from latigo.row_filter import RowFilter


@pytest.fixture
def data():
    return pd.DataFrame({"TAG 1": [0.0, 1.0, 2.0, 3.0], "tag-2": [5.0, 4.0, 3.0, 2.0], "plain": [1, 1, 0, 0]})


def test_backticked_names_and_bare_identifiers_are_the_columns_read():
    parsed = RowFilter.parse("(`TAG 1` > 0.5) & (`tag-2` < 4.5) | plain == 1")
    assert set(parsed.names) == {"TAG 1", "tag-2", "plain"}


def test_kept_rows_match_pandas_query(data):
    expression = "`TAG 1` > 0.5 & `tag-2` > 2.5"
    assert RowFilter.parse(expression).apply(data).index.tolist() == data.query(expression).index.tolist() == [1, 2]


def test_a_list_is_anded(data):
    kept = RowFilter.parse(["`TAG 1` > 0.5", "plain == 0"]).apply(data)
    assert kept.index.tolist() == [2, 3]


def test_math_functions_are_not_columns():
    assert RowFilter.parse("abs(`tag-2`) > 3").names == ("tag-2",)


@pytest.mark.parametrize("expression", ["`TAG 1` >", "import os", "__import__('os').system('x') > 0"])
def test_an_expression_that_cannot_be_evaluated_is_a_permanent_error_naming_it(expression, data):
    with pytest.raises(PermanentError, match="row_filter"):
        RowFilter.parse(expression, "m").apply(data)


def test_an_expression_that_is_not_a_condition_is_refused(data):
    with pytest.raises(PermanentError, match="not a true/false condition"):
        RowFilter.parse("`TAG 1` + 1").apply(data)


def test_an_empty_filter_keeps_everything(data):
    assert not RowFilter.parse("")
    assert RowFilter.parse("").apply(data).equals(data)
