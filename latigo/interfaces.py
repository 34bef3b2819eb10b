"""The contracts between latigo's loops and the systems it talks to.

The four provider interfaces keep the seed's method names; the loops only ever
see these, so a new sensor store or model server is a new adapter, not a change
to the scheduler or the executor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from latigo.errors import PermanentError
from latigo.types import ModelInfo, ModelRef, ModelStatus, PredictionFrame, SensorFrame, Started, Task


class SensorInformationProvider(ABC):
    """Which sensors (tags) exist."""

    @abstractmethod
    def get_sensor_list(self) -> list[str]:
        """Every sensor name the source knows."""

    @abstractmethod
    def sensor_exists(self, name: str) -> bool:
        """Whether `name` is a known sensor."""


AGGREGATIONS = frozenset({"mean", "max", "min", "sum", "count", "median", "std", "first", "last"})
"""The bucket aggregations every SensorDataProvider supports (pandas' names, as Gordo's `aggregation_methods`
spells them). Part of the contract, so a model's input recipe can be checked without knowing the provider."""


def check_aggregation(method: str) -> str:
    """`method` when it is one of AGGREGATIONS; a PermanentError naming the supported ones otherwise."""
    if method not in AGGREGATIONS:
        raise PermanentError(f"aggregation method {method!r} is not supported; use one of "
                             f"{', '.join(sorted(AGGREGATIONS))}")
    return method


class SensorDataProvider(ABC):
    """Sensor values over a time range."""

    @abstractmethod
    def get_native_range_specifier(self, start: datetime, end: datetime, parameters: Mapping[str, Any]) -> str:
        """The source's own query for the range (InfluxQL, a URL, ...): what get_data_for_range would run.

        `parameters` carries at least `sensors` (list of names) and `resolution` (timedelta)."""

    @abstractmethod
    def get_data_for_range(
        self, start: datetime, end: datetime, sensors: Sequence[str], resolution: timedelta,
        aggregation: str = "mean",
    ) -> SensorFrame:
        """Values of `sensors` over [start, end), one row per `resolution` bucket on the epoch-aligned
        grid (latigo.timegrid), aggregated by `aggregation` (one of AGGREGATIONS: mean, max, min, sum,
        count, median, std, first, last); NaN where a bucket has no points.

        Sensors the source does not have are listed in `SensorFrame.missing`, never dropped silently."""


class ModelInformationProvider(ABC):
    """Which models exist and what they need. A model is (project, name): a provider without projects of its
    own names one (latigo.types.DEFAULT_PROJECT unless configured)."""

    @abstractmethod
    def get_model_list(self) -> list[ModelRef]:
        """The models that can be run now."""

    @abstractmethod
    def model_exists(self, model: ModelRef) -> bool:
        """Whether `model` is a runnable model."""

    @abstractmethod
    def get_model_info(self, model: ModelRef) -> ModelInfo:
        """Tags, resolution and look-back of one model; raises UnknownModelError."""

    def projects(self) -> list[str]:
        """The projects served now (a provider with projects of its own lists them; refreshed per call)."""
        return sorted({ref.project for ref in self.get_model_list()})


class CheckableProvider(ABC):
    """A provider that can report on the health of what it serves (`latigo models check`)."""

    @abstractmethod
    def check_report(self) -> str:
        """Lines for a terminal: what is served, what is missing, and OK or PROBLEMS FOUND at the end."""


class ModelExecutionProvider(ABC):
    """Runs models; also manages their lifecycle where the backend allows it."""

    @abstractmethod
    def register_model(self, model_data: Mapping[str, Any]) -> None:
        """Create (or update) a model from a Gordo-like machine description (its `project` key picks the
        project where the provider has several)."""

    @abstractmethod
    def unregister_model(self, model: ModelRef) -> None:
        """Remove a model."""

    @abstractmethod
    def get_model_status(self, model: ModelRef) -> ModelStatus:
        """The model's lifecycle state with a reason when it is not ready."""

    @abstractmethod
    def execute_model(self, model: ModelRef, start: datetime, end: datetime) -> PredictionFrame:
        """Predictions of `model` for [start, end): the provider fetches the sensor data it needs
        (including look-back before `start`) and returns only rows inside the range, with the revision
        that produced them.

        Raises TransientError (worth a retry) or PermanentError (not)."""


