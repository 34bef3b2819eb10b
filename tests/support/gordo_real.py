"""A REAL Gordo 6.0.4 server and the official gordo-client 6.3.0, as an oracle for latigo's predictions.

Nothing here is faked: Gordo's own builder trains the models, `gordo run-server` (gunicorn) serves them
and `gordo_client.Client.predict` reads InfluxDB and asks the server, each in its own virtualenv
(Gordo pins TensorFlow 2.16, pandas 1.5 and numpy 1.26, which latigo's environment must not share).
latigo's process only starts them and reads their answers.

- `ensure_venv(name, requirement)`: a venv under the test cache (`$LATIGO_TEST_CACHE`, default
  `~/.cache/latigo-test`) with one `pip install`, done once (a marker file holds the requirement) and
  under a file lock, so parallel pytest processes do not install at the same time.
- `build_models(specs)`: Gordo models trained on `RandomDataProvider` data, cached on disk under a key
  hashed from the configs, the Gordo version and the build script.
- `GordoRealServer`: `gordo run-server` on a free loopback port; `gordo_real_server` is the session
  fixture (one server per pytest process, however many test modules import the fixture).
- `gordo_client_predict(...)`: what gordo-client gets for a time range, as JSON-able rows.
- `sensor_points` / `write_sensors`: sensor data in latigo's InfluxDB schema (measurement `sensors`,
  tag key `tag`, field `Value`), which is exactly what gordo-core's InfluxDataProvider reads.

Use in a test module: `from tests.support.gordo_real import gordo_real_server_fixture  # noqa: F401`, then
ask for the fixture `gordo_real_server`.
The scripts that run inside the venvs live in `gordo_real_scripts/` and never import latigo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from tests.support.influxd import free_port, influxql, write_lines

GORDO_REQUIREMENT = "gordo==6.0.4"
GORDO_CLIENT_REQUIREMENT = "gordo-client==6.3.0"
SCRIPTS = Path(__file__).resolve().parent / "gordo_real_scripts"
PROJECT = "latigo-test"
REVISION = "1700000000000"
"""The collection directory's name: the server reports it as the revision; gordo-client sends it back
as `?revision=`, which the server only accepts when it is all digits."""
TAGS = ("tag-1", "tag-2", "tag-3", "tag-4")
RESOLUTION = "10T"

VENV_TIMEOUT = float(os.environ.get("LATIGO_TEST_VENV_TIMEOUT", 1800))
BUILD_TIMEOUT = float(os.environ.get("LATIGO_TEST_GORDO_BUILD_TIMEOUT", 1200))
STARTUP_TIMEOUT = float(os.environ.get("LATIGO_TEST_GORDO_STARTUP_TIMEOUT", 240))
ORACLE_TIMEOUT = float(os.environ.get("LATIGO_TEST_ORACLE_TIMEOUT", 600))


def cache_dir() -> Path:
    """`$LATIGO_TEST_CACHE`, default `~/.cache/latigo-test`: venvs and built models persist here."""
    return Path(os.environ.get("LATIGO_TEST_CACHE") or Path.home() / ".cache" / "latigo-test").expanduser()


def python311() -> str:
    """The interpreter the venvs are made from (Gordo 6.0.4 supports Python 3.11)."""
    explicit = os.environ.get("LATIGO_TEST_PYTHON311")
    if explicit:
        return explicit
    found = shutil.which("python3.11")
    if found:
        return found
    if sys.version_info[:2] == (3, 11):
        return sys.executable
    raise RuntimeError("python3.11 is not on PATH (set LATIGO_TEST_PYTHON311): Gordo 6.0.4 needs Python 3.11")


# --------------------------------------------------------------------------- locks and venvs


@contextlib.contextmanager
def file_lock(path: Path, timeout: float, what: str) -> Iterator[None]:
    """An exclusive fcntl lock on `path`, waited for at most `timeout` seconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what}: another process held {path} for more than {timeout:.0f}s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_ready(venv: Path, requirement: str) -> bool:
    marker = venv / ".latigo-requirement"
    try:
        return marker.read_text() == requirement and _venv_python(venv).exists()
    except OSError:
        return False


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def ensure_venv(name: str, requirement: str, timeout: float = VENV_TIMEOUT) -> Path:
    """`<cache>/venvs/<name>`, made with `python3.11 -m venv` and `pip install <requirement>` the first
    time (or when the marker holds another requirement); returns the venv directory."""
    root = cache_dir() / "venvs"
    venv = root / name
    if _venv_ready(venv, requirement):
        return venv
    with file_lock(root / f"{name}.lock", timeout, f"installing {requirement} into {venv}"):
        if _venv_ready(venv, requirement):  # another process finished it while we waited
            return venv
        shutil.rmtree(venv, ignore_errors=True)
        log_path = root / f"{name}.install.log"
        deadline = time.monotonic() + timeout
        env = _clean_env()
        with open(log_path, "w") as log:
            for command in ([python311(), "-m", "venv", str(venv)],
                            [str(_venv_python(venv)), "-m", "pip", "install", "--no-input", requirement]):
                log.write(f"$ {' '.join(command)}\n")
                log.flush()
                try:
                    completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               stdin=subprocess.DEVNULL, timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise RuntimeError(f"{' '.join(command)} did not finish within {timeout:.0f}s; "
                                       f"log {log_path}:\n{_tail(log_path.read_text())}") from None
                if completed.returncode != 0:
                    shutil.rmtree(venv, ignore_errors=True)
                    raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}; "
                                       f"log {log_path}:\n{_tail(log_path.read_text())}")
        (venv / ".latigo-requirement").write_text(requirement)
    return venv


