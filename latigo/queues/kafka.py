"""Kafka as latigo's task queue: any Kafka cluster, or Event Hubs through its Kafka endpoint (confluent-kafka).

Producing: latigo.queues.kafka_producer. Settings and the librdkafka configuration: latigo.queues.kafka_settings.

Consuming: one thread owns the consumer (librdkafka calls the rebalance callbacks on it) and hands messages
to the executor's workers through the bounded hand-off of latigo.queues.handoff; when that is full it pauses
its partitions and goes on polling, so the group never takes it for dead. Offsets are committed, only up to
the lowest offset below which every message of the partition is settled (latigo.queues.partition_tracker),
asynchronously every `commit_interval`, and synchronously when a partition is given up. A retry waits in
the hand-off's delay heap: the partition's other messages go on meanwhile, and the commit stays below it.

A rebalance that takes a partition away first drops its queued and delayed messages (never handed out),
then waits up to `revoke_timeout` for the messages workers hold to be settled, commits, and only then lets
the partition go: its next owner resumes where this one stopped. Whatever was still running by then is
replayed there (and skipped or redone by the ledger, never lost).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, Message, TopicPartition

from latigo.errors import LatigoError
from latigo.errors import describe_exception as _describe
from latigo.interfaces import QueueGauges, TaskQueue
from latigo.queues.handoff import HandOff, PartitionDelivery
from latigo.queues.kafka_producer import KafkaSender
from latigo.queues.kafka_settings import ClientConfig, KafkaSettings, client_config
from latigo.queues.kafka_topic import TopicMissing, ensure_topic, topic_partitions
from latigo.queues.partition_tracker import PartitionTracker, Position
from latigo.types import Task

log = logging.getLogger(__name__)
POLL_WAIT = 0.2
"""Seconds one poll waits for a message when none is fetched yet (how fast the loop notices a close)."""
TOPIC_RETRY = 10.0
PAUSE_AFTER = 1.0
"""Seconds the hand-off may stay full before the partitions are paused (see _poll)."""
TOPIC_LOOKUP = 5.0
"""Seconds between metadata requests while the consumer owns no partition (see _look_for_partitions)."""
REJOIN_AFTER = 30.0
"""Seconds a topic may be back (after this consumer saw it missing) with no partition of it assigned here
before the consumer joins the group again (see _look_for_partitions)."""


@dataclass
class _Owned:
    """A partition this consumer holds, from its assignment to its revocation."""

    tracker: PartitionTracker
    committed: int = -1
    """The group's committed offset (the next message to read), as last committed or read at assignment."""
    wanted: int = -1
    """The offset settled messages allow committing (one past the last of the settled prefix)."""
    out: int = 0
    """Deliveries workers hold (taken, not settled)."""
    revoking: bool = False
    """Being given up: nothing more is handed out, a delivery handed back is left to the next owner."""
    high_watermark: int | None = None
    """The broker's, as of the client's last fetch (for the consumer lag)."""


class KafkaDelivery(PartitionDelivery):
    """One consumed message; its tracker's sequence numbers are the partition's offsets."""

    def __init__(self, queue: KafkaTaskQueue, owned: _Owned, message: Message) -> None:
        super().__init__(queue, owned.tracker, int(message.offset() or 0), message.value() or b"")
        self.owned = owned
        self.offset = self.sequence_number
        headers = dict(message.headers() or [])
        task_id = headers.get("task_id")
        self.message_id = task_id.decode(errors="replace") if isinstance(task_id, bytes) else None
        self._taken = False
        """Held by a worker (counted in `owned.out`), from `get` until it is settled or handed back."""
        self._kafka = queue

    def ack(self, connection: Any = None) -> None:
        super().ack(connection)
        self._kafka.returned(self)

    def _again(self, delay: float, retry: bool) -> None:
        if self.owned.revoking and not self._settled:  # the partition is being given up: its next owner has it
            self._settled = True
        super()._again(delay, retry)
        self._kafka.returned(self)

    def __repr__(self) -> str:
        return f"<KafkaDelivery partition={self.partition_id} offset={self.offset} task={self.message_id}>"


