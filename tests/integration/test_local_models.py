"""Local models: train over synthetic history, run, report status, and fail clearly."""

from datetime import datetime, timedelta, timezone

import pytest

from latigo.errors import NoDataError, PermanentError, UnknownModelError
from latigo.models.local import LocalModels
from latigo.sensors.synthetic import SyntheticSensors
from latigo.types import DEFAULT_PROJECT, ModelRef

pytestmark = pytest.mark.integration
UTC = timezone.utc
TRAIN = {"train_start_date": "2026-01-01T00:00:00+00:00", "train_end_date": "2026-01-04T00:00:00+00:00"}
TAGS = [f"sensor-g1-{i}" for i in range(5)]


def Ref(name: str) -> ModelRef:  # noqa: N802 - reads as the type it builds
    return ModelRef(DEFAULT_PROJECT, name)


@pytest.fixture
def models(engine):
    return LocalModels(engine, SyntheticSensors())


def machine(name="pump-1", tags=TAGS, **extra):
    return {"name": name, "dataset": {"tags": tags, "resolution": "10T", **TRAIN, **extra}}


def test_registered_model_becomes_ready_and_is_listed(models):
    models.register_model(machine())
    assert models.get_model_status(Ref("pump-1")).state == "ready"
    assert models.get_model_list() == [Ref("pump-1")] and models.model_exists(Ref("pump-1"))
    info = models.get_model_info(Ref("pump-1"))
    assert info.tags == tuple(TAGS) and info.resolution == timedelta(minutes=10)


def test_execution_returns_gordo_output_groups_for_the_window_timestamps(models):
    models.register_model(machine())
    start = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
    frame = models.execute_model(Ref("pump-1"), start, start + timedelta(minutes=30))
    assert {r.output for r in frame.rows} == {"model-input", "model-output", "tag-anomaly-scaled",
                                              "total-anomaly-scaled", "anomaly-confidence",
                                              "total-anomaly-confidence"}
    assert sorted({r.ts for r in frame.rows}) == [start + timedelta(minutes=m) for m in (0, 10, 20)]
    assert {r.tag for r in frame.rows if r.output == "model-output"} == set(TAGS)


def test_unknown_and_unready_models_give_clear_errors(models, engine):
    with pytest.raises(UnknownModelError, match="no model 'ghost'"):
        models.execute_model(Ref("ghost"), datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 5, 1, tzinfo=UTC))
    with pytest.raises(PermanentError, match="unknown sensors sensor-g9-9"):
        models.register_model(machine("bad-tags", tags=["sensor-g1-0", "sensor-g9-9"]))
    status = models.get_model_status(Ref("bad-tags"))
    assert status.state == "failed" and "sensor-g9-9" in status.reason
    with pytest.raises(PermanentError, match="not ready \\(status failed"):
        models.execute_model(Ref("bad-tags"), datetime(2026, 1, 5, tzinfo=UTC), datetime(2026, 1, 5, 1, tzinfo=UTC))
    assert models.get_model_list() == []


def test_too_little_history_fails_training_with_the_reason(models):
    short = machine("short", train_end_date="2026-01-01T02:00:00+00:00")
    with pytest.raises(NoDataError, match="only 12 complete training rows"):
        models.register_model(short)


@pytest.mark.parametrize("bad,message", [
    ({"name": "Bad_Name"}, "lowercase letters"),
    ({"dataset": {"tags": [], **TRAIN}}, "tags: a non-empty list"),
    ({"dataset": {"tags": TAGS, "train_start_date": "2026-01-01T00:00:00"}}, "has no timezone"),
    ({"dataset": {"tags": TAGS, "train_start_date": "2026-01-01T00:00:00Z"}}, "missing train_end_date"),
])
def test_invalid_machines_are_refused_naming_the_field(models, bad, message):
    with pytest.raises(PermanentError, match=message):
        models.register_model({**machine(), **bad})


def test_unregister_removes_the_model(models):
    models.register_model(machine())
    models.unregister_model(Ref("pump-1"))
    assert models.get_model_status(Ref("pump-1")).state == "unknown"
    with pytest.raises(UnknownModelError):
        models.unregister_model(Ref("pump-1"))
