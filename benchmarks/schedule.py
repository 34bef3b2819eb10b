"""Scheduling at IOC scale: 9,000 models in 30 Gordo projects, one cycle every 30 minutes.

1. Enqueue rate: one cycle over every model (task + ledger row + schedule state per model), database queue,
   on SQLite and PostgreSQL, with an in-process model provider (no HTTP).
2. What a cycle asks Gordo: the `gordo` provider over 30 projects (the fixture-replay Gordo server, one per
   project, behind one path-routing ingress), requests counted per kind on the servers, for a cold first
   cycle, a steady cycle (nothing rebuilt) and a cycle after one project was rebuilt (a new revision).

    python benchmarks/schedule.py [--models 9000] [--projects 30]
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone

from _support import BenchModels, database

from latigo.interfaces import ModelInformationProvider
from latigo.lifecycle import TaskLifecycle
from latigo.models.gordo_projects import GordoProjects
from latigo.models.gordo_settings import GordoSettings
from latigo.queues.database import DatabaseTaskQueue
from latigo.scheduler import Scheduler
from latigo.settings import SchedulerSettings
from tests.support.gordo_ingress import IngressProxy
from tests.support.gordo_server import GordoServer, ModelSpec

NOW = datetime(2026, 3, 1, 8, 1, tzinfo=timezone.utc)
INTERVAL = timedelta(minutes=30)


def scheduler_for(engine, models: ModelInformationProvider) -> Scheduler:
    return Scheduler(SchedulerSettings(interval=INTERVAL), models, DatabaseTaskQueue(engine), TaskLifecycle(engine))


def enqueue_rate(kind: str, models: int, projects: int) -> float:
    with database(kind) as engine:
        scheduler = scheduler_for(engine, BenchModels(models, projects=projects))
        started = time.perf_counter()
        count = scheduler.run_cycle(NOW)
        elapsed = time.perf_counter() - started
        assert count == models, count
        return count / elapsed


@contextmanager
def gordo_projects(models: int, projects: int) -> Iterator[tuple[str, list[GordoServer]]]:
    """`projects` fixture-replay Gordo servers with `models` models between them, behind one ingress."""
    per_project = models // projects
    with ExitStack() as stack:
        proxy = stack.enter_context(IngressProxy())
        servers = []
        for p in range(projects):
            name = f"project-{p:02d}"
            server = GordoServer(project=name, models=[ModelSpec(f"model-{m:04d}") for m in range(per_project)])
            stack.enter_context(server)
            proxy.set_upstream(name, server.url)
            servers.append(server)
        yield proxy.base_url, servers


def requests_by_kind(servers: list[GordoServer]) -> Counter:
    kinds: Counter = Counter()
    for server in servers:
        for request in server.recorded():
            last = request.path.rstrip("/").rsplit("/", 1)[-1]
            kinds[last if last in ("revisions", "models", "metadata") else "other"] += 1
        server.clear()
    return kinds


def gordo_cycles(models: int, projects: int) -> list[tuple[str, float, int, Counter]]:
    results = []
    with gordo_projects(models, projects) as (base_url, servers), database("postgresql") as engine:
        provider = GordoProjects(GordoSettings(base_url=base_url, projects=[s.project for s in servers]))
        scheduler = scheduler_for(engine, provider)
        for label, now, rebuild in (("cold (first cycle)", NOW, False),
                                    ("steady (nothing rebuilt)", NOW + INTERVAL, False),
                                    ("one project rebuilt", NOW + 2 * INTERVAL, True)):
            if rebuild:
                servers[0].publish_revision("2")
            started = time.perf_counter()
            count = scheduler.run_cycle(now)
            results.append((label, time.perf_counter() - started, count, requests_by_kind(servers)))
        provider.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=9_000)
    parser.add_argument("--projects", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"one schedule cycle of {args.models:,} models in {args.projects} projects")
    print("enqueue (in-process models; task + ledger row + schedule state per model):")
    for kind in ("sqlite", "postgresql"):
        one, many = enqueue_rate(kind, args.models, 1), enqueue_rate(kind, args.models, args.projects)
        print(f"  {kind:<10} 1 project {one:>8,.0f} tasks/s; {args.projects} projects {many:>8,.0f} tasks/s "
              f"({many / one:.2f}x)")
    print(f"the gordo provider over {args.projects} projects behind one ingress (PostgreSQL, database queue):")
    for label, seconds, count, kinds in gordo_cycles(args.models, args.projects):
        asked = ", ".join(f"{kinds[k]:,} {k}" for k in ("revisions", "models", "metadata", "other"))
        print(f"  {label:<26} {count:>6,} tasks in {seconds:6.2f} s ({count / seconds:>7,.0f} tasks/s); "
              f"Gordo requests: {sum(kinds.values()):,} ({asked})")


if __name__ == "__main__":
    main()