def gordo_venv() -> Path:
    """The venv with `gordo==6.0.4` (TensorFlow 2.16; about 3 minutes to install the first time)."""
    return ensure_venv("gordo", GORDO_REQUIREMENT)


def gordo_client_venv() -> Path:
    """The venv with `gordo-client==6.3.0` (gordo-core 0.3.6, pandas 1.5)."""
    return ensure_venv("gordo-client", GORDO_CLIENT_REQUIREMENT)


def _clean_env() -> dict[str, str]:
    """This process's environment without what would leak latigo's interpreter into a foreign one."""
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTEST_ADDOPTS")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith(("LATIGO_", "PYTEST_"))}


def venv_env(venv: Path, **extra: str) -> dict[str, str]:
    """Environment for a process of `venv`: its bin first on PATH, TensorFlow quiet, on CPU and on one
    thread per pool (the test machine has 2 cores shared with everything else)."""
    env = _clean_env()
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PYTHONNOUSERSITE="1",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        TF_ENABLE_ONEDNN_OPTS="0",
        TF_NUM_INTRAOP_THREADS="1",
        TF_NUM_INTEROP_THREADS="1",
        CUDA_VISIBLE_DEVICES="-1",
        OMP_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        KERAS_HOME=str(cache_dir() / "keras"),
        MPLCONFIGDIR=str(cache_dir() / "matplotlib"),
    )
    env.update(extra)
    return env


# --------------------------------------------------------------------------- models


def _anomaly(base_estimator: dict[str, Any]) -> dict[str, Any]:
    return {"gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector": {"base_estimator": base_estimator}}


PCA_PIPELINE = _anomaly({"sklearn.pipeline.Pipeline": {"steps": [
    "sklearn.preprocessing.MinMaxScaler",
    # Fewer components than tags: a full-rank PCA reconstructs its input exactly, which leaves the
    # anomaly scores (and confidences) as rounding noise.
    {"sklearn.decomposition.PCA": {"n_components": 2}},
    {"sklearn.multioutput.MultiOutputRegressor": {"estimator": "sklearn.linear_model.LinearRegression"}},
]}})

LSTM_LOOKBACK_WINDOW = 6

LSTM_PIPELINE = _anomaly({"sklearn.pipeline.Pipeline": {"steps": [
    "sklearn.preprocessing.MinMaxScaler",
    {"gordo.machine.model.models.KerasLSTMAutoEncoder": {
        "kind": "lstm_model",
        "lookback_window": LSTM_LOOKBACK_WINDOW,
        "encoding_dim": [4],
        "encoding_func": ["tanh"],
        "decoding_dim": [4],
        "decoding_func": ["tanh"],
        "epochs": 1,
        "batch_size": 16,
        "verbose": 0,
    }},
]}})


