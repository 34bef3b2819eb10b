"""Model input as Gordo's training built it: the rows gordo-client would send for the same buckets.

Gordo (gordo-core's `TimeSeriesDataset`) turns raw sensor points into model rows like this: per tag,
aggregate per bucket of the model's resolution (`aggregation_methods`), fill gaps with
`interpolation_method` (linear, or forward fill) no further than `interpolation_limit` from the last
value — linear interpolation also carries the last value forward past the end of the data — then keep
only the rows where every tag has a value, apply `row_filter`, and split X (tag_list) from y
(target_tag_list). A model with an offset (an LSTM's look-back) outputs one row per input row after
its first `model_offset` rows.

A window's rows are the buckets that complete inside it (latigo.timegrid). Their values depend on
data around them, so the fetch reaches beyond the window where it matters:
- **history**: the model offset plus `history_margin` rows (gordo-client's own margin is 5); when the
  rows before the window are too few for the offset, or a tag's gap at the start of what was read
  reaches the rows that are sent (a gap is filled from the value before it), once more back to
  `max_history`;
- **look-ahead**: with linear interpolation a gap that reaches the window's end is interpolated
  towards the first value after it, so when the window's last bucket has a gap, the data after the
  window is read too (up to `max_history`). In live operation only what has arrived can be used.
So each bucket gets the value gordo-client computes over any longer range that contains it, as long
as the values around its gap lie within `max_history`. One read per window normally, at most three.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd

from latigo.errors import NoDataError, PermanentError
from latigo.interfaces import SensorDataProvider, check_aggregation
from latigo.row_filter import RowFilter
from latigo.timegrid import predicted_buckets
from latigo.types import ModelInfo, TimeRange

log = logging.getLogger(__name__)

INTERPOLATION_METHODS = ("linear_interpolation", "ffill")
_ZERO_WHEN_EMPTY = frozenset({"sum", "count"})  # pandas' resample gives 0, not a gap, for an empty bucket


@dataclass(frozen=True)
class InputSettings:
    history_margin: int = field(default=5, metadata={"min": 0})
    """Rows of history sent beyond the model's offset (gordo-client sends 5)."""
    max_history: timedelta = timedelta(days=2)
    """How far around a window latigo looks for the values a gap touching its edge is filled from (and,
    before it, for the rows an offset model needs when rows are missing)."""
    look_ahead: bool = True
    """Read data after the window to interpolate a gap that reaches the window's end."""


@dataclass
class ModelInput:
    """What to send for one window: X and y (complete rows, history first) and the bucket starts whose
    outputs belong to the window. `note` says why there is nothing to send when that is an expected
    outcome: no bucket completes in the window, or the row filter rejects every row of it."""

    X: pd.DataFrame
    y: pd.DataFrame
    span: TimeRange | None
    fetched: TimeRange | None = None
    fetches: int = 0
    note: str = ""

    @property
    def empty(self) -> bool:
        return self.span is None or self.rows_in_span == 0

    @property
    def rows_in_span(self) -> int:
        if self.span is None:
            return 0
        return int((self.X.index >= pd.Timestamp(self.span.start)).sum())


@dataclass(frozen=True)
class InputRecipe:
    """A model's input recipe, checked once: what to fetch and how to turn it into rows."""

    info: ModelInfo
    columns: tuple[str, ...]
    methods: tuple[str, ...]
    multi: bool
    fill_rows: int | None
    row_filter: RowFilter

    @classmethod
    def of(cls, info: ModelInfo) -> InputRecipe:
        methods = (info.aggregation,) if isinstance(info.aggregation, str) else tuple(info.aggregation)
        if not methods:
            raise PermanentError(f"model {info.name!r}: aggregation_methods is empty")
        for method in methods:
            try:
                check_aggregation(method)
            except PermanentError as exc:
                raise PermanentError(f"model {info.name!r}: {exc}") from None
        if info.interpolation_method not in INTERPOLATION_METHODS:
            raise PermanentError(f"model {info.name!r}: interpolation_method {info.interpolation_method!r} is not "
                                 f"one of {', '.join(INTERPOLATION_METHODS)}")
        row_filter = RowFilter.parse(info.row_filter, info.name)
        columns = tuple(dict.fromkeys([*info.tags, *info.target_tags, *row_filter.names]))
        return cls(info, columns, methods, not isinstance(info.aggregation, str), _fill_rows(info), row_filter)


