"""latigo against gordo-client 6.3.0, side by side, on one REAL Gordo 6.0.4 server.

The same warm `gordo run-server` (models built by Gordo's own builder: pca-model, lstm-model,
row-filter-model; tests/support/gordo_real.py), the same sensor data in one real influxd, the same
30-minute windows (those of the default schedule), every model in every window:

- latigo's executor on its default config (concurrency 8, parquet, consecutive windows of a model that it
  holds at once joined in one request; the queue and the ledger in a fresh PostgreSQL database per round,
  predictions stored there), with `use_parquet: false` (JSON) and with `windows_per_request: 1`.
- gordo-client 6.3.0 as a live client in its own venv (tests/support/gordo_real_scripts/live_client.py):
  one `Client.predict(start, end)` per window for all the models (its default: JSON, 10 threads), and
  with `use_parquet=True`.
- One model-window at a time, like for like: latigo's `GordoModels.execute_model` (parquet, JSON)
  against one gordo-client `predict` per (window, model).

The variants take turns round by round (after one unmeasured warm-up round each), so a slow moment of
the shared machine falls on all of them. Printed per variant: wall time per model-window (median over
the rounds) and the server's CPU per model-window (utime + stime of every process in gunicorn's process
group, from /proc, summed over the rounds), and both as ratios to gordo-client's default.

What bounds the ratios: most of the server's CPU per request is the model's own `anomaly()`, whatever
the number of rows (about 38 of 60 ms for a 3-row pca-model request, profiled in-process), which joined
windows pay once per request; parquet saves the rest of JSON's cost (JSON in, a JSON answer the server
parses and re-encodes once more to add the revision: about 43 against 30 ms per request), and
gordo-client's revision and metadata GETs before each predict cost the server about 2 ms. Concurrent
requests to one gunicorn worker (the executor's 8) cost it more CPU per request than one at a time. How
many windows join depends on how many of a model's windows the executor holds at once: its 8 slots over
the benchmark's 3 models.

    python benchmarks/gordo.py [--windows 12] [--rounds 3] [--window-minutes 30] [--server-workers 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from _support import database

from latigo.executor import Executor
from latigo.lifecycle import TaskLifecycle
from latigo.models.gordo import GordoModels, GordoSettings
from latigo.models.gordo_projects import GordoProjects
from latigo.queues.database import DatabaseTaskQueue
from latigo.sensors.influx import InfluxSensors
from latigo.settings import ExecutorSettings, PredictionSettings
from latigo.types import Task, TimeRange
from tests.support.gordo_real import (
    SCRIPTS,
    TAGS,
    GordoRealServer,
    build_models,
    gordo_client_venv,
    sensor_points,
    venv_env,
    write_sensors,
)
from tests.support.influxd import InfluxServer, start_influxd

D0 = datetime(2026, 3, 2, tzinfo=timezone.utc)
FIRST_WINDOW = D0 + timedelta(hours=2, minutes=25)
"""The default schedule's windows ([hh:25, hh:55), ...), two hours into the data."""
DATABASE, MEASUREMENT = "benchmark", "sensors"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(group: int) -> float:
    """utime + stime of every live process in process group `group` (Linux /proc)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


@dataclass
class Variant:
    """One client: `run_round()` predicts every model-window once and returns its wall seconds."""

    name: str
    run_round: Callable[[], float]
    close: Callable[[], None]
    seconds: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    model_windows: int = 0


def influx_sensors(influxd: InfluxServer) -> InfluxSensors:
    return InfluxSensors(InfluxSensors.Settings(database=DATABASE, host=influxd.host, port=influxd.port,
                                                measurement=MEASUREMENT))


def executor_variant(name: str, server: GordoRealServer, influxd: InfluxServer, windows: list[TimeRange],
                     models: list[str], concurrency: int | None = None, **settings: object) -> Variant:
    """latigo's executor with its default settings (the poll timeout aside: the idle wait at the end of a
    drain is not work, and is taken off), or with `concurrency` model calls at once."""
    provider = GordoProjects(GordoSettings(base_url=server.base_url, project=server.project, **settings),  # type: ignore[arg-type]
                             sensors=influx_sensors(influxd))
    outputs = PredictionSettings().outputs
    idle = 0.3

    def run_round() -> float:
        with database("postgresql") as engine:
            lifecycle = TaskLifecycle(engine)
            queue = DatabaseTaskQueue(engine, DatabaseTaskQueue.Settings(), lifecycle=lifecycle)
            tasks = [Task(model, window, project=server.project) for window in windows for model in models]
            with lifecycle.transaction() as connection:
                queue.put_many(lifecycle.enqueue(connection, tasks).to_send, connection)
            executor_settings = ExecutorSettings(poll_timeout=timedelta(seconds=0.1))
            if concurrency is not None:
                executor_settings.concurrency = concurrency
            executor = Executor(executor_settings, queue, provider, lifecycle, outputs)
            started = time.perf_counter()
            stats = executor.run(exit_when_idle=idle)
            seconds = time.perf_counter() - started - idle
            if stats.done != len(tasks):
                raise RuntimeError(f"{name}: {stats}")
        return seconds

    return Variant(name, run_round, provider.close)


def latigo_variant(name: str, server: GordoRealServer, influxd: InfluxServer, windows: list[TimeRange],
                   models: list[str], **settings: object) -> Variant:
    """`GordoModels.execute_model` for one model-window after the other."""
    provider = GordoModels(GordoSettings(base_url=server.base_url, project=server.project, **settings),  # type: ignore[arg-type]
                           sensors=influx_sensors(influxd))

    def run_round() -> float:
        started = time.perf_counter()
        for window in windows:
            for model in models:
                frame = provider.execute_model(model, window.start, window.end)
                if not frame.rows:
                    raise RuntimeError(f"{name}: no rows for {model} {window}: {frame.note}")
        return time.perf_counter() - started

    return Variant(name, run_round, provider.close)


def gordo_client_variant(name: str, server: GordoRealServer, influxd: InfluxServer, windows: list[TimeRange],
                         models: list[str], directory: Path, use_parquet: bool, per_model: bool) -> Variant:
    request = {"project": server.project, "host": server.host, "port": server.port, "influx_host": influxd.host,
               "influx_port": influxd.port, "database": DATABASE, "measurement": MEASUREMENT, "models": models,
               "windows": [[w.start.isoformat(), w.end.isoformat()] for w in windows], "use_parquet": use_parquet,
               "per_model": per_model}
    path = directory / f"{len(list(directory.iterdir()))}.json"
    path.write_text(json.dumps(request))
    venv = gordo_client_venv()
    process = subprocess.Popen([str(venv / "bin" / "python"), str(SCRIPTS / "live_client.py"), str(path)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=venv_env(venv),
                               cwd=directory)
    assert process.stdin is not None and process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        process.kill()
        raise RuntimeError(f"{name}: the gordo-client script did not start (exit {process.wait()})")

    def run_round() -> float:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("go\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: the gordo-client script ended (exit {process.wait()})")
        result = json.loads(line)
        if result["errors"] or result["predictions"] != len(windows) * len(models) or not result["rows"]:
            raise RuntimeError(f"{name}: {result}")
        return float(result["seconds"])

    def close() -> None:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    return Variant(name, run_round, close)


def measure(variants: list[Variant], server_group: int, rounds: int, per_round: int) -> None:
    for variant in variants:  # warm-up: the server's model cache, the clients' connections and metadata
        variant.run_round()
    for _ in range(rounds):
        for variant in variants:
            cpu = group_cpu_seconds(server_group)
            variant.seconds.append(variant.run_round())
            variant.server_cpu += group_cpu_seconds(server_group) - cpu
            variant.model_windows += per_round


def wall(variant: Variant) -> float:
    """Seconds per model-window: the median round's."""
    return statistics.median(variant.seconds) / (variant.model_windows / len(variant.seconds))


