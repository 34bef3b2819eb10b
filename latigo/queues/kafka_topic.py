"""The Kafka task queue's topic: whether it exists and with which partitions, created when configured to be."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from latigo.errors import LatigoError
from latigo.errors import describe_exception as _describe
from latigo.queues.kafka_settings import ClientConfig, KafkaSettings

log = logging.getLogger("latigo.queues.kafka")
METADATA_TIMEOUT = 10.0


class TopicMissing(LatigoError):
    """The topic does not exist and latigo was not asked to create it."""


def topic_partitions(admin: Any, topic: str, timeout: float = METADATA_TIMEOUT) -> list[int] | None:
    """The topic's partition ids, None when the brokers do not know it. Raises LatigoError when they do
    not answer. Every topic is listed: asking for one by name lets a broker that auto-creates topics
    (Apache Kafka's default, and Tansu) create it."""
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise LatigoError(f"kafka: no answer from the brokers: {_describe(exc)}") from None
    found = metadata.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        return None
    return sorted(found.partitions)


def ensure_topic(config: ClientConfig, settings: KafkaSettings) -> list[int]:
    """The topic's partitions; it is created first when missing and `create_topic` is set, else TopicMissing."""
    admin = AdminClient(config.producer())
    partitions = topic_partitions(admin, config.topic)
    if partitions is not None:
        return partitions
    if not settings.create_topic:
        raise TopicMissing(f"kafka topic {config.topic!r} does not exist at {config.where} (create it, or set "
                           "task_queue.create_topic: true)")
    futures = admin.create_topics([NewTopic(config.topic, settings.partitions, settings.replication_factor)],
                                  operation_timeout=METADATA_TIMEOUT, request_timeout=METADATA_TIMEOUT)
    try:
        futures[config.topic].result(METADATA_TIMEOUT)
        log.info("created kafka topic %s with %d partitions at %s", config.topic, settings.partitions, config.where)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another process created it meanwhile: fine
            raise LatigoError(f"kafka topic {config.topic!r} could not be created at {config.where}: "
                              f"{_describe(exc)}") from None
    partitions = topic_partitions(admin, config.topic)
    if partitions is None:
        raise LatigoError(f"kafka topic {config.topic!r} was created at {config.where} but is not listed yet")
    return partitions