def _fill_rows(info: ModelInfo) -> int | None:
    """Gordo's limit in rows: int(limit / resolution); a limit below one row is refused, as Gordo does."""
    if info.interpolation_limit is None:
        return None
    rows = int(info.interpolation_limit / info.resolution)
    if rows <= 0:
        raise PermanentError(f"model {info.name!r}: interpolation_limit {info.interpolation_limit} is shorter "
                             f"than the resolution {info.resolution}")
    return rows


def build_model_input(
    info: ModelInfo, window: TimeRange, source: SensorDataProvider, settings: InputSettings | None = None
) -> ModelInput:
    """The rows to send for the buckets that complete in `window` (an empty input with a note when none
    completes in it, or the row filter rejects all of them).

    Raises NoDataError naming the tags when a tag has no data at all, or when no bucket of the window
    has a complete row; PermanentError for sensors the source does not know or a recipe latigo cannot
    follow."""
    settings = settings or InputSettings()
    span = predicted_buckets(window, info.resolution)
    if span is None:
        nothing = pd.DataFrame()
        return ModelInput(nothing, nothing, None, note=f"no {info.resolution} bucket of the model completes in "
                          f"{window}")
    recipe = InputRecipe.of(info)
    fetcher = _Fetcher(recipe, source, span, settings)
    rows = fetcher.complete_rows()
    silent = fetcher.tags_without_data()
    if silent:
        raise NoDataError(f"model {info.name!r}: no data for {', '.join(silent)} in {fetcher.fetched}")
    history = rows[rows.index < pd.Timestamp(span.start)]
    keep_history = info.model_offset + settings.history_margin
    rows = rows.iloc[max(0, len(history) - keep_history):]
    rows = rows[rows.index < pd.Timestamp(span.end)]
    X, y = _split(rows, recipe)
    if not (rows.index >= pd.Timestamp(span.start)).any():
        reason = fetcher.why_no_rows()
        if not fetcher.filtered_out():
            raise NoDataError(f"model {info.name!r}: no complete row in buckets {span}: {reason}")
        return ModelInput(X, y, span, fetcher.fetched, fetcher.fetches, note=reason)
    return ModelInput(X, y, span, fetcher.fetched, fetcher.fetches)


