"""latigo.prediction_metadata against the local Metadata API (strict about every field) and the local Data API:
one POST per (project, model, revision), recorded in the database (SQLite and PostgreSQL), again when the
revision or the series change, never holding a write, failures counted and retried; and the Gordo provider's
`discover: metadata_api`."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
import yaml

from latigo.config import load_config
from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.factory import Components
from latigo.models.gordo_projects import GordoProjects
from latigo.models.gordo_settings import GordoSettings
from latigo.observability import REGISTRY
from latigo.prediction_metadata import MetadataApiClient, MetadataApiSettings, MetadataPublisher
from latigo.sensors.data_api_sink import DataApiPredictionSink
from latigo.types import ModelRef, PredictionRow
from tests.integration.test_data_api_prevent_naming import INFO, MODEL, PLANT, TAGS, UNITS, make_frame
from tests.support.data_api_server import DataApiServer, Series
from tests.support.gordo_server import GordoServer, ModelSpec
from tests.support.metadata_api_server import MetadataApiServer
from tests.support.omnia_client import official_client
from tests.support.processes import latigo_ok

pytestmark = pytest.mark.integration

KEY = "prevent-key"


@pytest.fixture
def data_api():
    with DataApiServer([Series(name=tag, facility=PLANT, unit=UNITS[tag]) for tag in TAGS]) as api:
        yield api


@pytest.fixture
def prevent():
    with MetadataApiServer(projects=["ioc-1903", "ioc-2000"], subscription_key=KEY) as api:
        yield api


def settings(prevent: MetadataApiServer, **overrides) -> MetadataApiSettings:
    options = dict(base_url=prevent.url, subscription_key=KEY, max_retries=0, retry_interval=timedelta(0),
                   retry_base_delay=timedelta(milliseconds=1))
    options.update(overrides)
    return MetadataApiSettings(**options)


def make_sink(data_api, publisher, info=INFO) -> DataApiPredictionSink:
    return DataApiPredictionSink(
        DataApiPredictionSink.Settings(base_url=data_api.url, naming="prevent",
                                       retry_base_delay=timedelta(milliseconds=1)),
        sleep=lambda s: None, model_info=lambda ref: info, metadata=publisher)


def failures() -> float:
    return REGISTRY.get_sample_value("latigo_prediction_metadata_failures_total") or 0.0


def test_one_post_per_revision_with_every_field_and_recorded_for_every_executor(data_api, prevent, engine):
    publisher = MetadataPublisher(settings(prevent), engine)
    sink = make_sink(data_api, publisher)
    for buckets in (2, 3, 4):  # three windows of one model: told once
        sink.write(make_frame(buckets=buckets))
    assert publisher.flush()
    assert publisher.handed_over == 1, "a write of a model already told costs nothing (no database query either)"
    [body] = prevent.accepted()
    client = official_client(data_api)
    ids = {tag: client.search_timeseries(name=tag, facility=PLANT)["data"]["items"][0]["id"] for tag in TAGS}
    assert {k: body[k] for k in ("project_name", "model_name", "revision", "training_time_from",
                                 "training_time_to", "status", "labels")} == {
        "project_name": "ioc-1903", "model_name": MODEL, "revision": "1700000000000",
        "training_time_from": "2023-01-01T00:00:00+00:00", "training_time_to": "2023-06-01T00:00:00+00:00",
        "status": "not_defined", "labels": []}
    assert body["input_tags"] == [{"name": tag, "time_series_id": ids[tag]} for tag in TAGS]
    outputs = {tag["name"]: tag for tag in body["output_tags"]}
    assert len(outputs) == 2 * len(TAGS) + 2
    for name, tag in outputs.items():
        series = client.search_timeseries(name=name, facility=PLANT)["data"]["items"][0]
        assert tag["time_series_id"] == series["id"] and tag["description"] == series["description"]
    assert outputs[f"{TAGS[0]}|{MODEL}|model-output"]["type"] == "derived"
    assert outputs[f"{TAGS[0]}|{MODEL}|model-output"]["derived_from"] == TAGS[0]
    total = outputs[f"1903.INDICATOR|{MODEL}|total-anomaly-scaled"]
    assert (total["type"], total["derived_from"]) == ("aggregated", None)
    assert prevent.posts[0].headers["Ocp-Apim-Subscription-Key"] == KEY
    model_id = prevent.model_ids[("ioc-1903", MODEL, "1700000000000")]
    assert publisher.model_id(ModelRef("ioc-1903", MODEL), "1700000000000") == model_id
    publisher.close()

    restarted = MetadataPublisher(settings(prevent), engine)  # another executor, or this one restarted
    make_sink(data_api, restarted).write(make_frame(buckets=5))
    assert restarted.flush()
    assert len(prevent.posts) == 1, "the database says it was sent"
    restarted.close()


def test_told_again_when_the_revision_or_the_series_change(data_api, prevent, engine):
    publisher = MetadataPublisher(settings(prevent), engine)
    sink = make_sink(data_api, publisher)
    sink.write(make_frame())
    frame = make_frame()
    sink.write(replace(frame, revision="1800000000000"))
    publisher.flush()
    assert [b["revision"] for b in prevent.accepted()] == ["1700000000000", "1800000000000"]
    extra = frame.with_rows([*frame.rows, PredictionRow("anomaly-confidence", TAGS[0], frame.rows[0].ts, 0.5)])
    sink.write(extra)
    publisher.flush()
    third = prevent.accepted()[2]
    assert third["revision"] == "1700000000000"
    assert f"{TAGS[0]}|{MODEL}|anomaly-confidence" in {t["name"] for t in third["output_tags"]}
    assert len(third["output_tags"]) == 2 * len(TAGS) + 3, "the series written before are still there"
    publisher.close()


def test_a_failing_metadata_api_never_holds_a_write_and_is_counted_and_retried(data_api, prevent, engine):
    publisher = MetadataPublisher(settings(prevent), engine)
    sink = make_sink(data_api, publisher)
    prevent.open.clear()  # the Metadata API hangs: the write goes on regardless
    sink.write(make_frame())
    assert prevent.waiting.wait(30), "the POST was made"
    assert data_api.stored(f"{TAGS[0]}|{MODEL}|model-output", PLANT), "written while the Metadata API hangs"
    assert prevent.posts == []
    prevent.open.set()
    assert publisher.flush()
    assert [p.status for p in prevent.posts] == [201]
    publisher.close()

    publisher = MetadataPublisher(settings(prevent, retry_interval=timedelta(hours=1)), engine)
    sink = make_sink(data_api, publisher)
    sink.write(replace(make_frame(), revision="1800000000000"))
    publisher.flush()
    prevent.posts.clear()
    prevent.inject("POST", "/models", 503, times=1)
    before = failures()
    sink.write(replace(make_frame(), revision="1900000000000"))
    publisher.flush()
    assert failures() == before + 1
    assert "503" in publisher.failures[-1] and MODEL in publisher.failures[-1]
    assert data_api.stored(f"{TAGS[0]}|{MODEL}|model-output", PLANT), "the predictions are written all the same"
    sink.write(replace(make_frame(), revision="1900000000000"))
    publisher.flush()
    assert len(prevent.posts) == 1, "not before retry_interval"
    publisher._retry_at.clear()  # retry_interval over
    sink.write(replace(make_frame(), revision="1900000000000"))
    publisher.flush()
    assert [p.status for p in prevent.posts] == [503, 201]
    publisher.close()


def test_what_the_metadata_api_refuses_is_counted_with_its_message(data_api, prevent, engine):
    untrained = replace(INFO, extra={})
    publisher = MetadataPublisher(settings(prevent), engine)
    before = failures()
    make_sink(data_api, publisher, info=untrained).write(make_frame())
    publisher.flush()
    assert failures() == before + 1
    assert "no train_start_date" in publisher.failures[-1]
    assert prevent.posts == [], "refused before sending"
    prevent.subscription_key = "rotated"
    make_sink(data_api, publisher).write(make_frame())
    publisher.flush()
    assert "401" in publisher.failures[-1]
    publisher.close()


def test_the_metadata_api_server_checks_every_field(prevent):
    client = MetadataApiClient(settings(prevent))
    good = {"project_name": "p", "model_name": "m", "revision": "1", "training_time_from": "2023-01-01T00:00:00Z",
            "training_time_to": "2023-02-01T00:00:00Z", "input_tags": [{"name": "T", "time_series_id": "a"}],
            "output_tags": [{"name": "T|m|model-output", "time_series_id": "b", "type": "derived",
                             "description": "Gordo model-output - T", "derived_from": "T"}],
            "description": "d", "status": "not_defined", "labels": []}
    assert client.post_model(good) == client.post_model(good), "one model_id per (project, model, revision)"
    broken = [({**good, "project": "p"}, "unknown field"), ({k: v for k, v in good.items() if k != "revision"},
                                                              "missing field(s): revision"),
              ({**good, "training_time_to": "2022-01-01T00:00:00Z"}, "after training_time_from"),
              ({**good, "input_tags": []}, "input_tags"),
              ({**good, "output_tags": [{**good["output_tags"][0], "type": "other"}]}, "aggregated or derived"),
              ({**good, "output_tags": [{**good["output_tags"][0], "derived_from": None}]}, "derived_from")]
    for body, message in broken:
        with pytest.raises(PermanentError, match=re.escape(message)):
            client.post_model(body)
    assert client.projects() == ["ioc-1903", "ioc-2000"]
    client.close()


def test_prediction_metadata_is_a_configured_component(prevent, tmp_path):
    path = tmp_path / "latigo.yaml"
    path.write_text(yaml.safe_dump({"prediction_metadata": {"type": "metadata_api", "base_url": prevent.url,
                                                            "subscription_key": KEY}}))
    config = load_config(path, env={})
    assert isinstance(Components(config).prediction_metadata, MetadataPublisher)
    (tmp_path / "none.yaml").write_text("{}")
    assert Components(load_config(tmp_path / "none.yaml", env={})).prediction_metadata is None
    path.write_text(yaml.safe_dump({"database": {"url": f"sqlite:///{tmp_path / 'latigo.db'}"},
                                    "prediction_metadata": {"type": "metadata_api", "base_url": prevent.url,
                                                            "subscription_key": KEY}}))
    latigo_ok(path, "db", "upgrade")
    checked = latigo_ok(path, "check-config", "--connect")
    assert "ok   prediction_metadata: built (metadata_api)" in checked
    assert "ok   prediction_metadata: 2 projects listed" in checked
    assert "subscription_key: '***'" in checked and KEY not in checked, "the key is masked"
    path.write_text(yaml.safe_dump({"prediction_metadata": {"type": "metadata_api", "base_url": "ftp://x",
                                                            "subscription_key": KEY}}))
    with pytest.raises(ConfigError, match="base_url 'ftp://x' is not an http"):
        Components(load_config(path, env={})).prediction_metadata  # noqa: B018 - building it is the check
    path.write_text(yaml.safe_dump({"prediction_metadata": {"type": "metadata_api", "base_urll": prevent.url}}))
    with pytest.raises(ConfigError, match="base_urll"):
        load_config(path, env={})


# ---------------------------------------------------------------- discover: metadata_api


def test_gordo_projects_discovered_from_the_metadata_api(prevent):
    with GordoServer(project="ioc-1903", models=[ModelSpec("pump-1")]) as gordo:
        provider = GordoProjects(GordoSettings(base_url=gordo.origin, discover="metadata_api",
                                               metadata_api_url=prevent.url, metadata_api_subscription_key=KEY,
                                               max_retries=0))
        assert provider.projects() == ["ioc-1903", "ioc-2000"]
        assert provider.get_model_list() == [ModelRef("ioc-1903", "pump-1")]
        assert "ioc-2000" in provider.skipped, "a project Gordo does not serve is skipped, the others listed"
        prevent.projects.append("ioc-3000")
        assert provider.projects() == ["ioc-1903", "ioc-2000", "ioc-3000"], "asked again at every call"
        prevent.inject("GET", "/projects", 503, times=1)
        with pytest.raises(TransientError, match="503"):
            provider.projects()
        provider.close()
    with pytest.raises(ConfigError, match="metadata_api_url"):
        GordoProjects(GordoSettings(base_url="http://gordo", discover="metadata_api"))