@dataclass(frozen=True)
class ModelSpec:
    """One Gordo machine: a name (lowercase, dashes), a Gordo model definition and the dataset.

    The dataset is a `TimeSeriesDataset` over `RandomDataProvider` data: NOT a `RandomDataset`, because
    gordo-client re-creates the model's dataset class with its own data provider and `RandomDataset`
    throws that provider away (the oracle would then predict on random numbers, not on InfluxDB).
    `dataset` adds or overrides keys (row_filter, interpolation_limit, aggregation_methods, ...).
    `evaluation` must keep cross-validation (Gordo's default `full_build`): DiffBasedAnomalyDetector
    computes its thresholds there, and without them the server answers every anomaly request with 422.
    """

    name: str
    model: dict[str, Any]
    tags: tuple[str, ...] = TAGS
    target_tags: tuple[str, ...] | None = None
    resolution: str = RESOLUTION
    dataset: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    train_start: str = "2026-01-01T00:00:00+00:00"
    train_end: str = "2026-01-03T00:00:00+00:00"

    def machine_config(self) -> dict[str, Any]:
        dataset: dict[str, Any] = {
            "type": "TimeSeriesDataset",
            "tag_list": list(self.tags),
            "target_tag_list": list(self.target_tags or self.tags),
            "train_start_date": self.train_start,
            "train_end_date": self.train_end,
            "resolution": self.resolution,
            # 1500-2000 random points per tag over 2 days: every 10-minute bucket has data.
            "data_provider": {"type": "RandomDataProvider", "min_size": 1500, "max_size": 2000},
        }
        dataset.update(self.dataset)
        config: dict[str, Any] = {"name": self.name, "dataset": dataset, "model": self.model,
                                  "metadata": {"information": "latigo test model"}}
        if self.evaluation is not None:
            config["evaluation"] = self.evaluation
        return config


PCA_MODEL = ModelSpec("pca-model", PCA_PIPELINE, dataset={"interpolation_limit": "30T", "aggregation_methods": "mean"})
LSTM_MODEL = ModelSpec("lstm-model", LSTM_PIPELINE)
ROW_FILTER_MODEL = ModelSpec("row-filter-model", PCA_PIPELINE, dataset={"row_filter": "`tag-1` > 0.1"})
MULTI_AGGREGATION_MODEL = ModelSpec("multi-aggregation-model", PCA_PIPELINE,
                                    dataset={"aggregation_methods": ["mean", "max"]})
"""Gordo 6.0.4 can NOT build this one: training works, but writing metadata.json fails with
`TypeError: unhashable type: 'list'` (dataset_meta.summary_statistics is keyed by (tag, method) tuples).
Kept for tests that show the failure; not in DEFAULT_MODELS."""

DEFAULT_MODELS: tuple[ModelSpec, ...] = (PCA_MODEL, LSTM_MODEL, ROW_FILTER_MODEL)


class GordoBuildError(RuntimeError):
    """Gordo's builder failed; the message holds its output."""