class _Fetcher:
    """Reads the recipe's columns around `span`, widening the range while the rows that matter depend
    on data outside it."""

    def __init__(self, recipe: InputRecipe, source: SensorDataProvider, span: TimeRange,
                 settings: InputSettings) -> None:
        self.recipe, self.source, self.span, self.settings = recipe, source, span, settings
        info = recipe.info
        self.step = info.resolution
        start = span.start - (info.model_offset + settings.history_margin) * self.step
        self.earliest = min(start, span.start - settings.max_history)
        self.fetched = TimeRange(start, span.end)
        self.fetches = 0
        self.raw = self._read(self.fetched.start, self.fetched.end)
        self.looked_ahead = False

    def complete_rows(self) -> pd.DataFrame:
        """Filled, joined and filtered rows over everything fetched (each widening happens at most once)."""
        while True:
            rows = self._rows()
            if self._needs_history(rows):
                self._widen_back()
            elif self._needs_look_ahead():
                self._look_ahead()
            else:
                return rows

    def tags_without_data(self) -> list[str]:
        """Tags without a single value in everything fetched (Gordo refuses those: InsufficientDataError)."""
        empty = self.raw.columns[self.raw.isna().all().to_numpy()]
        return _names([column[0] if isinstance(column, tuple) else column for column in empty])

    def _inside(self) -> pd.DataFrame:
        filled = self._filled()
        inside = filled[filled.index >= pd.Timestamp(self.span.start)]
        return inside[inside.index < pd.Timestamp(self.span.end)]

    def filtered_out(self) -> bool:
        """Whether the window has complete rows and the row filter rejected them all."""
        return bool(self.recipe.row_filter) and not self._inside().dropna(how="any").empty

    def why_no_rows(self) -> str:
        if self.filtered_out():
            return f"row_filter {' & '.join(self.recipe.row_filter.expressions)!r} rejects every row of the window"
        inside = self._inside()
        gaps = [column[0] if isinstance(column, tuple) else column
                for column in inside.columns if inside[column].isna().any()]
        return f"no value (after filling gaps) for {', '.join(_names(gaps))}"

    # -- reading

    def _read(self, start: datetime, end: datetime) -> pd.DataFrame:
        recipe = self.recipe
        parts = []
        for method in recipe.methods:
            self.fetches += 1
            frame = self.source.get_data_for_range(start, end, list(recipe.columns), self.step, aggregation=method)
            if frame.missing:
                raise PermanentError(f"model {recipe.info.name!r}: sensors missing from the sensor source: "
                                     f"{', '.join(frame.missing)}")
            data = frame.data.reindex(columns=list(recipe.columns)).astype(float)
            data.index = pd.DatetimeIndex(pd.to_datetime(data.index, utc=True))
            _check_on_grid(data.index, self.step, self.source)
            if method in _ZERO_WHEN_EMPTY:
                data = data.fillna(0.0)
            if recipe.multi:
                data.columns = pd.MultiIndex.from_tuples([(tag, method) for tag in data.columns])
            parts.append(data)
        joined = pd.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        if recipe.multi:
            joined = joined[[(tag, method) for tag in recipe.columns for method in recipe.methods]]
        return joined

    def _merge(self, extra: pd.DataFrame) -> None:
        self.raw = pd.concat([self.raw, extra]).sort_index()
        self.raw = self.raw[~self.raw.index.duplicated(keep="last")]

    def _widen_back(self) -> None:
        """One read back to `max_history`: a leading gap's fill comes from the last value before it."""
        start = self.fetched.start
        log.debug("model %s: reading back from %s to %s", self.recipe.info.name, start, self.earliest)
        self._merge(self._read(self.earliest, start))
        self.fetched = TimeRange(self.earliest, self.fetched.end)

    def _look_ahead(self) -> None:
        """One read forward to `max_history` past the window: a trailing gap is interpolated towards the
        first value after it (data that has not arrived yet simply is not there)."""
        end, until = self.fetched.end, self.span.end + self.settings.max_history
        self._merge(self._read(end, until))
        self.fetched = TimeRange(self.fetched.start, until)
        self.looked_ahead = True

    # -- deciding

    def _needs_history(self, rows: pd.DataFrame) -> bool:
        if self.fetched.start <= self.earliest:
            return False
        info = self.recipe.info
        before = rows.index[rows.index < pd.Timestamp(self.span.start)]
        needed = info.model_offset + (1 if info.model_offset else 0)
        if len(before) < needed:
            return True
        first_needed = before[-needed] if needed else pd.Timestamp(self.span.start)
        return self._leading_gap_reaches(first_needed)

    def _leading_gap_reaches(self, moment: pd.Timestamp) -> bool:
        """Whether a tag's gap at the start of the fetched range lasts until `moment`: filling it
        depends on the value before the range."""
        first = self.raw.iloc[0]
        for column in self.raw.columns[first.isna().to_numpy()]:
            valid = self.raw[column].first_valid_index()
            if valid is None or valid > moment:
                return True
        return False

    def _needs_look_ahead(self) -> bool:
        if (not self.settings.look_ahead or self.looked_ahead
                or self.recipe.info.interpolation_method != "linear_interpolation"):
            return False
        last = self.raw.iloc[-1] if len(self.raw) else None
        return last is not None and bool(last.isna().any())

    # -- Gordo's transformation

    def _filled(self) -> pd.DataFrame:
        limit = self.recipe.fill_rows
        if self.recipe.info.interpolation_method == "ffill":
            return self.raw.ffill(limit=limit)
        return self.raw.interpolate(limit=limit)

    def _rows(self) -> pd.DataFrame:
        rows = self._filled().dropna(how="any")
        return self.recipe.row_filter.apply(rows, self.recipe.info.name)


def _check_on_grid(index: pd.DatetimeIndex, step: timedelta, source: SensorDataProvider) -> None:
    """A provider must return one row per bucket start (the SensorDataProvider contract); anything else
    would be averaged wrongly, so it is refused by name."""
    stamps = index.as_unit("ns").asi8
    if len(stamps) and ((stamps % int(pd.Timedelta(step).value)) != 0).any():
        raise PermanentError(f"sensor provider {type(source).__name__} returned timestamps off the {step} bucket "
                             f"grid (e.g. {index[(stamps % int(pd.Timedelta(step).value)) != 0][0].isoformat()})")


def _split(rows: pd.DataFrame, recipe: InputRecipe) -> tuple[pd.DataFrame, pd.DataFrame]:
    info = recipe.info
    return rows[list(info.tags)], rows[list(info.target_tags)]


def _names(columns: list[str]) -> list[str]:
    return list(dict.fromkeys(str(column) for column in columns))

