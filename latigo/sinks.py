"""Extra destinations for predictions besides the database, written after the primary commit.

A sink is best-effort by default: a failure (after the sink's own client retried, as each sink's HTTP
or InfluxDB client does: one retry owner per call path) is logged and counted
(latigo_sink_failures_total), and the task stays done — its predictions are safe in the database.
A sink marked `required: true` is written before the commit instead: the task is not done until the
sink has its rows, and a sink failure retries the task (sinks are idempotent, so a retried write
rewrites the same points).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from latigo.errors import TransientError, describe_exception
from latigo.interfaces import PredictionSink
from latigo.observability import SINK_FAILURES
from latigo.types import PredictionFrame

log = logging.getLogger(__name__)

class SinkSet:
    """The configured sinks: (sink, required) pairs."""

    def __init__(self, sinks: Sequence[tuple[PredictionSink, bool]]) -> None:
        self.required = [sink for sink, required in sinks if required]
        self.optional = [sink for sink, required in sinks if not required]

    def write_required(self, frame: PredictionFrame) -> None:
        """Before the commit; a failure is the task's TransientError (the task is retried)."""
        for sink in self.required:
            try:
                sink.write(frame)
            except Exception as exc:
                SINK_FAILURES.labels(sink=_name(sink)).inc()
                raise TransientError(f"required sink {_name(sink)} failed: {describe_exception(exc)}") from exc

    def write(self, frame: PredictionFrame) -> None:
        """After the commit; never raises."""
        if not frame.rows:
            return
        for sink in self.optional:
            try:
                sink.write(frame)
            except Exception as exc:
                SINK_FAILURES.labels(sink=_name(sink)).inc()
                log.warning("sink %s failed (%s); these predictions are in the database only", _name(sink),
                            describe_exception(exc))

    def close(self) -> None:
        for sink in [*self.required, *self.optional]:
            try:
                sink.close()
            except Exception as exc:
                log.warning("closing sink %s failed: %s", _name(sink), describe_exception(exc))


def _name(sink: PredictionSink) -> str:
    return type(sink).__name__
