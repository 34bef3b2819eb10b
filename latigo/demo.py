"""`latigo demo`: the whole of latigo on one machine, with no external service.

Synthetic sensors (with one injected anomaly) → local models trained on their
history → a backfill of the last hours → the database queue → two executor
processes → predictions in SQLite → a summary and a chart of one model.
Everything lands in one directory, including a config file that the other
commands accept (`latigo --config DIR/latigo.yaml status`).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import sqlalchemy as sa
import yaml
from tqdm import tqdm

from latigo.config import load_config
from latigo.errors import ConfigError
from latigo.factory import Components
from latigo.lifecycle import DONE, FAILED
from latigo.logs import logs_above_bars
from latigo.models.local import machines_for_groups
from latigo.scheduler import Scheduler
from latigo.sensors.synthetic import LONGEST_DRIFT_DAYS
from latigo.storage import migrations
from latigo.storage.reads import task_counts
from latigo.storage.tables import Prediction, TaskRecord
from latigo.types import DEFAULT_PROJECT, ModelRef, TimeRange

log = logging.getLogger(__name__)

STEP = timedelta(minutes=10)
TRAINING_DAYS = LONGEST_DRIFT_DAYS
"""A whole cycle of the sensors' slowest drift: trained on less, a model meets drift levels it never saw
in the backfill and reads them as anomalies (per-tag confidence up to 1.7 on normal data with 3 days)."""
ANOMALY_SENSOR = "sensor-g0-1"
EXECUTORS = 2


@dataclass
class DemoSummary:
    tasks_done: int
    tasks_failed: int
    prediction_rows: int
    wall_seconds: float
    tasks_per_second: float
    models: list[str]
    anomaly_start: str
    anomaly_end: str
    chart: str


def floor_to_step(instant: datetime) -> datetime:
    return instant - (instant - datetime(1970, 1, 1, tzinfo=timezone.utc)) % STEP


def plan_ranges(now: datetime, hours: float) -> tuple[TimeRange, TimeRange, TimeRange]:
    """(backfill, anomaly, training) ranges on the 10-minute grid; the anomaly sits mid-backfill."""
    end = floor_to_step(now)
    backfill = TimeRange(end - timedelta(hours=hours), end)
    length = max(2 * STEP, min(timedelta(hours=1), backfill.duration / 4))
    start = floor_to_step(backfill.start + backfill.duration / 2)
    anomaly = TimeRange(start, min(start + length - length % STEP, end))
    training = TimeRange(backfill.start - timedelta(days=TRAINING_DAYS), backfill.start)
    return backfill, anomaly, training


def write_demo_config(directory: Path, anomaly: TimeRange) -> Path:
    config = {
        "database": {"url": f"sqlite:///{(directory / 'latigo.db').resolve()}"},
        "task_queue": {"type": "database", "poll_interval": "200ms"},
        "sensor_data": {"type": "synthetic", "anomalies": [
            {"sensor": ANOMALY_SENSOR, "start": anomaly.start.isoformat(), "end": anomaly.end.isoformat(),
             "magnitude": 0.5}]},
        "model_information": {"type": "local"},
        "model_execution": {"type": "local"},
        "scheduler": {"interval": "10m", "delay": "0s", "run_at_once": True},
        "executor": {"concurrency": 4, "poll_timeout": "500ms"},
        "metrics": {"enabled": False},
    }
    path = directory / "latigo.yaml"
    path.write_text("# Written by `latigo demo`; use it with any command: latigo --config this-file status\n"
                    + yaml.safe_dump(config, sort_keys=False))
    return path


DEMO_FILES = ("latigo.yaml", "latigo.db", "latigo.db-wal", "latigo.db-shm", "demo.png", "summary.json")
"""What a demo run writes (plus executor-N.log); a new run in the same directory replaces exactly these."""


def prepare_directory(directory: Path, out) -> None:
    """A fresh directory for this run: an earlier demo's files are replaced (never mixed into this run's
    database and chart); a directory holding anything else is refused, naming --dir."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"demo: {directory} is a file; choose another place with --dir")
    if directory.exists():
        ours = set(DEMO_FILES) | {path.name for path in directory.glob("executor-*.log")}
        others = sorted(path.name for path in directory.iterdir() if path.name not in ours)
        if others:
            raise ConfigError(f"demo: {directory}/ holds files that are not an earlier demo's ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); choose an empty or new directory with --dir")
        earlier = [path for path in directory.iterdir()]
        if earlier:
            print(f"replacing the earlier demo run in {directory}/", file=out)
            for path in earlier:
                path.unlink()
    directory.mkdir(parents=True, exist_ok=True)


