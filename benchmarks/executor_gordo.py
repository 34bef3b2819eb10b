"""Executor throughput against Gordo's protocol: one executor (N worker threads) → GordoModels → the
replay Gordo server (tests/support/gordo_server.py, in its own process) answering every request after
50 ms, predictions stored in PostgreSQL. (benchmarks/gordo.py measures against a real Gordo server.)

A real Gordo 6 worker took ~50 ms for a 4-tag request, so the ideal is concurrency / 50 ms tasks/s;
the gap is latigo's own cost (sensor frame, request encoding, answer parsing, storage, ledger) plus the
test server's. Also printed: HTTP requests per task (metadata and revision look-ups amortised).

    python benchmarks/executor_gordo.py [--tasks 400] [--latency 0.05] [--models 20]
"""

import argparse
import logging
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _support import database

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.models.gordo import GordoSettings
from latigo.models.gordo_projects import GordoProjects
from latigo.queues.database import DatabaseTaskQueue
from latigo.settings import ExecutorSettings
from latigo.types import Task, TimeRange
from tests.support.gordo_server import RampSensors

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)
OUTPUTS = ["model-output", "total-anomaly-scaled", "tag-anomaly-scaled", "anomaly-confidence",
           "total-anomaly-confidence"]


def start_server(models: int, latency: float, offset: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.gordo_server", "--models", str(models), "--latency", str(latency),
         "--offset", str(offset)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    url = process.stdout.readline().strip()
    if not url.startswith("http"):
        process.kill()
        raise RuntimeError("the Gordo test server did not start")
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, concurrency: int, tasks: int, models: int, batch_size: int) -> tuple[float, float, float]:
    """(tasks/s, HTTP requests per task, latigo CPU ms per task) for one executor draining `tasks` tasks."""
    with database("postgresql") as engine:
        # The provider the factory builds for `type: gordo` (the executor hands it ModelRefs).
        gordo = GordoProjects(GordoSettings(base_url=url, project="demo", batch_size=batch_size,
                                            pool_size=max(concurrency, 2)), sensors=RampSensors())
        names = [f"model-{i:03d}" for i in range(models)]
        lifecycle = TaskLifecycle(engine)
        queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(poll_interval=timedelta(seconds=0.05)),
                                  lifecycle=lifecycle)
        windows = [TimeRange(T0 + i * timedelta(minutes=30), T0 + (i + 1) * timedelta(minutes=30))
                   for i in range(-(-tasks // models))]
        with lifecycle.transaction() as connection:
            batch = [Task(name, window, project="demo") for window in windows for name in names][:tasks]
            queue.put_many(lifecycle.enqueue(connection, batch).to_send, connection)
        settings = ExecutorSettings(concurrency=concurrency, poll_timeout=timedelta(seconds=0.2))
        executor = Executor(settings, queue, gordo, lifecycle, OUTPUTS)
        started, cpu = time.perf_counter(), time.process_time()
        stats = executor.run(exit_when_idle=0.3)
        elapsed = time.perf_counter() - started - 0.3  # the idle wait is not work
        cpu = time.process_time() - cpu
        assert stats.done == tasks, stats
        requests = gordo.client("demo").http.requests_sent
        gordo.close()
        return tasks / elapsed, requests / tasks, cpu / tasks * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--models", type=int, default=20)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    print(f"one executor, Gordo latency {args.latency * 1000:.0f} ms per request, {args.models} models, "
          f"30-minute windows at 10-minute resolution, PostgreSQL, {os.cpu_count()} CPUs")
    for offset, batch_size, label in ((0, 1000, "offset 0, one request per task"),
                                      (2, 3, "offset 2, batch_size 3 (three requests per task)")):
        server, url = start_server(args.models, args.latency, offset)
        try:
            print(f" {label}:")
            for concurrency in (1, 8, 32):
                count = args.tasks if concurrency > 1 else max(args.tasks // 10, 30)
                server_cpu = cpu_seconds(server.pid)
                rate, per_task, cpu_ms = measure(url, concurrency, count, args.models, batch_size)
                server_ms = (cpu_seconds(server.pid) - server_cpu) / (count * per_task) * 1000
                ideal = concurrency / (args.latency * per_task)
                print(f"  concurrency {concurrency:>2}: {rate:7.1f} tasks/s  {per_task:5.2f} requests/task  "
                      f"(ideal {ideal:6.1f}, {rate / ideal:5.1%})  CPU: latigo {cpu_ms:4.1f} ms/task, "
                      f"test server {server_ms:4.1f} ms/request")
        finally:
            server.stdin.close()
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