def _collection_key(configs: list[dict[str, Any]], project: str, revision: str = REVISION) -> str:
    material = {
        "gordo": GORDO_REQUIREMENT,
        "project": project,
        "revision": revision,
        "machines": configs,
        "builder": hashlib.sha256((SCRIPTS / "build_models.py").read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def build_models(models: Sequence[ModelSpec] = DEFAULT_MODELS, project: str = PROJECT,
                 timeout: float = BUILD_TIMEOUT, *, revision: str = REVISION) -> Path:
    """Build `models` with Gordo's builder in the gordo venv; returns the collection directory
    (`<cache>/models/<key>/collection/<revision>/<model name>/`), which `gordo run-server` serves.

    The key hashes the configs, the project, the revision, Gordo's version and the build script, so later
    sessions reuse the models. Every key has a `collection/` of its own holding only its revision: a
    server over one revision answers `?revision=<any other>` with 410, as Gordo does for a revision that
    is no longer deployed. `revision` must be all digits (the server refuses any other with 410).
    """
    if not revision.isdigit():
        raise ValueError(f"a revision is all digits, got {revision!r}")
    names = [model.name for model in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be unique: {names}")
    configs = [model.machine_config() for model in models]
    root = cache_dir() / "models"
    key = _collection_key(configs, project, revision)
    final = root / key
    collection = final / "collection" / revision
    if collection.is_dir():
        return collection
    venv = gordo_venv()
    with file_lock(root / f"{key}.lock", timeout, f"building Gordo models {names}"):
        if collection.is_dir():
            return collection
        for stale in root.glob(f"{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = root / f"{key}.tmp-{os.getpid()}"
        work.mkdir(parents=True)
        config_path = work / "config.yaml"
        config_path.write_text(yaml.safe_dump({"machines": configs}, sort_keys=False))
        log_path = work / "build.log"
        command = [str(_venv_python(venv)), str(SCRIPTS / "build_models.py"), str(config_path), project,
                   str(work / "collection" / revision)]
        started = time.monotonic()
        with open(log_path, "w") as log:
            try:
                completed = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           env=venv_env(venv), cwd=work, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise GordoBuildError(f"Gordo's builder did not finish {names} within {timeout:.0f}s; "
                                      f"log {log_path}:\n{_tail(log_path.read_text())}") from None
        if completed.returncode != 0:
            raise GordoBuildError(f"Gordo's builder failed (exit {completed.returncode}) for {names}; "
                                  f"log {log_path}:\n{_tail(log_path.read_text(), 60)}")
        (work / "seconds").write_text(f"{time.monotonic() - started:.1f}\n")
        os.rename(work, final)
    return collection


def built_models_report(collection: Path) -> list[dict[str, Any]]:
    """The builder's per-model lines (name, seconds, model_offset) for a built collection."""
    log = collection.parent.parent / "build.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith('{"name"')]


# --------------------------------------------------------------------------- server


class PortTaken(RuntimeError):
    """gunicorn could not bind the port free_port() chose (another process took it meanwhile)."""


class GordoRealServer:
    """`gordo run-server` (gunicorn, gthread workers) from the gordo venv on a free loopback port,
    serving `collection_dir` (its name is the revision). Start with start() or as a context manager."""

    def __init__(self, collection_dir: Path, project: str = PROJECT, workers: int = 1, threads: int = 4,
                 startup_timeout: float = STARTUP_TIMEOUT) -> None:
        self.collection_dir = Path(collection_dir)
        self.project = project
        self.revision = self.collection_dir.name
        self.models = sorted(p.name for p in self.collection_dir.iterdir() if (p / "metadata.json").exists())
        self.workers = workers
        self.threads = threads
        self.startup_timeout = startup_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen | None = None
        self._directory: Path | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def project_url(self) -> str:
        return f"{self.base_url}/gordo/v0/{self.project}"

    def model_url(self, model: str, path: str = "") -> str:
        """`.../gordo/v0/<project>/<model>/<path>`"""
        return f"{self.project_url}/{model}" + (f"/{path.lstrip('/')}" if path else "")

    def get_json(self, url_or_path: str, timeout: float = 30.0) -> Any:
        """GET a JSON answer (a path is taken relative to the project URL); raises on a non-2xx status."""
        url = url_or_path if "://" in url_or_path else f"{self.project_url}/{url_or_path.lstrip('/')}"
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)

    def metadata(self, model: str) -> dict[str, Any]:
        return self.get_json(self.model_url(model, "metadata"))

    def log_tail(self, lines: int = 40) -> str:
        try:
            return _tail(self.log_path.read_text(errors="replace"), lines) if self.log_path else ""
        except OSError:
            return ""

    def start(self, attempts: int = 3) -> GordoRealServer:
        """Start and wait until the server lists every model; a lost race for the port is retried."""
        if not self.models:
            raise RuntimeError(f"no built models in {self.collection_dir}")
        venv = gordo_venv()
        for attempt in range(1, attempts + 1):
            self._launch(venv)
            try:
                self._wait_ready()
                return self
            except PortTaken:
                self.stop()
                if attempt == attempts:
                    raise
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self, venv: Path) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="latigo-gordo-server-"))
        self.log_path = self._directory / "server.log"
        self.port = free_port()
        env = venv_env(
            venv,
            MODEL_COLLECTION_DIR=str(self.collection_dir),
            PROJECT=self.project,
            EXPECTED_MODELS=json.dumps(self.models),
            # The server keeps this many loaded models (default 2); more avoids reloading on every request.
            N_CACHED_MODELS=str(max(2, len(self.models))),
        )
        command = [str(venv / "bin" / "gordo"), "run-server", "--host", self.host, "--port", str(self.port),
                   "--workers", str(self.workers), "--threads", str(self.threads), "--log-level", "info"]
        with open(self.log_path, "wb") as log:
            # Its own session: `gordo run-server` runs gunicorn as a child, and gunicorn forks workers;
            # stop() signals the whole group by its id, which is this child's pid.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, cwd=self._directory, start_new_session=True)

    def _wait_ready(self) -> None:
        url = f"{self.project_url}/models"
        deadline = time.monotonic() + self.startup_timeout
        last = "no answer yet"
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "Connection in use" in self.log_tail(1000):  # gunicorn's words for EADDRINUSE
                    raise PortTaken(f"port {self.port} was taken before gunicorn bound it")
                raise RuntimeError(f"gordo run-server exited with status {self.process.returncode} before serving "
                                   f"{url}; server log:\n{self.log_tail()}")
            try:
                listed = self.get_json(url, timeout=5).get("models", [])
                if set(self.models) <= set(listed):
                    return
                last = f"it lists {listed}, expected {self.models}"
            except (urllib.error.URLError, OSError, ValueError) as error:
                last = repr(error)
            time.sleep(0.25)
        raise TimeoutError(f"gordo run-server did not list {self.models} at {url} within "
                           f"{self.startup_timeout:.0f}s ({last}); server log:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the server's process group, SIGKILL to what is left after `timeout` seconds."""
        process, self.process = self.process, None
        if process is not None:
            group = process.pid
            _signal_group(group, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + timeout
            while _group_alive(group) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _group_alive(group):
                _signal_group(group, signal.SIGKILL)
            if process.poll() is None:
                process.wait(5)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __enter__(self) -> GordoRealServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies (exited, not yet reaped by init) still count for killpg; look for a live member.
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


_shared_lock = threading.Lock()
_shared: dict[tuple[str, str], list[Any]] = {}


def acquire_server(models: Sequence[ModelSpec] = DEFAULT_MODELS, project: str = PROJECT) -> GordoRealServer:
    """One running server per (models, project) in this process; release_server() when done."""
    collection = build_models(models, project)
    key = (str(collection), project)
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            entry = _shared[key] = [GordoRealServer(collection, project).start(), 0]
        entry[1] += 1
        return entry[0]


def release_server(server: GordoRealServer) -> None:
    with _shared_lock:
        for key, entry in list(_shared.items()):
            if entry[0] is server:
                entry[1] -= 1
                if entry[1] <= 0:
                    del _shared[key]
                    server.stop()
                return
    server.stop()


def require_gordo_real() -> None:
    """Skip when `LATIGO_TEST_SKIP_GORDO_REAL=1` (never under CI) or without Python 3.11."""
    if os.environ.get("LATIGO_TEST_SKIP_GORDO_REAL") == "1" and not os.environ.get("CI"):
        pytest.skip("LATIGO_TEST_SKIP_GORDO_REAL=1")
    try:
        python311()
    except RuntimeError as error:
        if os.environ.get("CI"):
            pytest.fail(f"{error}; CI must run the real-Gordo tests")
        pytest.skip(str(error))


@pytest.fixture(scope="session", name="gordo_real_server")
def gordo_real_server_fixture() -> Iterator[GordoRealServer]:
    """A real Gordo 6.0.4 server on loopback serving DEFAULT_MODELS (pca-model, lstm-model,
    row-filter-model) for project `latigo-test`; shared by every module of the session that imports it."""
    require_gordo_real()
    server = acquire_server()
    try:
        yield server
    finally:
        release_server(server)


# --------------------------------------------------------------------------- oracle


class OracleError(RuntimeError):
    """gordo-client (the oracle script) failed; the message holds its output."""


class OracleTarget(Protocol):
    """Where gordo-client connects: `Client(project, host, port, scheme="http")` asks
    `http://{host}:{port}/gordo/v0/{project}/...`. A GordoRealServer is one; so is a project behind
    the test ingress (tests/support/gordo_ingress.py). `log_tail()` goes into the error messages."""

    @property
    def project(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    def log_tail(self, lines: int = 40) -> str: ...


def gordo_client_predict(server: OracleTarget, influx_url: str, database: str, measurement: str,
                         start: datetime, end: datetime, models: Iterable[str], batch_size: int | None = None,
                         *, n_retries: int = 0, parallelism: int = 2, timeout: float = ORACLE_TIMEOUT,
                         ) -> dict[str, dict[str, list]]:
    """What gordo-client 6.3.0 gets from `server` for [start, end], reading InfluxDB at `influx_url`.

    Returns {model: {"rows": [[group, column, iso_ts, value], ...], "errors": [...],
    "input_rows": [[tag, iso_ts, value], ...], "exception": None | str}}: the client's prediction frame
    flattened (NaN skipped, UTC ISO timestamps), its error messages (failed batches), the resampled input
    it sent, and what `Client.predict` raised, if it did (then the rest is empty): with no sensor data
    in the range gordo-core's InfluxDataProvider raises `IndexError: list index out of range`.
    `n_retries=0` (the client's default is 5, sleeping 8 s, 16 s, ... between tries) makes a failing
    batch an error message at once; `batch_size=None` keeps the client's default (100000 rows).
    """
    for name, moment in (("start", start), ("end", end)):
        if moment.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware, got {moment!r}")
    influx = urllib.parse.urlsplit(influx_url)
    request = {
        "project": server.project,
        "host": server.host,
        "port": server.port,
        "influx_host": influx.hostname,
        "influx_port": influx.port or 8086,
        "database": database,
        "measurement": measurement,
        "start": start.astimezone(timezone.utc).isoformat(),
        "end": end.astimezone(timezone.utc).isoformat(),
        "models": list(models),
        "batch_size": batch_size,
        "n_retries": n_retries,
        "parallelism": parallelism,
    }
    venv = gordo_client_venv()
    with tempfile.TemporaryDirectory(prefix="latigo-oracle-") as directory:
        request_path, result_path = Path(directory, "request.json"), Path(directory, "result.json")
        request_path.write_text(json.dumps(request))
        command = [str(_venv_python(venv)), str(SCRIPTS / "oracle.py"), str(request_path), str(result_path)]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, env=venv_env(venv),
                                       stdin=subprocess.DEVNULL, cwd=directory, timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            output = (expired.stderr or b"").decode(errors="replace") if isinstance(expired.stderr, bytes) \
                else (expired.stderr or "")
            raise OracleError(f"gordo-client did not finish within {timeout:.0f}s:\n{_tail(output)}\n"
                              f"server log:\n{server.log_tail()}") from None
        if completed.returncode != 0 or not result_path.exists():
            raise OracleError(f"gordo-client exited {completed.returncode}:\n{_tail(completed.stderr, 60)}\n"
                              f"server log:\n{server.log_tail()}")
        return json.loads(result_path.read_text())


def oracle_frame(result: dict[str, list]) -> Any:
    """A model's oracle rows as a DataFrame: UTC DatetimeIndex, (group, column) MultiIndex columns.
    The `start` and `end` groups are ISO strings; every other value is a float."""
    import pandas as pd

    rows = result["rows"]
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows, columns=["group", "column", "time", "value"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    wide = frame.pivot(index="time", columns=["group", "column"], values="value").sort_index()
    for column in wide.columns:
        if column[0] not in ("start", "end"):
            wide[column] = pd.to_numeric(wide[column])
    wide.columns = wide.columns.rename([None, None])
    wide.index.name = None
    return wide


# --------------------------------------------------------------------------- sensor data


def sensor_points(tags: Iterable[str], start: datetime, end: datetime, step: timedelta = timedelta(minutes=1),
                  seed: int = 0) -> dict[str, list[tuple[datetime, float]]]:
    """Deterministic values in [0, 1] (the training data's range) every `step` from `start` to `end`
    (exclusive): a slow sine per tag plus noise, so neighbouring buckets differ but stay plausible."""
    rng = random.Random(seed)
    points: dict[str, list[tuple[datetime, float]]] = {}
    for number, tag in enumerate(tags):
        series = []
        moment = start
        while moment < end:
            phase = moment.timestamp() / 3600.0 + number
            value = 0.5 + 0.3 * math.sin(phase) + rng.uniform(-0.15, 0.15)
            series.append((moment, min(1.0, max(0.0, value))))
            moment += step
        points[tag] = series
    return points


def _escape_tag(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def write_sensors(influx_url: str, database: str, points: Mapping[str, Sequence[tuple[datetime, float]]],
                  measurement: str = "sensors", create: bool = True) -> int:
    """Write points in latigo's schema (`<measurement>,tag=<sensor> Value=<float> <ns>`); returns the count."""
    if create:
        influxql(influx_url, f'CREATE DATABASE "{database}"')
    lines = []
    for tag, series in points.items():
        prefix = f"{_escape_tag(measurement)},tag={_escape_tag(tag)} Value="
        for moment, value in series:
            if moment.tzinfo is None:
                raise ValueError(f"naive timestamp {moment!r} for {tag}")
            nanoseconds = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
            lines.append(f"{prefix}{float(value)!r} {nanoseconds}")
    write_lines(influx_url, database, lines, precision="ns")
    return len(lines)


if __name__ == "__main__":
    # CI prepares the cached venvs and models up front, so a first-time install (~3 min) is a stage of its
    # own with its own output rather than a silent pause inside the tests.
    started = time.monotonic()
    print(f"gordo venv: {gordo_venv()}")
    print(f"gordo-client venv: {gordo_client_venv()}")
    print(f"models: {build_models()} ({time.monotonic() - started:.0f} s)")
