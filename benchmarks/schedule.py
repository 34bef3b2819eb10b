"""Scheduling throughput: one cycle over 10,000 models, tasks enqueued per second (database queue).

    python benchmarks/schedule.py [--models 10000]
"""

import argparse
import time
from datetime import datetime, timedelta, timezone

from _support import BenchModels, database

from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.scheduler import Scheduler
from latigo.settings import SchedulerSettings


def measure(kind: str, models: int) -> float:
    with database(kind) as engine:
        scheduler = Scheduler(SchedulerSettings(interval=timedelta(minutes=30)), BenchModels(models),
                              DatabaseTaskQueue(engine), TaskLifecycle(engine))
        started = time.perf_counter()
        count = scheduler.run_cycle(datetime(2026, 3, 1, 8, 1, tzinfo=timezone.utc))
        elapsed = time.perf_counter() - started
        assert count == models
        return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=10_000)
    args = parser.parse_args()
    print(f"scheduling one cycle of {args.models} models (task + ledger row + schedule state per model)")
    for kind in ("sqlite", "postgresql"):
        print(f"  {kind:<10} {measure(kind, args.models):>10,.0f} tasks/s  (target >= 5,000)")


if __name__ == "__main__":
    main()
