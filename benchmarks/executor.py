"""Executor throughput: one executor process (N worker threads) against a model that takes 50 ms.

The ideal is concurrency / 50 ms: every model slot always busy. latigo's own work (claim + start, then
predictions + done + ack: two transactions per task on the database queue) is done by the executor's
default spare workers while the slots run; the gap is what they cannot hide. The timed cycle is a model's second, as in
steady state (series exist, the process is warm). CPU per task is the executor process's CPU time over
the timed cycle: at high concurrency it, not waiting, bounds the rate (the GIL, and the cores the
database server needs too).

    python benchmarks/executor.py [--tasks 600] [--latency 0.05]
"""

import argparse
import logging
import os
import threading
import time
from datetime import datetime, timedelta, timezone

from _support import BenchModels, database

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.settings import ExecutorSettings
from latigo.types import ModelRef, Task, TimeRange

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
WINDOW = timedelta(minutes=30)


def measure(kind: str, concurrency: int, tasks: int, latency: float) -> tuple[float, float]:
    """Tasks per second and latigo's CPU milliseconds per task for the second cycle of `tasks` models.

    The first cycle (not timed) warms the process up and creates each model's series, as every cycle
    after a model's first finds them; the timed one runs from its enqueue's commit to its last task's."""
    with database(kind) as engine:
        models = BenchModels(tasks, latency=latency)
        lifecycle = TaskLifecycle(engine)
        queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                                  lifecycle=lifecycle)
        settings = ExecutorSettings(concurrency=concurrency, poll_timeout=timedelta(seconds=0.2))
        executor = Executor(settings, queue, models, lifecycle, ["model-output"])
        runner = threading.Thread(target=executor.run)
        runner.start()
        enqueue(lifecycle, queue, models.refs, T0)
        wait_until_done(executor, tasks)
        enqueue(lifecycle, queue, models.refs, T0 + WINDOW)  # the scheduler's work, not timed
        started, cpu = time.perf_counter(), time.process_time()
        wait_until_done(executor, 2 * tasks)
        elapsed = time.perf_counter() - started  # until the last task is committed; shutting down is not work
        cpu = time.process_time() - cpu
        executor.stop()
        runner.join()
        assert executor.stats.done == 2 * tasks, executor.stats
        return tasks / elapsed, cpu / tasks * 1000


def enqueue(lifecycle: TaskLifecycle, queue: DatabaseTaskQueue, refs: list[ModelRef], start: datetime) -> None:
    window = TimeRange(start, start + WINDOW)
    with lifecycle.transaction() as connection:
        tasks = [Task(ref.name, window, ref.project) for ref in refs]
        queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)


def wait_until_done(executor: Executor, done: int) -> None:
    while executor.stats.done < done:
        time.sleep(0.005)  # coarse enough not to compete with the workers for the GIL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    print(f"one executor, model latency {args.latency * 1000:.0f} ms, {args.tasks} tasks per run, "
          f"{os.cpu_count()} CPUs shared with the database server")
    for kind in ("postgresql", "sqlite"):
        for concurrency in (1, 8, 32):
            count = args.tasks if concurrency > 1 else max(args.tasks // 4, 100)
            rate, cpu_ms = measure(kind, concurrency, count, args.latency)
            ideal = concurrency / args.latency
            print(f"  {kind:<10} concurrency {concurrency:>2}: {rate:7.1f} tasks/s  "
                  f"(ideal {ideal:5.0f}, {rate / ideal:5.1%} of ideal)  latigo CPU {cpu_ms:4.1f} ms/task")


if __name__ == "__main__":
    main()
