"""Sending tasks to Event Hubs: JSON events batched up to the service's size limit, partition key = model
name (one model's windows stay in order on one partition), message id = task id (a retried send can
duplicate an event; the executor's ledger dedupes by task id). A send that still fails after its retries
raises TransientError: nothing is dropped silently."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from azure.eventhub import EventData, EventHubProducerClient

from latigo.errors import PermanentError, TransientError
from latigo.errors import describe_exception as _describe
from latigo.types import Task

log = logging.getLogger("latigo.queues.eventhub")


class EventHubSender:
    """The producing half of the Event Hub queue: one producer client, re-made after a failure."""

    def __init__(self, connection_string: str, eventhub_name: str, send_timeout: float, send_retries: int,
                 client_kwargs: dict[str, Any]) -> None:
        self._connection_string, self.eventhub_name = connection_string, eventhub_name
        self._timeout, self._retries, self._client_kwargs = send_timeout, send_retries, client_kwargs
        self._producer: EventHubProducerClient | None = None
        self._lock = threading.Lock()

    def probe(self) -> str:
        """Ask the service for the hub's partitions (a management request over AMQP)."""
        with self._lock:
            return f"{len(self._producer_client().get_partition_ids())} partitions"

    def close(self) -> None:
        with self._lock:
            self._reset_producer()

    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        """Send the tasks, batched per model; raises TransientError if a batch could not be sent.

        Batches sent before a failure stay sent (the caller retries the whole call; the ledger dedupes).
        `connection` is not used: the hub is not in latigo's database."""
        if not tasks:
            return 0
        by_model: dict[str, list[Task]] = defaultdict(list)
        for task in tasks:
            by_model[task.model].append(task)
        sent = 0
        with self._lock:
            for model, group in by_model.items():
                sent += self._send_model(model, group)
        return sent

    def _send_model(self, model: str, tasks: list[Task]) -> int:
        producer = self._producer_client()
        sent, batch, in_batch = 0, None, 0
        for task in tasks:
            event = EventData(task.to_json())
            event.message_id = task.task_id
            event.content_type = "application/json"
            if batch is None:
                batch, in_batch = self._new_batch(producer, model), 0
            try:
                batch.add(event)
                in_batch += 1
                continue
            except ValueError:
                if in_batch == 0:
                    raise PermanentError(f"task {task.task_id} does not fit in an event hub batch") from None
            self._send(producer, batch, model, in_batch)
            sent += in_batch
            batch = self._new_batch(producer, model)
            batch.add(event)
            in_batch = 1
        if batch is not None and in_batch:
            self._send(producer, batch, model, in_batch)
            sent += in_batch
        return sent

    def _new_batch(self, producer: EventHubProducerClient, model: str) -> Any:
        try:
            return producer.create_batch(partition_key=model)
        except Exception as exc:
            self._reset_producer()
            raise TransientError(f"event hub {self.eventhub_name}: cannot open a sender: {_describe(exc)}") from None

    def _send(self, producer: EventHubProducerClient, batch: Any, model: str, count: int) -> None:
        try:
            producer.send_batch(batch, timeout=self._timeout)
        except Exception as exc:
            self._reset_producer()
            raise TransientError(
                f"event hub {self.eventhub_name}: sending {count} tasks of model {model!r} failed after "
                f"{self._retries + 1} attempts: {_describe(exc)}"
            ) from None

    def _producer_client(self) -> EventHubProducerClient:
        if self._producer is None:
            self._producer = EventHubProducerClient.from_connection_string(
                self._connection_string, **self._client_kwargs
            )
        return self._producer

    def _reset_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close()
            except Exception as exc:
                log.debug("closing the event hub producer: %s", _describe(exc))
