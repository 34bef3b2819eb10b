"""The Event Hub task queue against the local test broker (real AMQP 1.0, the unmodified SDK): tasks/s
published with put_many (batched per model) and consumed with get + ack (checkpointing as it goes) by one
consumer, with the checkpoint store in SQLite or PostgreSQL.

    python benchmarks/eventhub.py [--tasks 20000] [--models 50] [--partitions 4] [--db sqlite|postgresql]
"""

import argparse
import logging
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _support import database

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from latigo.queues.eventhub import EventHubSettings, EventHubTaskQueue  # noqa: E402
from latigo.types import Task, TimeRange  # noqa: E402
from tests.support.eventhub_broker import EventHubBroker  # noqa: E402

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_tasks(count: int, models: int) -> list[Task]:
    step = timedelta(minutes=10)
    return [Task(f"model-{i % models:04d}", TimeRange(T0 + (i // models) * step, T0 + (i // models + 1) * step))
            for i in range(count)]


def consume(queue: EventHubTaskQueue, count: int, limit: float) -> tuple[int, float, float]:
    """(taken, seconds to the first delivery, rate after it) for get + ack of `count` tasks."""
    started = time.perf_counter()
    first = None
    taken = 0
    while taken < count and time.perf_counter() - started < limit:
        delivery = queue.get(1.0)
        if delivery is None:
            continue
        if first is None:
            first = time.perf_counter()
        delivery.ack()
        taken += 1
    end = time.perf_counter()
    first = first or end
    return taken, first - started, (taken - 1) / max(end - first, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    tasks = make_tasks(args.tasks, args.models)
    with EventHubBroker(hub="bench", partitions=args.partitions) as broker, database(args.db) as engine:
        settings = EventHubSettings(connection_string=broker.connection_string(),
                                    load_balancing_interval=timedelta(seconds=1))
        producer = EventHubTaskQueue(settings, engine)
        started = time.perf_counter()
        sent = producer.put_many(tasks)
        publish_seconds = time.perf_counter() - started
        producer.close()
        assert sum(broker.event_counts().values()) == sent == len(tasks)
        print(f"published {sent} tasks ({args.models} models, {args.partitions} partitions) in "
              f"{publish_seconds:.2f} s: {sent / publish_seconds:,.0f} tasks/s")

        for prefetch, handoff in ((20, 16), (300, 64)):
            engine_queue = EventHubTaskQueue(
                EventHubSettings(connection_string=broker.connection_string(), consumer_group=f"bench-{prefetch}",
                                 load_balancing_interval=timedelta(seconds=1), prefetch=prefetch,
                                 handoff_size=handoff), engine)
            taken, startup, rate = consume(engine_queue, len(tasks), limit=45.0)
            lag = engine_queue.checkpoint_lag()
            engine_queue.close()
            print(f"consumed {taken} tasks with get + ack (prefetch {prefetch}, hand-off {handoff}, checkpoints in "
                  f"{args.db}): {rate:,.0f} tasks/s after {startup:.1f} s to claim partitions and receive the first;"
                  f" checkpoint lag at the end {sum(lag.values())}")


if __name__ == "__main__":
    main()
