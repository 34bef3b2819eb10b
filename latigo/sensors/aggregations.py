"""The bucket aggregations every sensor provider supports (pandas' names, as Gordo's
`aggregation_methods` spells them)."""

from __future__ import annotations

from latigo.errors import PermanentError

AGGREGATIONS = frozenset({"mean", "max", "min", "sum", "count", "median", "std", "first", "last"})
"""The bucket aggregations every sensor provider supports (pandas' names)."""


def check_aggregation(method: str) -> str:
    if method not in AGGREGATIONS:
        raise PermanentError(f"aggregation method {method!r} is not supported; use one of "
                             f"{', '.join(sorted(AGGREGATIONS))}")
    return method