@dataclass
class _Session:
    """One consumer client and its partitions; replaced by a fresh one after the client failed."""

    consumer: Any = None
    owned: dict[int, _Owned] = field(default_factory=dict)
    paused: bool | None = None
    """Whether the owned partitions are paused; None after an assignment: librdkafka keeps a partition's
    pause across a rebalance, so the next poll says which it must be."""
    full_since: float | None = None
    """Since when the hand-off has been full."""
    missing_seen: bool = False
    """The topic was seen missing since this consumer last got partitions (a broker that lost it)."""
    back_since: float | None = None
    """Since when the topic is back, seen missing before, while this consumer still owns nothing."""


class KafkaTaskQueue(TaskQueue):
    Settings = KafkaSettings

    @classmethod
    def from_settings(cls, settings: KafkaSettings, components: Any) -> KafkaTaskQueue:
        return cls(settings)

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.config: ClientConfig = client_config(settings)
        self.topic = self.config.topic
        self.sender = KafkaSender(self.config, settings)
        self._handoff: HandOff[KafkaDelivery] = HandOff(settings.handoff_size)
        self._lock = threading.Condition()
        self._session: _Session | None = None
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self.rebalances = 0

    # ---------------------------------------------------------------- producing

    def put_many(self, tasks: Sequence[Task], connection: Any = None) -> int:
        """Send the tasks (latigo.queues.kafka_producer). `connection` is not used: Kafka is not latigo's
        database."""
        return self.sender.put_many(tasks)

    # ---------------------------------------------------------------- consuming

    def get(self, timeout: float) -> KafkaDelivery | None:
        if self._closed.is_set():
            return None
        self._ensure_consumer()
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed.is_set():
            delivery = self._handoff.get(deadline - time.monotonic())
            if delivery is None:
                return None
            with self._lock:
                if delivery.tracker.closed or delivery.owned.revoking:
                    continue  # the partition is being given up: its next owner delivers it
                delivery.owned.out += 1
                delivery._taken = True
            return delivery
        return None

    @property
    def closing(self) -> bool:
        return self._closed.is_set()

    def deliver_later(self, delivery: KafkaDelivery, delay: float) -> None:
        self._handoff.put_later(delivery, delay)

    def write_checkpoint(self, tracker: PartitionTracker, position: Position) -> None:
        """Settled messages allow a commit up to `position` (committed by the consumer thread)."""
        with self._lock:
            session = self._session
            owned = session.owned.get(int(tracker.partition_id)) if session else None
            if owned is not None and owned.tracker is tracker:
                owned.wanted = max(owned.wanted, position.sequence_number + 1)

    def returned(self, delivery: KafkaDelivery) -> None:
        """A worker settled or handed back a delivery it held."""
        with self._lock:
            if delivery._taken:
                delivery._taken = False
                delivery.owned.out -= 1
                self._lock.notify_all()

    def _ensure_consumer(self) -> None:
        with self._lock:
            if self._thread is not None or self._closed.is_set():
                return
            self._thread = threading.Thread(target=self._consume, name="latigo-kafka-consume", daemon=True)
            self._thread.start()

    def _consume(self) -> None:
        """The consumer thread: sessions until the queue closes (a failed client is replaced)."""
        while not self._closed.is_set():
            try:
                ensure_topic(self.config, self.settings)
            except LatigoError as exc:
                log.error("%s; trying again in %.0fs", exc, TOPIC_RETRY)
                self._closed.wait(TOPIC_RETRY)
                continue
            session = _Session()
            try:
                self._run_session(session)
            except Exception as exc:
                log.error("kafka consumer failed: %s; starting a new one", _describe(exc))
                self._closed.wait(1.0)
            finally:
                self._end_session(session)

    def _run_session(self, session: _Session) -> None:
        config = {**self.config.consumer(self.settings), "error_cb": self._on_client_error,
                  "on_commit": self._on_commit}
        session.consumer = Consumer(config)
        with self._lock:
            self._session = session
        self._subscribe(session)
        last_commit = last_lookup = time.monotonic()
        interval = self.settings.commit_interval.total_seconds()
        while not self._closed.is_set():
            for message in self._poll(session):
                self._take(session, message)
            if time.monotonic() - last_commit >= interval:
                last_commit = time.monotonic()
                self._commit(session, asynchronous=True)
                self._read_watermarks(session)
            if not session.owned and time.monotonic() - last_lookup >= TOPIC_LOOKUP:
                last_lookup = time.monotonic()
                self._look_for_partitions(session)

    def _subscribe(self, session: _Session) -> None:
        session.consumer.subscribe([self.topic], on_assign=lambda c, ps: self._on_assign(session, ps),
                                   on_revoke=lambda c, ps: self._on_revoke(session, ps),
                                   on_lost=lambda c, ps: self._on_lost(session, ps))

    def _look_for_partitions(self, session: _Session) -> None:
        """Ask the brokers for the topic's metadata while this consumer owns nothing, to say so when the
        topic is missing. librdkafka's own refresh normally finds it back and starts the rebalance; when
        the group still gives this consumer nothing REJOIN_AFTER after the topic came back, the consumer
        joins again, which makes the group assign once more (seen once: after a broker lost the topic and
        it was created again, one executor was given nothing and the other never heard from the group,
        for minutes)."""
        try:
            partitions = topic_partitions(session.consumer, self.topic, timeout=5.0)
        except LatigoError as exc:
            log.debug("%s", exc)
            return
        if partitions is None:
            session.missing_seen, session.back_since = True, None
            log.warning("kafka topic %s does not exist at %s (any more?): waiting for it", self.topic,
                        self.config.where)
            return
        if not session.missing_seen:
            return  # more consumers than partitions: owning none is this consumer's share
        now = time.monotonic()
        session.back_since = session.back_since or now
        if now - session.back_since >= REJOIN_AFTER:
            log.warning("kafka topic %s is back with %d partitions, none given to this consumer for %.0fs: "
                        "joining the group again", self.topic, len(partitions), now - session.back_since)
            session.missing_seen, session.back_since = False, None
            session.consumer.unsubscribe()
            self._subscribe(session)

    def _poll(self, session: _Session) -> list[Message]:
        """What the client has fetched, up to the room in the hand-off, without waiting; else one message
        waited for (a batch call would wait for a full batch).

        A full hand-off is waited on without polling; one that stays full for PAUSE_AFTER pauses the
        partitions, and polls then only serve the group (callbacks, liveness: the group must not take this
        consumer for dead). They resume once half the hand-off is free: a pause drops what the client has
        fetched, so pausing at every full hand-off would fetch again for every message."""
        consumer, room, now = session.consumer, self._handoff.room(), time.monotonic()
        if room == 0:
            session.full_since = session.full_since or now
            if session.paused is not True and (session.paused is None or now - session.full_since >= PAUSE_AFTER):
                self._set_paused(session, True)
            if not session.paused:
                self._handoff.wait_for_room(POLL_WAIT)
                return []
        else:
            session.full_since = None
            if session.paused is None or (session.paused and room >= self._handoff.capacity / 2):
                self._set_paused(session, False)
        if session.paused:
            message = consumer.poll(POLL_WAIT)
            return [message] if message is not None else []
        messages = consumer.consume(min(room, self.settings.poll_batch), 0)
        if messages:
            return messages
        message = consumer.poll(POLL_WAIT)
        return [message] if message is not None else []

    def _set_paused(self, session: _Session, paused: bool) -> None:
        assignment = session.consumer.assignment()
        if assignment:
            (session.consumer.pause if paused else session.consumer.resume)(assignment)
        session.paused = paused

    def _take(self, session: _Session, message: Message) -> None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka topic %s: %s", self.topic, error.str())
            return
        owned = session.owned.get(int(message.partition() or 0))
        if owned is None or owned.revoking:
            return
        offset = int(message.offset() or 0)
        seen = owned.tracker.highest_received
        if seen is not None and offset <= seen:  # never in a partition's normal flow: the partition was reset
            owned = self._restart_partition(session, owned, offset)
        if not owned.tracker.track(offset, str(offset)):
            return
        delivery = KafkaDelivery(self, owned, message)
        if delivery.task is None:
            log.warning("undecodable message on partition %s (offset %s): %s", delivery.partition_id, delivery.offset,
                        delivery.error)
        self._handoff.extend([delivery])

    def _restart_partition(self, session: _Session, owned: _Owned, offset: int) -> _Owned:
        """The partition's offsets went back without a rebalance: the topic was deleted and created again (a
        broker that lost its storage), and the client started over from its beginning. What was tracked
        belongs to the old partition: dropped, its late acks commit nothing."""
        log.warning("kafka topic %s: partition %s went back from offset %s to %d (the topic was re-created?); "
                    "starting it over", self.topic, owned.tracker.partition_id, owned.tracker.highest_received, offset)
        fresh = _Owned(PartitionTracker(owned.tracker.partition_id))
        with self._lock:
            owned.revoking = True
            owned.tracker.close()
            session.owned[int(owned.tracker.partition_id)] = fresh
        self._handoff.discard(owned.tracker)
        return fresh

    # The client's callbacks (run on the consumer thread, inside poll): each catches everything, since an
    # exception escaping a callback would end the poll loop.

    def _on_assign(self, session: _Session, partitions: list[TopicPartition]) -> None:
        try:
            committed = self._committed(session.consumer, partitions)
            with self._lock:
                for tp in partitions:
                    session.owned[tp.partition] = _Owned(PartitionTracker(str(tp.partition)),
                                                         committed=committed.get(tp.partition, -1))
                session.paused = None
                if partitions:
                    session.missing_seen, session.back_since = False, None
                self.rebalances += 1
            log.info("kafka topic %s: assigned partitions %s", self.topic, sorted(tp.partition for tp in partitions))
        except Exception:
            log.exception("taking the assigned partitions failed")

    def _on_revoke(self, session: _Session, partitions: list[TopicPartition]) -> None:
        """Finish or release the partitions' work, commit, then let them go."""
        try:
            pids = sorted(tp.partition for tp in partitions)
            gone = self._stop_handing_out(session, pids)
            dropped = sum(self._handoff.discard(owned.tracker) for owned in gone)
            unfinished = self._wait_for_workers(gone)
            self._commit(session, asynchronous=False, only=pids)
            self._forget(session, gone)
            log.info("kafka topic %s: gave up partitions %s (%d queued messages left to the next owner%s)", self.topic,
                     pids, dropped, f", {unfinished} still running: they will be replayed" if unfinished else "")
        except Exception:
            log.exception("giving up the revoked partitions failed")

    def _on_lost(self, session: _Session, partitions: list[TopicPartition]) -> None:
        """Partitions taken away without a revoke (this consumer was too late): nothing may be committed."""
        try:
            pids = sorted(tp.partition for tp in partitions)
            gone = self._stop_handing_out(session, pids)
            for owned in gone:
                self._handoff.discard(owned.tracker)
            self._forget(session, gone)
            log.warning("kafka topic %s: lost partitions %s; their unsettled messages are replayed by the next "
                        "owner", self.topic, pids)
        except Exception:
            log.exception("dropping the lost partitions failed")

    def _stop_handing_out(self, session: _Session, pids: list[int]) -> list[_Owned]:
        with self._lock:
            gone = [session.owned[pid] for pid in pids if pid in session.owned]
            for owned in gone:
                owned.revoking = True
            return gone

    def _wait_for_workers(self, gone: list[_Owned]) -> int:
        deadline = time.monotonic() + self.settings.revoke_timeout.total_seconds()
        with self._lock:
            while any(owned.out for owned in gone):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(min(remaining, 0.5))
            return sum(owned.out for owned in gone)

    def _forget(self, session: _Session, gone: list[_Owned]) -> None:
        with self._lock:
            for owned in gone:
                owned.tracker.close()
                if session.owned.get(int(owned.tracker.partition_id)) is owned:
                    del session.owned[int(owned.tracker.partition_id)]

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            log.warning("kafka topic %s: a commit failed (%s); the next one covers it", self.topic, error.str())

    def _on_client_error(self, error: KafkaError) -> None:
        (log.error if error.fatal() else log.debug)("kafka client: %s", error.str())  # librdkafka logs the rest

    # ---------------------------------------------------------------- commits and lag

    def _commit(self, session: _Session, asynchronous: bool, only: list[int] | None = None) -> None:
        with self._lock:
            due = {pid: owned for pid, owned in session.owned.items()
                   if owned.wanted > owned.committed and (only is None or pid in only)}
            offsets = [TopicPartition(self.topic, pid, owned.wanted) for pid, owned in due.items()]
        if not offsets:
            return
        try:
            session.consumer.commit(offsets=offsets, asynchronous=asynchronous)
        except Exception as exc:
            log.warning("kafka topic %s: committing %s failed: %s", self.topic,
                        {tp.partition: tp.offset for tp in offsets}, _describe(exc))
            return
        with self._lock:
            for tp in offsets:
                due[tp.partition].committed = max(due[tp.partition].committed, tp.offset)

    def _committed(self, consumer: Any, partitions: list[TopicPartition]) -> dict[int, int]:
        try:
            found = consumer.committed([TopicPartition(self.topic, tp.partition) for tp in partitions], timeout=10)
        except Exception as exc:
            log.warning("kafka topic %s: reading the committed offsets failed: %s", self.topic, _describe(exc))
            return {}
        return {tp.partition: tp.offset for tp in found if tp.offset >= 0}

    def _read_watermarks(self, session: _Session) -> None:
        """The brokers' high watermarks of the owned partitions, as of the last fetch (no request)."""
        with self._lock:
            pids = list(session.owned)
        marks = {}
        for pid in pids:
            try:
                _, high = session.consumer.get_watermark_offsets(TopicPartition(self.topic, pid), cached=True)
            except Exception:
                continue
            if high is not None and high >= 0:
                marks[pid] = high
        with self._lock:
            for pid, high in marks.items():
                if pid in session.owned:
                    session.owned[pid].high_watermark = high

    def gauges(self) -> QueueGauges:
        with self._lock:
            owned = dict(self._session.owned) if self._session else {}
        return QueueGauges(
            waiting=len(self._handoff), in_queue=len(self._handoff) + self._handoff.delayed,
            lag_by_partition={str(pid): o.tracker.lag() for pid, o in sorted(owned.items())},
            consumer_lag_by_partition={str(pid): max(0, o.high_watermark - max(o.committed, 0))
                                       for pid, o in sorted(owned.items()) if o.high_watermark is not None},
        )

    def owned_partitions(self) -> list[int]:
        with self._lock:
            return sorted(self._session.owned) if self._session else []

    def committed_offsets(self) -> dict[int, int]:
        """The group's committed offsets of the topic's partitions, asked of the brokers (-1: none yet)."""
        return {pid: committed for pid, (committed, _, _) in self._group_view().items()}

    def group_lag(self) -> dict[str, int]:
        """Per partition: messages past the group's committed offset (high watermark − committed; from the
        start of the partition where nothing is committed yet), asked of the brokers (`latigo status`)."""
        return {str(pid): max(0, high - (committed if committed >= 0 else low))
                for pid, (committed, low, high) in self._group_view().items()}

    def _group_view(self) -> dict[int, tuple[int, int, int]]:
        """Per partition (committed offset or -1, low watermark, high watermark), from a client that reads
        the group's offsets without joining it."""
        consumer = Consumer({**self.config.consumer(self.settings), "error_cb": self._on_client_error})
        try:
            partitions = topic_partitions(consumer, self.topic)
            if partitions is None:
                raise TopicMissing(f"kafka topic {self.topic!r} does not exist at {self.config.where}")
            found = consumer.committed([TopicPartition(self.topic, pid) for pid in partitions], timeout=10)
            view = {}
            for tp in found:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
                view[tp.partition] = (tp.offset if tp.offset != OFFSET_INVALID else -1, low, high)
            return view
        finally:
            consumer.close()

    def probe(self) -> str:
        partitions = ensure_topic(self.config, self.settings)
        return (f"kafka topic {self.topic} at {self.config.where}: {len(partitions)} partitions "
                f"({', '.join(map(str, partitions))}); consumer group {self.settings.group_id}")

    # ---------------------------------------------------------------- closing

    def _end_session(self, session: _Session) -> None:
        """Leave the group (the revoke callback commits what is settled), then drop what is left."""
        consumer = session.consumer
        if consumer is not None:
            try:
                consumer.close()
            except Exception as exc:
                log.warning("closing the kafka consumer: %s", _describe(exc))
        with self._lock:
            leftovers = list(session.owned.values())
            session.owned.clear()
            if self._session is session:
                self._session = None
        for owned in leftovers:
            owned.tracker.close()
            self._handoff.discard(owned.tracker)

    def close(self) -> None:
        """Stop consuming: settled offsets are committed and the partitions handed to the group."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._handoff.wake()
        with self._lock:
            self._lock.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(self.settings.revoke_timeout.total_seconds() + 30)
            if thread.is_alive():
                log.warning("the kafka consumer thread did not stop in time; abandoning it")
        self.sender.close()