@dataclass(frozen=True)
class Settlement:
    """How a delivery ends: `ack` (finished: never again), `nack` (a retry after `delay` seconds: counts as a
    delivery) or `release` (handed back unused after `delay`: counts against no cap)."""

    how: Literal["ack", "nack", "release"]
    delay: float = 0.0

    def apply(self, delivery: Delivery, connection: Any = None) -> None:
        if self.how == "ack":
            delivery.ack(connection)
        elif self.how == "nack":
            delivery.nack(self.delay, connection)
        else:
            delivery.release(connection, self.delay)


ACK = Settlement("ack")


class UnitOfWork(Protocol):
    """One transaction of the ledger and what must follow its commit."""

    connection: Any

    def after_commit(self, step: Callable[[], None]) -> None:
        """Run `step` once the transaction has committed (never when it rolls back)."""


class Delivery(ABC):
    """One message taken from a TaskQueue; exactly one of ack/nack/release ends it.

    The executor decides a delivery's end once and hands it to `settle` with the ledger's unit of work: a
    broker's message is settled after the commit (the ledger says what happened before the broker
    forgets the message: a crash between the two redelivers it, and the ledger skips it); a queue in
    latigo's database settles inside the transaction, so results, ledger and the message's removal commit
    together."""

    task: Task | None
    """The decoded task, or None when the body could not be decoded (see `error`)."""
    body: bytes
    error: str
    attempt: int
    """How many times this message has been delivered, this time included (1 = first)."""
    message_id: str | None = None
    """The transport's id of the message (the task id when the producer set it)."""
    started: Started | None = None
    """Set by a queue that started the task in the ledger in the same transaction as the claim."""

    def settle(self, settlement: Settlement, unit: UnitOfWork) -> None:
        """Carry out `settlement` as part of `unit`: by default after its commit."""
        unit.after_commit(lambda: settlement.apply(self))

    @abstractmethod
    def ack(self, connection: Any = None) -> None:
        """The task is finished (results committed): never deliver it again."""

    @abstractmethod
    def nack(self, delay: float = 0.0, connection: Any = None) -> None:
        """Deliver it again after `delay` seconds (a retry: counts as a delivery)."""

    def release(self, connection: Any = None, delay: float = 0.0) -> None:
        """Hand it back unused (shutdown, infrastructure fault, a peer it needs is down): deliver it again
        after `delay` seconds; not a retry (it counts against no cap)."""
        self.nack(delay, connection)

    def renew(self) -> None:  # noqa: B027 - optional for queues without leases
        """Keep the claim alive while the task is still running."""


class TaskQueue(ABC):
    """Where the scheduler puts tasks and executors take them: a transport. What happens to a task is
    the ledger's business (latigo.lifecycle)."""

    @abstractmethod
    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        """Enqueue tasks (batched as the transport needs); returns how many were new to the queue.

        A queue in latigo's database inserts them in `connection`'s transaction. Raises TransientError
        when they could not all be enqueued: nothing is dropped silently."""

    @abstractmethod
    def get(self, timeout: float) -> Delivery | None:
        """The next task, waiting at most `timeout` seconds; None when there is none."""

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and claims."""

    def gauges(self) -> QueueGauges:
        """What the queue can tell cheaply about its backlog (None where it cannot)."""
        return QueueGauges()

    def group_lag(self) -> Mapping[str, int] | None:
        """Per partition, messages the consumers have not committed yet, as the transport tells anyone who
        asks (`latigo status`); None where it has no such view."""
        return None

    def probe(self) -> str:
        """Connect to the transport and say what it holds (for `check-config --connect`); raises when it
        does not answer."""
        gauges = self.gauges()
        return f"reachable; {gauges.in_queue if gauges.in_queue is not None else '?'} tasks in the queue"


@dataclass(frozen=True)
class QueueGauges:
    """A queue's view of its backlog, for /metrics and `latigo status`."""

    waiting: int | None = None
    """Messages ready to be taken now."""
    in_queue: int | None = None
    """Every message not yet settled, claimed or delayed ones included."""
    oldest_age_seconds: float | None = None
    lag_by_partition: Mapping[str, int] = field(default_factory=dict)
    """Event Hub and Kafka: messages received but not yet checkpointed (committed), per owned partition."""
    consumer_lag_by_partition: Mapping[str, int] = field(default_factory=dict)
    """Kafka: messages in an owned partition past the group's committed offset (high watermark − commit)."""


class PredictionSink(ABC):
    """An extra destination for predictions besides the database (e.g. InfluxDB for Grafana).

    Writes must be idempotent: a redelivered task writes the same points again."""

    @abstractmethod
    def write(self, frame: PredictionFrame) -> int:
        """Write the rows; returns how many were written."""

    def close(self) -> None:  # noqa: B027
        """Flush and release resources."""