def run_demo(directory: Path, models: int, hours: float, follow: bool = False, out=sys.stdout,
             chart_model: str | None = None) -> DemoSummary:
    if models < 1 or hours < 1:
        raise ValueError("latigo demo: --models and --hours must be at least 1")
    prepare_directory(directory, out)
    backfill_range, anomaly, training = plan_ranges(datetime.now(timezone.utc), hours)
    config_path = write_demo_config(directory, anomaly)
    components = Components(load_config(config_path, env={}))
    migrations.upgrade(components.engine)
    began = time.monotonic()

    print(f"latigo demo in {directory}/ — {models} models, last {hours:g} h", file=out)
    names = _train(components, models, training, out)
    if chart_model is not None and chart_model not in names:
        raise ConfigError(f"demo: --model {chart_model!r} is not one of this run's models: {', '.join(names)}")
    scheduler = Scheduler(components.config.scheduler, components.model_information, components.task_queue,
                          components.lifecycle)
    scheduler.backfill(backfill_range.start, backfill_range.end, names)
    scheduler.run_cycle()  # the live window, as the running scheduler would
    total = sum(task_counts(components.engine).values())
    print(f"enqueued {total} tasks ({len(names)} models × 10-minute windows); starting {EXECUTORS} executors",
          file=out)
    executors = _start_executors(config_path, directory, exit_when_idle=None if follow else 3.0)
    _show_progress(components, executors, total, out)
    if follow:
        _follow(scheduler, executors, out)
    else:
        _wait_executors(executors)
    wall = time.monotonic() - began
    summary = _summarise(components, names, anomaly, wall, directory)
    _plot(components, chart_model or names[0], backfill_range, anomaly, directory / "demo.png")
    (directory / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    print(f"done: {summary.tasks_done} tasks, {summary.tasks_failed} failed, {summary.prediction_rows} prediction "
          f"rows in {summary.wall_seconds:.1f} s ({summary.tasks_per_second:.1f} tasks/s)\n"
          f"chart: {summary.chart}\nlook closer: latigo --config {config_path} status", file=out)
    components.engine.dispose()
    return summary


def _train(components: Components, count: int, training: TimeRange, out) -> list[str]:
    machines = machines_for_groups(components.sensor_information.get_sensor_list(), count, training)
    with logs_above_bars():  # log lines go above the bar instead of through it
        for machine in tqdm(machines, desc="training models", unit="model", file=out):
            components.model_execution.register_model(machine)
    return [m["name"] for m in machines]


def _start_executors(config: Path, directory: Path, exit_when_idle: float | None) -> list[subprocess.Popen]:
    command = [sys.executable, "-m", "latigo", "--config", str(config), "executor"]
    if exit_when_idle is not None:
        command += ["--exit-when-idle", str(exit_when_idle)]
    processes = []
    for index in range(EXECUTORS):
        log_file = (directory / f"executor-{index + 1}.log").open("w")
        processes.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT))
    return processes


def _finished(components: Components) -> int:
    with components.engine.connect() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                                  .where(TaskRecord.state.in_([DONE, FAILED]))).scalar_one()


def _show_progress(components: Components, executors: list[subprocess.Popen], total: int, out) -> None:
    with logs_above_bars(), tqdm(total=total, desc="predicting", unit="task", file=out) as bar:
        while True:
            finished = _finished(components)
            bar.update(finished - bar.n)
            if finished >= total or all(p.poll() is not None for p in executors):
                return
            time.sleep(0.5)


def _follow(scheduler: Scheduler, executors: list[subprocess.Popen], out) -> None:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("following live windows; Ctrl-C stops", file=out, flush=True)  # only once Ctrl-C is handled
    try:
        scheduler.run(stop)
    finally:
        signal.signal(signal.SIGINT, previous)
        for process in executors:
            process.send_signal(signal.SIGTERM)
        for process in executors:
            process.wait(60)


def _wait_executors(executors: list[subprocess.Popen]) -> None:
    for process in executors:
        if process.wait(120) != 0:
            raise RuntimeError(f"an executor exited with {process.returncode}; see executor-*.log in the demo dir")


def _summarise(components: Components, names: list[str], anomaly: TimeRange, wall: float,
               directory: Path) -> DemoSummary:
    with components.engine.connect() as connection:
        states: dict[str, int] = {state: count for state, count in connection.execute(
            sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all()}
        rows = connection.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one()
    done = states.get(DONE, 0)
    return DemoSummary(done, states.get(FAILED, 0), rows, round(wall, 2), round(done / wall, 2) if wall else 0.0,
                       names, anomaly.start.isoformat(), anomaly.end.isoformat(), str(directory / "demo.png"))


def _plot(components: Components, model: str, shown: TimeRange, anomaly: TimeRange, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    info = components.model_information.get_model_info(ModelRef(DEFAULT_PROJECT, model))
    tag = ANOMALY_SENSOR if ANOMALY_SENSOR in info.tags else info.tags[0]
    sensors = components.sensor_data.get_data_for_range(shown.start, shown.end, [tag], info.resolution).data
    with components.engine.connect() as connection:
        rows = connection.execute(sa.select(Prediction.output, Prediction.tag, Prediction.ts, Prediction.value)
                                  .where(Prediction.model == model)).all()
    predictions = pd.DataFrame(rows, columns=["output", "tag", "ts", "value"])
    output = predictions[(predictions.output == "model-output") & (predictions.tag == tag)].set_index("ts").sort_index()
    total = predictions[predictions.output == "total-anomaly-scaled"].set_index("ts").sort_index()

    figure, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    top.plot(sensors.index, sensors[tag], label=f"{tag} (sensor)", color="tab:blue")
    top.plot(output.index, output["value"], label=f"{tag} (model output)", color="tab:orange", linestyle="--")
    top.set_ylabel("value")
    top.legend(loc="upper left")
    bottom.plot(total.index, total["value"], color="tab:red", label="total anomaly (scaled)")
    bottom.set_ylabel("anomaly score")
    bottom.legend(loc="upper left")
    if tag == ANOMALY_SENSOR:
        for axis in (top, bottom):
            axis.axvspan(anomaly.start, anomaly.end, color="gold", alpha=0.3, label="injected anomaly")
        top.set_title(f"latigo demo — {model}: sensor vs model, and the anomaly score (shaded: injected anomaly)")
    else:
        top.set_title(f"latigo demo — {model}: sensor vs model, and the anomaly score (no injected anomaly in its "
                      f"sensors: it is in {ANOMALY_SENSOR})")
    bottom.set_xlabel("time (UTC)")
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=timezone.utc))
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
