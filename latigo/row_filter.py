"""Gordo's `row_filter`: a pandas query over the model's tags; rows it rejects are not sent to the model.

Gordo trains (and its client predicts) only on rows for which the expression is true, e.g.
"`TAG-1` > 0.5 & `TAG 2` < 100"; a list of expressions is AND-ed. Tags the filter names that the
model does not use are fetched too and dropped afterwards. An expression latigo cannot evaluate is a
permanent error naming it: silently skipping the filter would send rows the model never saw in training.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from latigo.errors import PermanentError

# Names pandas' eval resolves itself: the frame's index and columns, and its math functions.
_PANDAS_NAMES = frozenset({
    "index", "columns", "sin", "cos", "exp", "log", "expm1", "log1p", "sqrt", "sinh", "cosh", "tanh", "arcsin",
    "arccos", "arctan", "arccosh", "arcsinh", "arctanh", "abs", "log10", "floor", "ceil", "arctan2", "True",
    "False", "None",
})
_BACKTICKED = re.compile(r"`([^`]*)`")
_BATCH = 15  # Gordo evaluates list filters 15 at a time (numexpr's operand limit)


@dataclass(frozen=True)
class RowFilter:
    """A parsed row filter: its expressions and the column names they read."""

    expressions: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, raw: str | Sequence[str], model: str = "") -> RowFilter:
        expressions = (raw,) if isinstance(raw, str) else tuple(raw)
        expressions = tuple(text for text in expressions if str(text).strip())
        names: dict[str, None] = {}
        for text in expressions:
            if not isinstance(text, str):
                raise PermanentError(f"model {model!r}: row_filter entry {text!r} is not a string")
            for name in _names(text, model):
                names[name] = None
        return cls(expressions, tuple(names))

    def __bool__(self) -> bool:
        return bool(self.expressions)

    def apply(self, data: pd.DataFrame, model: str = "") -> pd.DataFrame:
        """The rows of `data` for which every expression holds."""
        if not self.expressions or data.empty:
            return data
        masks = [self._evaluate(data, " & ".join(self.expressions[i:i + _BATCH]), model)
                 for i in range(0, len(self.expressions), _BATCH)]
        keep = np.logical_and.reduce([np.asarray(mask, dtype=bool) for mask in masks])
        return data[keep]

    @staticmethod
    def _evaluate(data: pd.DataFrame, expression: str, model: str) -> pd.Series:
        try:
            mask = data.eval(expression, engine="python", parser="pandas")
        except Exception as exc:  # pandas raises many kinds for a bad expression
            raise PermanentError(f"model {model!r}: row_filter {expression!r} cannot be evaluated: "
                                 f"{type(exc).__name__}: {exc}") from None
        if not isinstance(mask, pd.Series) or mask.dtype != bool:
            raise PermanentError(f"model {model!r}: row_filter {expression!r} is not a true/false condition")
        return mask


def _names(expression: str, model: str) -> list[str]:
    """The column names an expression reads: backticked names as written, bare identifiers otherwise."""
    quoted: list[str] = []

    def placeholder(match: re.Match[str]) -> str:
        quoted.append(match.group(1))
        return f"__latigo_column_{len(quoted) - 1}"

    python_text = _BACKTICKED.sub(placeholder, expression)
    python_text = python_text.replace("&", " and ").replace("|", " or ").replace("~", " not ")
    try:
        tree = ast.parse(python_text.strip(), mode="eval")
        list(tokenize.generate_tokens(io.StringIO(python_text).readline))
    except (SyntaxError, tokenize.TokenError) as exc:
        raise PermanentError(f"model {model!r}: row_filter {expression!r} is not an expression latigo can "
                             f"evaluate ({exc.msg if isinstance(exc, SyntaxError) else exc})") from None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _PANDAS_NAMES and not node.id.startswith("@"):
            if node.id.startswith("__latigo_column_"):
                names.append(quoted[int(node.id.rsplit("_", 1)[1])])
            else:
                names.append(node.id)
        if isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name) and node.func.id in _PANDAS_NAMES):
            raise PermanentError(f"model {model!r}: row_filter {expression!r} calls a function pandas' eval "
                                 "does not provide")
    return names
