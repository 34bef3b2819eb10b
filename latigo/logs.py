"""Logging set-up: text or one JSON object per line, secrets masked, task context on every line.

The executor binds (task_id, model, window) with `task_context(...)`; every log line
emitted inside, by latigo or by a library, carries them, so one grep follows a task.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from latigo.secrets import SecretFilter, mask_text

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "latigo_log_context", default=MappingProxyType({})
)
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "context"}


@contextmanager
def task_context(**fields: Any) -> Iterator[None]:
    """Attach fields (task_id, model, window, ...) to every log line emitted inside the block."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = {**_context.get(), **getattr(record, "context", {})}
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "context", None)
        if context:
            fields = mask_text(" ".join(f"{k}={v}" for k, v in context.items()))
            first, _, rest = text.partition("\n")
            text = f"{first} [{fields}]" + (f"\n{rest}" if rest else "")
        return text


class JsonFormatter(logging.Formatter):
    """One object per line: time, level, logger, message, context fields, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}
        for key, value in {**getattr(record, "context", {}), **extras}.items():
            entry.setdefault(key, _masked(value))  # the four fields above keep their meaning
        if record.exc_info or record.exc_text:
            exc_info = record.exc_info or (None, None, None)
            entry["exception"] = mask_text(record.exc_text or self.formatException(exc_info))
        if record.stack_info:
            entry["stack"] = mask_text(record.stack_info)
        return json.dumps(entry, default=lambda value: mask_text(str(value)))


def _masked(value: Any) -> Any:
    """Context and extra fields are data from anywhere: mask secrets in their text as well."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _masked(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return mask_text(str(value))


def setup_logging(level: str = "INFO", fmt: str = "text", stream: Any = None) -> None:
    """Configure the root logger once per process (idempotent: replaces latigo's handler)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.addFilter(SecretFilter())
    handler.set_name("latigo")
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == "latigo":
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("azure", "urllib3", "uamqp", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class _AboveBars:
    """A console stream whose writes go through tqdm.write: the bars are cleared, the line written, the bars
    drawn again below it."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        tqdm.write(text, file=self.stream, end="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextmanager
def logs_above_bars() -> Iterator[None]:
    """While progress bars are drawn (demo, backfill): each log line goes above them instead of through
    them (without it a log line is written onto the bar's line). Unlike tqdm's logging_redirect_tqdm, which
    swaps in a handler of its own, latigo's console handler stays with its filters and level; only its
    stream is wrapped."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler)
                and getattr(h, "stream", None) in (sys.stdout, sys.stderr)]
    originals = [(handler, handler.stream) for handler in consoles]
    for handler, stream in originals:
        handler.setStream(_AboveBars(stream))
    try:
        yield
    finally:
        for handler, stream in originals:
            handler.setStream(stream)
