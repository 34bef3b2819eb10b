"""`latigo check-config`, run as the real command in a subprocess: the effective config as YAML, where every
value came from, secrets never shown, and a one-line error with status 2 for a bad config."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from latigo.config import effective_tree, load_config
from tests.support.config_components import THING

REPO = Path(__file__).resolve().parents[2]


def latigo(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LATIGO_")}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "latigo", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def secret() -> str:
    return "s3cr3t" + uuid.uuid4().hex[:12]


def test_check_config_prints_the_effective_config_with_sources_and_no_secret(tmp_path: Path) -> None:
    db_password, queue_password, access_key, sink_password = (secret() for _ in range(4))
    config_file = write(
        tmp_path / "prod.yaml",
        f"""
        database:
          url: postgresql://latigo:{db_password}@db.example.com/latigo
        task_queue:
          type: "{THING}"
          connection_string: Endpoint=sb://ns.example.net/;SharedAccessKeyName=send;SharedAccessKey={access_key}
        scheduler:
          interval: 1h
        predictions:
          sinks:
            - type: "{THING}"
              password: {sink_password}
        """,
    )
    result = latigo(
        "--config", str(config_file), "check-config", cwd=tmp_path,
        env={"LATIGO_TASK_QUEUE__PASSWORD": queue_password, "LATIGO_EXECUTOR__CONCURRENCY": "3"},
    )
    assert result.returncode == 0, result.stderr
    for hidden in (db_password, queue_password, access_key, sink_password):
        assert hidden not in result.stdout and hidden not in result.stderr

    lines = result.stdout.splitlines()
    assert f"  url: postgresql://latigo:***@db.example.com/latigo  # file {config_file}:2" in lines
    assert f"  connection_string: '***'  # file {config_file}:5" in lines
    assert "  password: '***'  # env LATIGO_TASK_QUEUE__PASSWORD" in lines
    assert f"  interval: 1h  # file {config_file}:7" in lines
    assert "  concurrency: 3  # env LATIGO_EXECUTOR__CONCURRENCY" in lines
    assert "  delay: 5m  # default" in lines

    printed = yaml.safe_load(result.stdout)
    assert printed["executor"]["concurrency"] == 3
    assert printed["scheduler"]["interval"] == "1h"
    assert printed["task_queue"]["type"] == THING
    assert printed["predictions"]["sinks"][0]["password"] == "***"
    assert set(printed) == {"database", "task_queue", "scheduler", "executor", "sensor_information", "sensor_data",
                            "model_information", "model_execution", "predictions", "retention", "alerts", "logging",
                            "metrics"}


@pytest.mark.slow
def test_the_printed_config_loads_back_as_the_same_config(tmp_path: Path) -> None:
    config_file = write(tmp_path / "c.yaml", "scheduler: {start_time: '12:30', interval: 90m}\nlogging: {level: debug}")
    result = latigo("check-config", "--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = write(tmp_path / "printed.yaml", result.stdout)
    again = load_config(printed, env={})
    assert effective_tree(again) == effective_tree(load_config(config_file, env={}))
    assert again.scheduler.start_time == "12:30"


@pytest.mark.slow
def test_the_file_comes_from_the_option_the_variable_or_the_working_directory(tmp_path: Path) -> None:
    write(tmp_path / "local_config.yaml", "executor: {concurrency: 4}\n")
    write(tmp_path / "other.yaml", "executor: {concurrency: 5}\n")
    write(tmp_path / "third.yaml", "executor: {concurrency: 6}\n")

    def concurrency(*args: str, env: dict[str, str] | None = None) -> int:
        result = latigo(*args, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        return yaml.safe_load(result.stdout)["executor"]["concurrency"]

    assert concurrency("check-config") == 4
    assert concurrency("check-config", env={"LATIGO_CONFIG_FILE": "other.yaml"}) == 5
    assert concurrency("check-config", "--config", "third.yaml", env={"LATIGO_CONFIG_FILE": "other.yaml"}) == 6
    assert concurrency("--config", "third.yaml", "check-config") == 6


def test_a_bad_config_is_one_line_on_stderr_with_status_2(tmp_path: Path) -> None:
    config_file = write(tmp_path / "bad.yaml", "scheduler:\n  intervall: 1h\n")
    result = latigo("check-config", "--config", str(config_file), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"latigo: config error: {config_file}:2: scheduler.intervall: unknown key (did you mean 'interval'?)\n"
    )


def test_broken_yaml_and_bad_environment_values_are_one_line_errors_too(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.yaml", "scheduler:\n  interval: 1h\n   delay: 5m\n")
    result = latigo("check-config", "--config", str(broken), cwd=tmp_path)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == f"latigo: config error: {broken}:3: broken YAML: mapping values are not allowed here\n"

    result = latigo("check-config", cwd=tmp_path, env={"LATIGO_SCHEDULER__DELAY": "5 minutes"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(
        "latigo: config error: scheduler.delay (env LATIGO_SCHEDULER__DELAY): bad duration '5 minutes'"
    )
    assert result.stderr.count("\n") == 1

    result = latigo("check-config", cwd=tmp_path, env={"LATIGO_TASK_QUEUE__TYPE": "rabbitmq"})
    assert result.returncode == 2
    assert result.stderr.startswith(
        "latigo: config error: task_queue.type (env LATIGO_TASK_QUEUE__TYPE): unknown type 'rabbitmq'; known types: "
    )


def test_a_secret_inside_an_error_message_is_masked(tmp_path: Path) -> None:
    key = secret()
    result = latigo(
        "check-config", cwd=tmp_path,
        env={"LATIGO_EXECUTOR__CONCURRENCY": f"Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey={key}"},
    )
    assert result.returncode == 2
    assert key not in result.stderr
    assert "SharedAccessKey=***" in result.stderr
