"""The monitoring kit in deploy/monitoring/: Prometheus alert rules, an example scrape config, a Grafana dashboard.

- The rules pass `promtool check rules` and their unit tests (`promtool test rules`), and every alert is tested
  both firing and silent.
- Every metric name in the rules and the dashboard's PromQL is one latigo exports (or Prometheus's own `up`).
- Every SQL query of the dashboard runs on a PostgreSQL database migrated by latigo, with Grafana's macros
  expanded as Grafana expands them, and returns the columns and rows the panel expects.
- (slow) A real Prometheus scrapes a real scheduler and executor (on a throwaway PostgreSQL database), finds
  their series and the backlog the executor counts in the queue, loads the rules with health ok, parses every
  PromQL of the dashboard, raises no alert for the healthy pipeline, and reports the executor down once it is
  stopped.

Needs promtool and prometheus (Debian package `prometheus`); without them the tests skip, or fail under CI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from latigo import observability
from latigo.lifecycle import TaskLifecycle
from latigo.queues.database import DatabaseTaskQueue
from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import TASK_QUEUE, TaskRecord
from latigo.types import PredictionFrame, PredictionRow, Task, TimeRange
from tests.conftest import create_pg_database, drop_pg_database
from tests.support.processes import latigo, latigo_ok, static_models_config

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "latigo-rules.yml"
RULE_TESTS = MONITORING / "tests" / "latigo-rules.test.yml"
EXAMPLE_CONFIG = MONITORING / "prometheus.example.yml"
DASHBOARD = MONITORING / "latigo-dashboard.json"
WAIT = 120.0
"""Upper bound of any wait on the processes below; reached only when something is broken."""
PROMETHEUS_METRICS = {"up"}
"""Series Prometheus makes itself, not latigo."""
TAC = "total-anomaly-confidence"


# ---------------------------------------------------------------- tools


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (Debian package prometheus: apt-get install -y -qq prometheus)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the monitoring tests")
        pytest.skip(reason)
    return path


def promtool(*args: str, cwd: Path = MONITORING) -> str:
    """Run promtool; fail the test with its output unless it exits 0."""
    result = subprocess.run([binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} exited {result.returncode}:\n{output}"
    return output


def wait_for(what: str, condition: Callable[[], Any], timeout: float = WAIT, every: float = 0.5) -> Any:
    """The first truthy value of `condition()`; fails the test naming `what` when `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------- the files


def rule_groups() -> list[dict[str, Any]]:
    return yaml.safe_load(RULES.read_text())["groups"]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def promql_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every Prometheus query of the dashboard."""
    return [(panel["title"], target["expr"]) for panel in dashboard_panels() for target in panel["targets"]
            if "expr" in target]


def sql_targets() -> dict[str, str]:
    """Panel title -> SQL of every PostgreSQL query of the dashboard (one per panel)."""
    found: dict[str, str] = {}
    for panel in dashboard_panels():
        for target in panel["targets"]:
            if "rawSql" in target:
                assert panel["title"] not in found, f"{panel['title']}: one SQL query per panel expected"
                found[panel["title"]] = target["rawSql"]
    return found


def for_prometheus(expr: str) -> str:
    """A dashboard expression with Grafana's interval variables filled in as Grafana would."""
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")


# ---------------------------------------------------------------- metric names

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
             "bool", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, keywords, labels,
    durations or strings."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subquery steps
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if word.lower() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def latigo_metric_names() -> set[str]:
    """Every series name latigo's processes can export, with the suffixes the exposition format adds."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created")}
    names = set()
    families = [*observability.REGISTRY.collect(), *observability.LAST_SCHEDULE_TIME.collect()]
    for family in families:
        names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


def test_metric_names_are_extracted_from_promql():
    expr = ('histogram_quantile(0.95, sum by (le, provider) (rate(latigo_provider_latency_seconds_bucket'
            '{job="latigo-executor", call=~"a|b"}[$__rate_interval]))) / on (job) group_left () '
            'max(latigo_queue_backlog offset 30m) and time() - max_over_time(up[5m:1m]) > 1e3')
    assert metric_names(expr) == {"latigo_provider_latency_seconds_bucket", "latigo_queue_backlog", "up"}


def test_every_metric_the_rules_and_dashboard_use_is_exported_by_latigo():
    known = latigo_metric_names() | PROMETHEUS_METRICS
    assert {"latigo_tasks_done_total", "latigo_task_duration_seconds_bucket",
            "latigo_last_schedule_time_seconds", "latigo_tasks_failed_total"} <= known
    expressions = [(f"rule {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    expressions += [(f"panel {title}", expr) for title, expr in promql_targets()]
    problems = []
    for where, expr in expressions:
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric found in {expr!r}")
        for name in sorted(names - known):
            problems.append(f"{where}: {name} is not a latigo metric")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- rules


def test_the_rules_pass_promtool_check_rules():
    output = promtool("check", "rules", str(RULES))
    assert "SUCCESS" in output


def test_the_rules_pass_their_promtool_unit_tests():
    output = promtool("test", "rules", str(RULE_TESTS))
    assert "SUCCESS" in output


def test_every_alert_is_unit_tested_firing_and_silent():
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - firing == set(), "alerts never seen firing in the unit tests"
    assert alerts - silent == set(), "alerts never seen silent in the unit tests"
    assert (firing | silent) - alerts == set(), "unit tests of alerts that do not exist"


def test_every_alert_has_a_severity_summary_and_description_with_values():
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], rule["alert"]
        if rule["alert"] not in ("LatigoSchedulerNoCycleSinceStart", "LatigoSchedulerMissing", "LatigoNoExecutorUp"):
            text = annotations["summary"] + annotations["description"]
            assert "$value" in text or "$labels" in text, f"{rule['alert']}: no value in its annotations"


def test_the_example_prometheus_config_passes_promtool_check_config(tmp_path):
    """Debian's promtool is built without Kubernetes discovery: its static stand-in checks everything else
    (relabelling included), and the rule file it names."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert config["rule_files"] == [RULES.name]
    kubernetes = [job for job in config["scrape_configs"] if "kubernetes_sd_configs" in job]
    assert [job["job_name"] for job in kubernetes] == ["latigo"]
    for job in kubernetes:
        assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["latigo"]}}]
        job["static_configs"] = [{"targets": ["placeholder:9100"]}]
        del job["kubernetes_sd_configs"]
    config["rule_files"] = [str(RULES)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    promtool("check", "config", str(checked))
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"latigo-scheduler", "latigo-executor"} <= jobs


def test_the_kubernetes_scrape_config_matches_the_manifests():
    """The relabelling keeps the pods deploy/k8s runs, by the labels and port name they carry."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    keep = next(job for job in config["scrape_configs"] if job["job_name"] == "latigo")["relabel_configs"][0]
    pattern = re.compile(keep["regex"])
    for component in ("scheduler", "executor"):
        documents = yaml.safe_load_all((ROOT / "deploy" / "k8s" / f"{component}.yaml").read_text())
        manifest = next(doc for doc in documents if doc and doc["kind"] == "Deployment")
        pod = manifest["spec"]["template"]
        labels = pod["metadata"]["labels"]
        ports = [port["name"] for container in pod["spec"]["containers"] for port in container.get("ports", [])]
        values = ";".join([labels["app.kubernetes.io/name"], labels["app.kubernetes.io/component"], ports[0]])
        assert pattern.fullmatch(values), (component, values)


# ---------------------------------------------------------------- dashboard (static)


def test_the_dashboard_has_datasource_variables_and_the_panels_asked_for():
    board = dashboard()
    assert board["schemaVersion"] >= 36
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["prometheus"]["type"] == "datasource" and variables["prometheus"]["query"] == "prometheus"
    assert variables["postgres"]["type"] == "datasource"
    assert variables["postgres"]["query"] == "grafana-postgresql-datasource"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"]["uid"] == "${postgres}"
    assert "FROM series" in model["query"] and model["multi"] and model["includeAll"]
    panels = dashboard_panels()
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    for panel in panels:
        for target in panel["targets"]:
            expected = "${prometheus}" if "expr" in target else "${postgres}"
            assert target["datasource"]["uid"] == expected, panel["title"]
            assert panel["datasource"]["uid"] == expected, panel["title"]
    exprs = " ".join(expr for _, expr in promql_targets())
    for needle in ("latigo_tasks_done_total", "sum by (reason) (rate(latigo_tasks_failed_total",
                   "latigo_queue_backlog", "histogram_quantile(0.5, sum by (le) (rate(latigo_task_duration_seconds",
                   "histogram_quantile(0.95, sum by (le) (rate(latigo_task_duration_seconds",
                   "latigo_provider_latency_seconds_bucket", "latigo_checkpoint_lag",
                   "time() - max(latigo_last_schedule_time_seconds"):
        assert needle in exprs, needle
    sql = sql_targets()
    assert "$__timeFilter(ts)" in sql["Total anomaly confidence by model"]
    assert "model IN ($model)" in sql["Total anomaly confidence by model"]
    assert "value > 1" in sql["Models above threshold"]
    assert "FROM tasks" in sql["Task states by window"]


# ---------------------------------------------------------------- dashboard SQL on PostgreSQL

GRAFANA_FROM = "2026-03-01T00:00:00Z"


def expand_grafana_sql(sql: str, models: list[str], until: datetime) -> str:
    """Grafana's PostgreSQL macros, expanded the way its postgres data source does, for a 10-minute
    $__interval, and `$model` as a multi-value variable (a quoted, comma-separated list)."""
    to = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    sql = re.sub(r"\$__timeGroupAlias\(([^,()]+),\s*\$__interval\)",
                 r'floor(extract(epoch from \1)/600)*600 AS "time"', sql)
    sql = re.sub(r"\$__timeFilter\(([^()]+)\)", rf"\1 BETWEEN '{GRAFANA_FROM}' AND '{to}'", sql)
    sql = sql.replace("$model", ", ".join("'" + model.replace("'", "''") + "'" for model in models))
    assert "$" not in sql, f"a Grafana macro or variable this test does not expand:\n{sql}"
    return sql


def fill_predictions(engine: sa.engine.Engine) -> None:
    """Three models with an hour of predictions each, one with a failed task and one with a queued one."""
    lifecycle = TaskLifecycle(engine)
    start = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    window = TimeRange(start, start + timedelta(hours=1))
    confidences = {
        "m-above": [0.2, 0.3, 0.4, 0.6, 0.9, 1.5],  # latest above 1
        "m-spike": [0.2, 3.0, 2.0, 0.5, 0.4, 0.4],  # was above 1, latest is not
        "m-calm": [0.1, 0.1, 0.2, 0.1, 0.1, 0.2],
    }
    with lifecycle.transaction() as connection:
        lifecycle.enqueue(connection, [Task(model, window) for model in [*confidences, "m-failing"]])
        lifecycle.enqueue(connection, [Task("m-calm", TimeRange(window.end, window.end + timedelta(hours=1)))])
    for model, values in confidences.items():
        stamps = [start + timedelta(minutes=10 * i) for i in range(len(values))]
        rows = [PredictionRow(TAC, TAC, ts, value) for ts, value in zip(stamps, values, strict=True)]
        rows += [PredictionRow("model-output", "tag-a", ts, 5.0) for ts in stamps]  # not a confidence
        frame = PredictionFrame(model, rows)
        task = Task(model, window)
        lifecycle.predictions.ready_for(frame)
        with lifecycle.transaction() as connection:
            assert lifecycle.start(connection, task, "test:1").run
            lifecycle.finish(connection, task, frame, 1200)
    with lifecycle.transaction() as connection:
        lifecycle.start(connection, Task("m-failing", window), "test:1")
        lifecycle.fail(connection, Task("m-failing", window), "permanent: simulated bad request", 300)


GRAFANA_GRANT = "GRANT SELECT ON series, predictions, tasks TO {role}"
"""What deploy/monitoring/README.md tells to grant Grafana's database user; the queries run with nothing more."""


@pytest.fixture
def grafana_role(pg_engine: sa.engine.Engine) -> Iterator[str]:
    """A role holding only the README's grant (roles are per server: a unique name, dropped afterwards)."""
    role = f"latigo_grafana_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} NOLOGIN")
        connection.exec_driver_sql(GRAFANA_GRANT.format(role=role))
    yield role
    with pg_engine.begin() as connection:
        connection.exec_driver_sql(f"DROP OWNED BY {role}")
        connection.exec_driver_sql(f"DROP ROLE {role}")


def run_sql(engine: sa.engine.Engine, role: str, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run a query as `role`, read-only."""
    with engine.connect() as connection, connection.begin() as transaction:
        connection.exec_driver_sql(f"SET LOCAL ROLE {role}")
        connection.exec_driver_sql("SET TRANSACTION READ ONLY")
        result = connection.exec_driver_sql(sql)
        answer = list(result.keys()), [tuple(row) for row in result.all()]
        transaction.rollback()
    return answer


def test_the_readme_grants_grafana_what_the_dashboard_reads():
    readme = (MONITORING / "README.md").read_text()
    assert GRAFANA_GRANT.format(role="latigo_grafana") in readme


def test_every_dashboard_sql_query_runs_on_latigos_schema(pg_engine, grafana_role):
    fill_predictions(pg_engine)
    until = datetime.now(timezone.utc) + timedelta(days=1)  # the failed task finished now
    everyone = ["m-above", "m-spike", "m-calm", "m-failing"]
    queries = sql_targets()
    assert set(queries) == {"Total anomaly confidence by model", "Models above threshold", "Task states by window",
                            "Recent failures"}

    def ask(sql: str, models: list[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
        return run_sql(pg_engine, grafana_role, expand_grafana_sql(sql, models, until))

    variable = next(v for v in dashboard()["templating"]["list"] if v["name"] == "model")
    columns, rows = ask(variable["query"], everyone)
    assert columns == ["model"] and [row[0] for row in rows] == ["m-above", "m-calm", "m-spike"]

    columns, rows = ask(queries["Total anomaly confidence by model"], ["m-above", "m-spike"])
    assert columns == ["time", "metric", "value"]
    by_model: dict[str, list[float]] = {}
    for _, metric, value in rows:
        by_model.setdefault(metric, []).append(value)
    assert by_model == {"m-above": [0.2, 0.3, 0.4, 0.6, 0.9, 1.5], "m-spike": [0.2, 3.0, 2.0, 0.5, 0.4, 0.4]}
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # time ascending, as Grafana wants

    columns, rows = ask(queries["Models above threshold"], everyone)
    assert columns == ["model", "latest prediction", TAC]
    assert rows == [("m-above", datetime(2026, 3, 1, 12, 50, tzinfo=timezone.utc), 1.5)]

    columns, rows = ask(queries["Task states by window"], everyone)
    assert columns == ["time", "metric", "value"]
    counts: dict[str, int] = {}
    for _, state, count in rows:
        counts[state] = counts.get(state, 0) + count
    assert counts == {"done": 3, "failed": 1, "queued": 1}

    columns, rows = ask(queries["Recent failures"], everyone)
    assert columns == ["finished", "model", "window start", "window end", "attempts", "runs", "error"]
    assert [(row[1], row[6]) for row in rows] == [("m-failing", "permanent: simulated bad request")]
    assert ask(queries["Recent failures"], ["m-above"])[1] == []  # the model variable filters


# ---------------------------------------------------------------- a real Prometheus scraping latigo


class _Output(threading.Thread):
    """Drains a child's output into a list (so its pipe never fills)."""

    def __init__(self, process: subprocess.Popen) -> None:
        super().__init__(daemon=True)
        self.process = process
        self.lines: list[str] = []

    def run(self) -> None:
        for line in iter(self.process.stdout.readline, ""):
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines[-200:])


@dataclass
class Stack:
    directory: Path
    database: str
    scheduler: subprocess.Popen
    executor: subprocess.Popen
    prometheus: subprocess.Popen
    outputs: dict[str, _Output]
    ports: dict[str, int]
    url: str
    log: Path
    stopped: set[str] = field(default_factory=set)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET an /api/v1 endpoint; returns the JSON answer, errors (400 bad_data ...) included."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.api("query", query=expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def diagnostics(self) -> str:
        parts = [f"--- {name}\n{output.text()}" for name, output in self.outputs.items()]
        parts.append(f"--- prometheus\n{self.log.read_text()[-4000:] if self.log.exists() else ''}")
        return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def metrics_port(output: _Output, process: subprocess.Popen, name: str) -> int:
    """The port latigo bound for /metrics (it asks for port 0 and logs the one it got)."""
    pattern = re.compile(r"serving /healthz /readyz /metrics on 127\.0\.0\.1:(\d+)")

    def found() -> int | None:
        for line in output.lines:
            match = pattern.search(line)
            if match:
                return int(match.group(1))
        assert process.poll() is None, f"the {name} exited {process.returncode}:\n{output.text()}"
        return None

    return wait_for(f"the {name}'s metrics port in its log", found, timeout=60)


def latigo_config(directory: Path, name: str, url: str) -> Path:
    queue = {"type": "database", "lease": "30s", "poll_interval": "200ms"}
    path = static_models_config(directory / f"{name}.yaml", url, queue, ["pump-a", "pump-b"], 0.05, 2)
    config = yaml.safe_load(path.read_text())
    config["scheduler"].update(run_at_once=True, check_interval="1s")
    config["metrics"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    path.write_text(yaml.safe_dump(config))
    return path


def stop(process: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_binary = binary("prometheus")
    directory = tmp_path_factory.mktemp("monitoring")
    url = create_pg_database("latigo_monitoring")
    scheduler_config = latigo_config(directory, "scheduler", url)
    executor_config = latigo_config(directory, "executor", url)
    started: list[subprocess.Popen] = []
    try:
        latigo_ok(scheduler_config, "db", "upgrade")
        end = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
        latigo_ok(scheduler_config, "backfill", "--from", (end - timedelta(hours=1)).isoformat(), "--to",
                  end.isoformat(), "--no-progress")  # 12 tasks, so the executor has work from the start
        scheduler = latigo(scheduler_config, "scheduler")
        started.append(scheduler)
        executor = latigo(executor_config, "executor")
        started.append(executor)
        outputs = {"scheduler": _Output(scheduler), "executor": _Output(executor)}
        for output in outputs.values():
            output.start()
        ports = {name: metrics_port(outputs[name], process, name)
                 for name, process in (("scheduler", scheduler), ("executor", executor))}

        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": "latigo-scheduler", "static_configs": [{"targets": [f"127.0.0.1:{ports['scheduler']}"]}]},
                {"job_name": "latigo-executor", "static_configs": [{"targets": [f"127.0.0.1:{ports['executor']}"]}]},
            ],
        }
        config_file = directory / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        log = directory / "prometheus.log"
        with log.open("w") as sink:
            prometheus = subprocess.Popen(
                [prometheus_binary, f"--config.file={config_file}", f"--storage.tsdb.path={directory / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
                cwd=directory, stdout=sink, stderr=subprocess.STDOUT)
        started.append(prometheus)
        stack = Stack(directory, url, scheduler, executor, prometheus, outputs, ports, f"http://127.0.0.1:{port}", log)

        def ready() -> bool:
            assert prometheus.poll() is None, f"prometheus exited {prometheus.returncode}:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{stack.url}/-/ready", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for("prometheus ready", ready, timeout=60)
        yield stack
    finally:
        for process in reversed(started):
            stop(process)
        drop_pg_database(url)


def value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


@pytest.mark.slow
def test_prometheus_scrapes_the_scheduler_and_the_executor(stack):
    def series(expr: str) -> list[dict[str, Any]]:
        return stack.query(expr)

    try:
        up = wait_for("both targets up", lambda: len(series("up == 1")) == 2 and series("up"))
        assert {s["metric"]["job"]: value(s) for s in up} == {"latigo-scheduler": 1.0, "latigo-executor": 1.0}

        done = wait_for("latigo_tasks_done_total > 0 from the executor",
                        lambda: series('latigo_tasks_done_total{job="latigo-executor"} > 0'))
        assert len(done) == 1 and done[0]["metric"]["instance"] == f"127.0.0.1:{stack.ports['executor']}"

        last = wait_for("latigo_last_schedule_time_seconds > 0",
                        lambda: series("latigo_last_schedule_time_seconds > 0"))
        assert [s["metric"]["job"] for s in last] == ["latigo-scheduler"]  # the scheduler's alone
        assert abs(value(last[0]) - time.time()) < 600
        everywhere = [s["metric"] for s in series("latigo_last_schedule_time_seconds")]
        assert everywhere == [last[0]["metric"]]  # no executor exports it, not even as 0

        wait_for("task durations observed",
                 lambda: series('latigo_task_duration_seconds_count{job="latigo-executor"} > 0'))
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.diagnostics()}") from None


@pytest.mark.slow
def test_the_executor_exports_the_backlog_it_counts_in_the_queue(stack):
    """latigo_queue_backlog is the number of tasks waiting in the queue: the tasks this test enqueues while
    it holds their queue rows locked (a claim skips locked rows, the executor's count does not), then none
    once the executor has done them."""
    engine = create_engine_for(DatabaseSettings(url=stack.database))
    lifecycle = TaskLifecycle(engine)
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    tasks = [Task(model, TimeRange(start + i * timedelta(minutes=30), start + (i + 1) * timedelta(minutes=30)))
             for model in ("pump-a", "pump-b") for i in range(3)]
    ids = [task.task_id for task in tasks]
    mine = TASK_QUEUE.c.task_id.in_(ids)

    def backlog(expected: int) -> list[dict[str, Any]]:
        found = stack.query('latigo_queue_backlog{job="latigo-executor"}')
        return found if len(found) == 1 and value(found[0]) == expected else []

    def states() -> list[str]:
        with engine.connect() as connection:
            return list(connection.execute(sa.select(TaskRecord.state).where(TaskRecord.task_id.in_(ids))).scalars())

    held = engine.connect()
    try:
        with lifecycle.transaction() as connection:
            # Due in a few seconds: the executor cannot claim them before this test has locked them.
            DatabaseTaskQueue(engine, lifecycle=lifecycle).put_many(lifecycle.enqueue(connection, tasks).to_send,
                                                                    connection)
            connection.execute(sa.update(TASK_QUEUE).where(mine).values(
                available_at=sa.func.now() + sa.text("interval '3 seconds'")))
        locked = held.execute(sa.select(TASK_QUEUE.c.task_id).where(mine, TASK_QUEUE.c.deliveries == 0)
                              .with_for_update()).scalars().all()
        assert sorted(locked) == sorted(ids), "the executor claimed some before they were locked"
        with engine.connect() as connection:  # what the ledger says of them meanwhile
            assert connection.execute(sa.select(sa.func.count()).select_from(TaskRecord).where(
                TaskRecord.task_id.in_(locked), TaskRecord.state == "queued")).scalar_one() == len(locked)
        wait_for(f"latigo_queue_backlog == {len(locked)}: the tasks enqueued and not yet done",
                 lambda: backlog(len(locked)))
    finally:
        held.rollback()
        held.close()
    try:
        wait_for("the held tasks done", lambda: states() == ["done"] * len(tasks))
        wait_for("latigo_queue_backlog == 0 once they are done", lambda: backlog(0))
    finally:
        engine.dispose()


@pytest.mark.slow
def test_prometheus_loads_every_rule_group_with_health_ok(stack):
    expected = {group["name"]: len(group["rules"]) for group in rule_groups()}

    def evaluated() -> dict[str, list[dict[str, Any]]] | None:
        groups = {group["name"]: group["rules"] for group in stack.api("rules")["data"]["groups"]}
        healthy = all(rule["health"] == "ok" for rules in groups.values() for rule in rules)
        return groups if set(groups) == set(expected) and healthy else None

    groups = wait_for("every rule evaluated with health ok", evaluated, timeout=60)
    assert {name: len(rules) for name, rules in groups.items()} == expected
    assert {rule["name"] for rules in groups.values() for rule in rules} == {r["alert"] for r in alert_rules()}


@pytest.mark.slow
def test_every_dashboard_promql_parses_and_the_pipeline_panels_have_data(stack):
    wait_for("a few scrapes of both targets", lambda: stack.query("count_over_time(up[1m]) >= 5"), timeout=60)
    problems = []
    for title, expr in promql_targets():
        answer = stack.api("query", query=for_prometheus(expr))
        if answer["status"] != "success":
            problems.append(f"{title}: {expr}\n  {answer.get('errorType')}: {answer.get('error')}")
    assert not problems, "\n".join(problems)
    # Panels over series a healthy database-queue pipeline has from its first minute return data too (this
    # one's models are an in-process plug-in: it calls no peer, so it has no latigo_peer_up series).
    for title, expr in promql_targets():
        if any(name in expr for name in ("latigo_tasks_failed", "latigo_checkpoint_lag", "latigo_sink_failures",
                                         "latigo_peer_up")):
            continue
        wait_for(f"data for panel {title!r}: {expr}", lambda e=expr: stack.query(for_prometheus(e)), timeout=60)


@pytest.mark.slow
def test_a_healthy_pipeline_raises_no_alert(stack):
    def quiet() -> bool:
        rules = [rule for group in stack.api("rules")["data"]["groups"] for rule in group["rules"]]
        return bool(rules) and all(rule["health"] == "ok" and rule["state"] == "inactive" for rule in rules)

    try:
        wait_for("every alert inactive", quiet, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {stack.api('alerts')['data']}") from None


@pytest.mark.slow
def test_a_stopped_executor_is_reported_down(stack):
    stop(stack.executor)
    instance = f"127.0.0.1:{stack.ports['executor']}"
    assert stack.executor.returncode == 0, stack.outputs["executor"].text()

    def pending() -> set[str]:
        alerts = stack.api("alerts")["data"]["alerts"]
        names = {alert["labels"]["alertname"] for alert in alerts if alert["state"] == "pending"}
        down = [a for a in alerts if a["labels"]["alertname"] == "LatigoExecutorDown"]
        if down:
            assert down[0]["labels"]["instance"] == instance
        return names if {"LatigoExecutorDown", "LatigoNoExecutorUp"} <= names else set()

    names = wait_for("LatigoExecutorDown and LatigoNoExecutorUp pending", pending, timeout=60)
    assert not {"LatigoSchedulerDown", "LatigoSchedulerMissing"} & names
    assert stack.query('up{job="latigo-scheduler"}')[0]["value"][1] == "1"
