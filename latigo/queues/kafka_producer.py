"""Sending tasks to Kafka: one JSON message per task, key = the model ("project/name", so one model's windows
stay in order on one partition), header `task_id` = the task id (a retried send can duplicate a message; the
executor's ledger dedupes by task id). put_many returns once the brokers acknowledged every message, and
raises TransientError when any was not: nothing is dropped silently."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from latigo.errors import LatigoError, PermanentError, TransientError
from latigo.errors import describe_exception as _describe
from latigo.queues.kafka_settings import ClientConfig, KafkaSettings
from latigo.queues.kafka_topic import ensure_topic
from latigo.types import Task

log = logging.getLogger("latigo.queues.kafka")


class KafkaSender:
    """The producing half of the Kafka queue: one producer client for the process."""

    def __init__(self, config: ClientConfig, settings: KafkaSettings) -> None:
        self.config, self.settings = config, settings
        self._producer: Producer | None = None
        self._topic_checked = False
        self._lock = threading.Lock()

    def put_many(self, tasks: Sequence[Task]) -> int:
        """Produce the tasks and wait for the brokers' acknowledgements; raises TransientError naming how many
        were not acknowledged (those that were stay sent: the caller retries the call, the ledger dedupes)."""
        if not tasks:
            return 0
        with self._lock:
            producer = self._client()
            failures: list[KafkaError] = []
            acknowledged = 0

            def report(error: KafkaError | None, message: Message) -> None:
                nonlocal acknowledged
                if error is None:
                    acknowledged += 1
                else:
                    failures.append(error)

            for task in tasks:
                self._produce(producer, task, report)
            left = producer.flush(self.settings.send_timeout.total_seconds() + 5)
            if left or failures:
                reason = failures[0].str() if failures else f"{left} still unacknowledged"
                raise TransientError(f"kafka topic {self.config.topic}: {len(tasks) - acknowledged} of {len(tasks)} "
                                     f"tasks were not acknowledged by {self.config.where}: {reason}")
            return acknowledged

    def _produce(self, producer: Producer, task: Task, report) -> None:
        while True:
            try:
                producer.produce(self.config.topic, key=task.key.encode(), value=task.to_json().encode(),
                                 headers=[("task_id", task.task_id.encode())], on_delivery=report)
                return
            except BufferError:  # the client's local queue is full: let it send, then go on
                producer.poll(0.05)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    raise PermanentError(f"task {task.task_id} is larger than a kafka message may be") from None
                raise TransientError(f"kafka topic {self.config.topic}: {_describe(exc)}") from None

    def _client(self) -> Producer:
        if not self._topic_checked:
            try:
                ensure_topic(self.config, self.settings)
            except LatigoError as exc:
                raise TransientError(str(exc)) from None
            self._topic_checked = True
        if self._producer is None:
            config = {"message.timeout.ms": int(self.settings.send_timeout.total_seconds() * 1000),
                      "error_cb": _log_client_error, **self.config.producer()}
            self._producer = Producer(config)
        return self._producer

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            began = time.monotonic()
            left = producer.flush(10)
            if left:
                log.warning("kafka producer closed with %d messages unsent after %.0fs", left,
                            time.monotonic() - began)


def _log_client_error(error: KafkaError) -> None:
    """librdkafka's own errors (a broker down, reconnecting): worth a line, never an exception here."""
    (log.error if error.fatal() else log.debug)("kafka client: %s", error.str())  # librdkafka logs the rest