def cpu(variant: Variant) -> float:
    """The server's CPU seconds per model-window, over every measured round."""
    return variant.server_cpu / variant.model_windows


def report(groups: list[tuple[str, list[Variant], Variant]]) -> None:
    """One table per group: each variant's figures and its ratios to the group's gordo-client baseline."""
    for title, variants, baseline in groups:
        print(f"\n{title}")
        print(f"  {'':44s} {'wall ms':>8s} {'server CPU ms':>14s}   vs {baseline.name}:")
        print(f"  {'':44s} {'per model-window':>23s}   {'speed-up':>9s} {'server CPU':>11s}")
        for variant in variants:
            print(f"  {variant.name:44s} {wall(variant) * 1000:8.1f} {cpu(variant) * 1000:14.1f}   "
                  f"{wall(baseline) / wall(variant):8.2f}x {cpu(variant) / cpu(baseline):10.2f}x   "
                  f"(rounds {', '.join(f'{s:.2f}s' for s in variant.seconds)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-minutes", type=int, default=30,
                        help="window length (the default schedule's interval is 30 minutes)")
    parser.add_argument("--server-workers", type=int, default=1, help="gunicorn workers of the Gordo server")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    window = timedelta(minutes=args.window_minutes)
    windows = [TimeRange(FIRST_WINDOW + i * window, FIRST_WINDOW + (i + 1) * window) for i in range(args.windows)]
    data_end = windows[-1].end + timedelta(hours=2)
    print("building or finding Gordo's models, starting gordo run-server and influxd ...", flush=True)
    collection = build_models()
    influxd = start_influxd()
    variants: list[Variant] = []
    try:
        write_sensors(influxd.url, DATABASE, sensor_points(TAGS, D0, data_end, seed=21), MEASUREMENT)
        with GordoRealServer(collection, workers=args.server_workers) as server, \
                tempfile.TemporaryDirectory(prefix="latigo-bench-") as tmp:
            assert server.process is not None
            models = server.models
            directory = Path(tmp)
            latigo_default = executor_variant("latigo executor (default: parquet, 8 threads)", server, influxd,
                                              windows, models)
            client_default = gordo_client_variant("gordo-client (default: JSON)", server, influxd, windows, models,
                                                  directory, use_parquet=False, per_model=False)
            defaults = [
                latigo_default,
                executor_variant("latigo executor (use_parquet: false)", server, influxd, windows, models,
                                 use_parquet=False),
                executor_variant("latigo executor (windows_per_request: 1)", server, influxd, windows, models,
                                 windows_per_request=1),
                client_default,
                gordo_client_variant("gordo-client (use_parquet)", server, influxd, windows, models, directory,
                                     use_parquet=True, per_model=False),
            ]
            one_at_a_time = [
                latigo_variant("latigo GordoModels (default: parquet)", server, influxd, windows, models),
                latigo_variant("latigo GordoModels (use_parquet: false)", server, influxd, windows, models,
                               use_parquet=False),
                executor_variant("latigo executor, concurrency 1 (parquet)", server, influxd, windows, models,
                                 concurrency=1),
                gordo_client_variant("gordo-client (JSON), per model", server, influxd, windows, models, directory,
                                     use_parquet=False, per_model=True),
            ]
            variants = defaults + one_at_a_time
            print(f"real Gordo 6.0.4 ({server.workers} gunicorn worker(s), {server.threads} threads each), "
                  f"models {models}, "
                  f"{len(windows)} windows of {args.window_minutes} min at 10-minute resolution "
                  f"({len(windows) * len(models)} model-windows per round), {args.rounds} rounds after a warm-up, "
                  f"{os.cpu_count()} CPUs",
                  flush=True)
            measure(variants, server.process.pid, args.rounds, len(windows) * len(models))
            report([("each at its defaults: latigo's executor, gordo-client one predict per window", defaults,
                     client_default),
                    ("one model-window at a time", one_at_a_time, one_at_a_time[3])])
            goal = latigo_default, client_default
            print(f"\ndefault config: latigo {wall(goal[1]) / wall(goal[0]):.2f}x faster (goal >= 2.5x), "
                  f"{cpu(goal[0]) / cpu(goal[1]):.2f}x the server's CPU (goal <= 0.6x)")
    finally:
        for variant in variants:
            variant.close()
        influxd.stop()


if __name__ == "__main__":
    main()
