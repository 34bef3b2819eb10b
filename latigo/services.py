"""Wiring the configured parts into the long-running services (and their signals)."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from latigo.errors import ConfigError
from latigo.executor import Executor
from latigo.factory import Components
from latigo.observability import (
    DATABASE_READY,
    LAST_SCHEDULE_TIME,
    TASKS_SCHEDULED,
    Health,
    MetricsServer,
    database_ready_check,
    scheduler_metrics,
    start_http_server,
)
from latigo.peer_status import PeerStatusWriter
from latigo.peers import PEERS
from latigo.scheduler import Chore, Scheduler, retention_chore
from latigo.settings import Config
from latigo.storage import task_hours
from latigo.storage.schema import ensure_schema_current

log = logging.getLogger(__name__)


def on_stop_signals(callback) -> None:
    """SIGTERM (supervisord, Kubernetes) and SIGINT (Ctrl-C) both mean: stop gracefully."""

    def handler(signum: int, _frame) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        callback()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def record_cycle(count: int) -> None:
    TASKS_SCHEDULED.inc(count)
    LAST_SCHEDULE_TIME.set(time.time())
    DATABASE_READY.set(1)


def build_scheduler(components: Components, chores: bool = False) -> Scheduler:
    config = components.config
    return Scheduler(config.scheduler, components.model_information, components.task_queue, components.lifecycle,
                     on_cycle=record_cycle, chores=build_chores(components) if chores else (),
                     partitions_ahead=config.predictions.partitions_ahead)


def build_chores(components: Components) -> list[Chore]:
    """Retention, the settled hours' counts (the overview's chart), planner statistics on PostgreSQL, and
    anomaly alerts when a webhook is configured."""
    config = components.config
    chores = [retention_chore(components.prediction_store, config.retention),
              Chore("counting settled hours", task_hours.SETTLED_AFTER, lambda: task_hours.keep_settled_hours(
                  components.engine))]
    if components.engine.dialect.name == "postgresql":
        from latigo.storage.statistics import StatisticsKeeper

        chores.append(Chore("keeping planner statistics", config.database.statistics_interval,
                            StatisticsKeeper(components.engine)))
    if config.alerts.webhook_url:
        from latigo.alerts import AnomalyAlerts

        alerts = AnomalyAlerts(config.alerts, components.engine)
        chores.append(Chore("anomaly alerts", config.alerts.check_interval,
                            lambda: f"{posted} events posted" if (posted := alerts.check()) else ""))
    return chores


def serve_health(components: Components, loop: str, max_silence: float,
                 extra_check: Callable[[], list[str]] | None = None) -> tuple[Health, MetricsServer | None]:
    """/healthz, /readyz and /metrics for this process; the loop's beats keep /healthz green."""
    health = Health()
    health.beat(loop)
    database = database_ready_check(components.engine)
    health.set_ready_check(database if extra_check is None else lambda: [*database(), *extra_check()])
    return health, start_http_server(components.config.metrics, health, max_silence)


def run_scheduler(config: Config, once: bool = False) -> int:
    components = Components(config)
    ensure_schema_current(components.engine)
    scheduler = build_scheduler(components, chores=True)
    scheduler_metrics(config.scheduler.interval.total_seconds())
    if once:
        scheduler.run_cycle()
        return 0
    stop = threading.Event()
    on_stop_signals(stop.set)
    # The loop wakes at least every check_interval; a cycle over many models may take a while longer.
    health, server = serve_health(components, "scheduler", config.scheduler.check_interval.total_seconds() * 3 + 300)
    log.info("scheduler running: every %s from %s, delay %s", config.scheduler.interval,
             config.scheduler.start_time, config.scheduler.delay)
    scheduler.run(stop, on_tick=lambda: health.beat("scheduler"))
    components.task_queue.close()
    if server:
        server.close()
    return 0


def run_backfill(config: Config, start: datetime, end: datetime, models: Sequence[str] | None,
                 progress: bool = True, rerun: bool = False, dry_run: bool = False, confirmed: bool = False,
                 projects: Sequence[str] | None = None) -> int:
    """Enqueue every window of [start, end) — after saying how many, and asking for --yes above
    scheduler.backfill_confirm_above."""
    from tqdm import tqdm

    components = Components(config)
    ensure_schema_current(components.engine)
    scheduler = build_scheduler(components)
    names = scheduler.backfill_models(models, projects)
    if not names:
        print("nothing to backfill: the model provider lists no models")
        return 0
    tasks = scheduler.backfill_tasks(start, end, names)
    if not tasks:
        print(f"nothing to backfill: no whole window of the schedule lies in [{start.isoformat()}, {end.isoformat()})")
        return 0
    first, last = tasks[0].window.start.isoformat(), tasks[-1].window.end.isoformat()
    in_projects = len({ref.project for ref in names})
    summary = (f"{len(tasks):,} tasks: {len(names)} models" + (f" in {in_projects} projects" if in_projects > 1 else "")
               + f" x {len(tasks) // len(names):,} windows from {first} to {last}")
    if dry_run:
        print(f"would enqueue {summary}" + (" (windows already done are skipped; --rerun computes them again)"
                                             if not rerun else ""))
        return 0
    limit = config.scheduler.backfill_confirm_above
    if len(tasks) > limit and not confirmed:
        raise ConfigError(f"backfill would enqueue {summary}; that is more than scheduler.backfill_confirm_above "
                          f"({limit:,}): add --yes to go ahead (`latigo tasks cancel --from ... --to ...` undoes it)")
    from latigo.logs import logs_above_bars

    with logs_above_bars(), tqdm(total=len(tasks), unit="task", desc="backfill", disable=not progress,
                                 mininterval=0.5) as bar:
        count = scheduler.enqueue_backfill(tasks, rerun=rerun, progress=bar.update)
    what = "to run again" if rerun else "new"
    print(f"enqueued {count:,} tasks ({what}) of {summary}")
    from latigo.storage.statistics import refresh_statistics

    refresh_statistics(components.engine, parent_due=False)  # a large backfill: the ledger's statistics now
    components.task_queue.close()
    return 0


def build_executor(components: Components) -> Executor:
    config = components.config
    return Executor(config.executor, components.task_queue, components.model_execution, components.lifecycle,
                    config.predictions.outputs, components.prediction_sinks)


def executor_problems(executor: Executor) -> list[str]:
    """What /readyz says besides the database: database faults, and every peer whose breaker is open."""
    problems = [] if executor.ready else ["database faults: tasks are being released until it answers again"]
    problems += [f"peer {state.peer} down since {state.down_since.isoformat(timespec='seconds')}: {state.reason}"
                 for state in PEERS.down() if state.down_since is not None]
    return problems


def run_executor(config: Config, exit_when_idle: float | None = None) -> int:
    components = Components(config)
    ensure_schema_current(components.engine)
    PEERS.configure(config.executor.peer_failures, 1.0, config.executor.peer_probe_max_delay.total_seconds())
    executor = build_executor(components)
    peer_status = PeerStatusWriter(components.engine, executor.name, PEERS)
    on_stop_signals(executor.stop)
    health, server = serve_health(components, "executor", 60.0, extra_check=lambda: executor_problems(executor))

    def tick() -> None:
        health.beat("executor")
        peer_status.refresh()

    stats = executor.run(exit_when_idle=exit_when_idle, on_tick=tick)
    peer_status.clear()
    log.info("executor stopped: %s", stats)
    if server:
        server.close()
    return 0
