"""The operator's commands: backfill with a count first, task recovery, models' lifecycle, JSON listings,
help and --config anywhere. Each through the real `latigo` command against a real database."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sqlalchemy as sa
import yaml

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import QueuedTask, TaskRecord
from tests.support.processes import REPO, child_env, latigo, write_config

pytestmark = pytest.mark.integration
PROVIDER = "tests.support.providers:StaticModels"


@pytest.fixture
def config(tmp_path):
    path = write_config(
        tmp_path / "latigo.yaml",
        database={"url": f"sqlite:///{tmp_path / 'latigo.db'}"},
        model_information={"type": PROVIDER, "models": ["pump-1", "pump-2"]},
        model_execution={"type": PROVIDER, "models": ["pump-1", "pump-2"]},
        scheduler={"backfill_confirm_above": 100},
        metrics={"enabled": False},
    )
    assert run(path, "db", "upgrade")[0] == 0
    return path


def run(config, *args):
    process = latigo(config, *args)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def counts(config):
    url = yaml.safe_load(config.read_text())["database"]["url"]
    engine = create_engine_for(DatabaseSettings(url=url))
    with engine.connect() as c:
        states = dict(c.execute(sa.select(TaskRecord.state, sa.func.count()).group_by(TaskRecord.state)).all())
        queued = c.execute(sa.select(sa.func.count()).select_from(QueuedTask)).scalar()
    engine.dispose()
    return states, queued


def test_a_dry_run_counts_and_enqueues_nothing(config):
    code, output = run(config, "backfill", "--from", "2026-01-01T00:00Z", "--to", "2026-01-02T00:00Z", "--dry-run")
    assert code == 0
    assert output.strip() == ("would enqueue 94 tasks: 2 models x 47 windows from 2026-01-01T00:25:00+00:00 to "
                              "2026-01-01T23:55:00+00:00 (windows already done are skipped; --rerun computes them "
                              "again)")
    assert counts(config) == ({}, 0)


def test_a_large_backfill_needs_yes_and_then_shows_a_bar_with_its_total(config):
    args = ["backfill", "--from", "2026-01-01T00:00Z", "--to", "2026-01-03T00:00Z"]
    code, output = run(config, *args)
    assert code == 2 and counts(config) == ({}, 0)
    assert "backfill would enqueue 190 tasks" in output and "add --yes to go ahead" in output
    code, output = run(config, *args, "--yes")
    assert code == 0, output
    assert "backfill: 100%" in output and "190/190" in output
    assert counts(config) == ({"queued": 190}, 190)


def test_tasks_cancel_then_retry_and_rerun(config):
    run(config, "backfill", "--from", "2026-01-01T00:00Z", "--to", "2026-01-01T02:00Z", "--no-progress")
    code, output = run(config, "tasks", "cancel", "--model", "pump-2")
    assert (code, output.strip()) == (0, "3 queued tasks cancelled")  # windows [00:25, 00:55) ... [01:25, 01:55)
    assert counts(config) == ({"queued": 3, "cancelled": 3}, 3)
    assert run(config, "executor", "--exit-when-idle", "1")[0] == 0
    assert counts(config) == ({"done": 3, "cancelled": 3}, 0)
    code, output = run(config, "tasks", "retry", "--state", "cancelled")
    assert (code, output.strip()) == (0, "3 tasks back on the queue")
    code, output = run(config, "backfill", "--from", "2026-01-01T00:00Z", "--to", "2026-01-01T02:00Z", "--rerun",
                       "--no-progress", "--model", "pump-1")
    assert code == 0 and output.startswith("enqueued 3 tasks (to run again)")
    assert run(config, "executor", "--exit-when-idle", "1")[0] == 0
    code, output = run(config, "tasks", "list", "--json", "--model", "pump-1")
    rows = json.loads(output)
    assert len(rows) == 3 and {(row["state"], row["runs"]) for row in rows} == {("done", 2)}
    assert counts(config) == ({"done": 6}, 0)


def test_models_and_sensors_in_json_and_a_models_lifecycle(config):
    assert json.loads(run(config, "models", "--json")[1]) == [{"project": "default", "name": "pump-1"},
                                                              {"project": "default", "name": "pump-2"}]
    machine = config.parent / "pump-3.yaml"
    machine.write_text("name: pump-3\ndataset: {tags: [a, b]}\n")
    code, output = run(config, "models", "register", str(machine))
    assert (code, output.strip()) == (0, "model pump-3 registered")
    code, output = run(config, "models", "status", "pump-1", "--json")
    assert json.loads(output)["state"] == "ready"
    code, output = run(config, "models", "unregister", "pump-2")
    assert (code, output.strip()) == (0, "model pump-2 unregistered")
    code, output = run(config, "models", "register", str(config.parent / "missing.yaml"))
    assert code == 2 and "cannot read" in output and "missing.yaml" in output


def test_latigo_alone_prints_help_and_config_is_accepted_after_the_command(config):
    plain = subprocess.run([sys.executable, "-m", "latigo"], capture_output=True, text=True, cwd=REPO,
                           env=child_env())
    assert plain.returncode == 0 and plain.stdout.startswith("usage: latigo") and "backfill" in plain.stdout
    after = subprocess.run([sys.executable, "-m", "latigo", "status", "--config", str(config)], capture_output=True,
                           text=True, cwd=REPO, env=child_env())
    assert after.returncode == 0 and after.stdout.startswith("tasks:"), after.stderr
