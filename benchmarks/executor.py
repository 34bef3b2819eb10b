"""Executor throughput: one executor process (N worker threads) against a model that takes 50 ms.

The ideal is concurrency / 50 ms; latigo's own overhead (claim + start, then predictions + done + ack:
two transactions per task on the database queue) is the gap.

    python benchmarks/executor.py [--tasks 600] [--latency 0.05]
"""

import argparse
import logging
import threading
import time
from datetime import datetime, timedelta, timezone

from _support import BenchModels, database

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.settings import ExecutorSettings
from latigo.types import Task, TimeRange

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def measure(kind: str, concurrency: int, tasks: int, latency: float) -> float:
    with database(kind) as engine:
        models = BenchModels(tasks, latency=latency)
        lifecycle = TaskLifecycle(engine)
        queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                                  lifecycle=lifecycle)
        window = TimeRange(T0, T0 + timedelta(minutes=30))
        with lifecycle.transaction() as connection:
            queue.put_many(lifecycle.enqueue(connection, [Task(name, window) for name in models.names]).to_send,
                           connection)
        settings = ExecutorSettings(concurrency=concurrency, poll_timeout=timedelta(seconds=0.2))
        executor = Executor(settings, queue, models, lifecycle, ["model-output"])
        runner = threading.Thread(target=executor.run)
        started = time.perf_counter()
        runner.start()
        while executor.stats.done < tasks and runner.is_alive():
            time.sleep(0.002)
        elapsed = time.perf_counter() - started  # until the last task is committed; shutting down is not work
        executor.stop()
        runner.join()
        assert executor.stats.done == tasks, executor.stats
        return tasks / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    print(f"one executor, model latency {args.latency * 1000:.0f} ms, {args.tasks} tasks per run")
    for kind in ("postgresql", "sqlite"):
        for concurrency in (1, 8, 32):
            count = args.tasks if concurrency > 1 else max(args.tasks // 4, 100)
            rate = measure(kind, concurrency, count, args.latency)
            ideal = concurrency / args.latency
            print(f"  {kind:<10} concurrency {concurrency:>2}: {rate:7.1f} tasks/s  "
                  f"(ideal {ideal:5.0f}, {rate / ideal:5.1%} of ideal)")


if __name__ == "__main__":
    main()
