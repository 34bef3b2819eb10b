"""The service commands' edges: schema checks, argument errors, one-shot scheduling, listings."""

import subprocess

import pytest

from tests.support.processes import latigo, latigo_ok, write_config

pytestmark = pytest.mark.integration
PROVIDER = "tests.support.providers:StaticModels"


@pytest.fixture
def config(tmp_path):
    return write_config(
        tmp_path / "latigo.yaml",
        database={"url": f"sqlite:///{tmp_path / 'latigo.db'}"},
        model_information={"type": PROVIDER, "models": ["pump-1", "pump-2"]},
        model_execution={"type": PROVIDER, "models": ["pump-1", "pump-2"]},
        metrics={"enabled": False},
    )


def run(config, *args):
    process = latigo(config, *args)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


@pytest.mark.parametrize("command", [["scheduler", "--once"], ["executor", "--exit-when-idle", "1"],
                                     ["backfill", "--from", "2026-01-01T00:00Z", "--to", "2026-01-01T01:00Z"]])
def test_services_refuse_an_unmigrated_database_naming_the_fix(config, command):
    code, output = run(config, *command)
    assert code == 3
    assert "run `latigo db upgrade` first" in output


def test_scheduler_once_enqueues_the_current_window_of_every_model(config):
    latigo_ok(config, "db", "upgrade")
    latigo_ok(config, "scheduler", "--once")
    assert "queued 2" in latigo_ok(config, "status")


@pytest.mark.parametrize("args,message", [
    (["--from", "2026-01-02T00:00Z", "--to", "2026-01-01T00:00Z"], "is not after --from"),
    (["--from", "2026-01-01T00:00", "--to", "2026-01-02T00:00Z"], "has no timezone"),
    (["--from", "2026-01-01T00:00Z", "--to", "2026-01-02T00:00Z", "--model", "ghost"], "unknown model(s): ghost"),
])
def test_backfill_arguments_are_checked_with_clear_messages(config, args, message):
    latigo_ok(config, "db", "upgrade")
    code, output = run(config, "backfill", *args)
    assert code == 2
    assert message in output


def test_models_and_sensors_list_what_the_providers_see(tmp_path):
    config = write_config(tmp_path / "c.yaml", database={"url": f"sqlite:///{tmp_path / 'l.db'}"},
                          sensor_data={"type": "synthetic", "groups": 2, "sensors_per_group": 2},
                          model_information={"type": PROVIDER, "models": ["pump-1"]})
    sensors = latigo_ok(config, "sensors", stderr=subprocess.DEVNULL).split()
    assert sensors == ["sensor-g0-0", "sensor-g0-1", "sensor-g1-0", "sensor-g1-1"]
    assert latigo_ok(config, "models", stderr=subprocess.DEVNULL).split() == ["pump-1"]
    code, output = run(config, "models", "--check")
    assert code == 2 and "has no server to check" in output
