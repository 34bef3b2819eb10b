"""The local Time Series API server judged by the official client (`omnia-timeseries` 2.0.0): every endpoint
the server offers answers the client's own calls as the real API does. A disagreement is the server's bug."""

from __future__ import annotations

import pytest
from omnia_timeseries.models import TimeseriesRequestFailedException

from tests.support.data_api_server import DataApiServer, Series
from tests.support.omnia_client import official_client

pytestmark = pytest.mark.integration

FACILITY = "JSV"
NAME = "1903.R-29TT3018.MA_Y"


@pytest.fixture
def server():
    with DataApiServer(client_id="latigo-test", client_secret="secret") as api:
        yield api


@pytest.fixture
def client(server):
    return official_client(server)


def series_request(name: str = NAME, facility: str = FACILITY, **extra) -> dict:
    return {"name": name, "description": f"Gordo model-output - {name}", "step": True, "unit": "degC",
            "facility": facility, "externalId": name, **extra}


def points(*values: float, start_minute: int = 0, status: int = 192) -> list[dict]:
    return [{"time": f"2024-03-01T00:{start_minute + i:02d}:00Z", "value": v, "status": status}
            for i, v in enumerate(values)]


def stored_times(answer: dict) -> list[str]:
    return [p["time"] for p in answer["data"]["items"][0]["datapoints"]]


def failure(call, *args, **kwargs) -> TimeseriesRequestFailedException:
    with pytest.raises(TimeseriesRequestFailedException) as caught:
        call(*args, **kwargs)
    return caught.value


# ---------------------------------------------------------------- series: create, get-or-add, find, change


def test_create_answers_the_new_series_and_a_second_create_is_a_409_with_a_message(server, client):
    created = client.post_timeseries(series_request())["data"]["items"][0]
    assert {k: created[k] for k in ("name", "description", "step", "unit", "facility", "externalId")} == {
        "name": NAME, "description": f"Gordo model-output - {NAME}", "step": True, "unit": "degC",
        "facility": FACILITY, "externalId": NAME}
    assert client.get_timeseries_by_id(created["id"])["data"]["items"][0]["id"] == created["id"]
    server.clear_calls()
    error = failure(client.post_timeseries, series_request())
    assert error.status_code == 409 and NAME in error.message
    assert len(server.calls("POST", server.url[len(server.origin):])) == 3, "the client retries a 409 twice"
    assert len(client.get_timeseries(name=NAME, facility=FACILITY)["data"]["items"]) == 1


@pytest.mark.parametrize("body, word", [
    ({"name": NAME, "step": True}, "facility"),
    ({"name": NAME, "facility": ""}, "facility"),
    ({"name": "", "facility": FACILITY}, "name"),
    ({"name": NAME, "facility": FACILITY, "step": "yes"}, "step"),
])
def test_an_invalid_series_is_refused_with_a_message_naming_the_field(client, body, word):
    error = failure(client.post_timeseries, body)
    assert error.status_code == 400 and word in error.message


def test_get_or_add_returns_existing_series_unchanged_and_creates_the_others_once(server, client):
    existing = client.post_timeseries(series_request())["data"]["items"][0]
    answer = client.get_or_add_timeseries([series_request(), series_request("1903.R-29PT3019.MA_Y")])
    items = answer["data"]["items"]
    assert [item["name"] for item in items] == [NAME, "1903.R-29PT3019.MA_Y"]
    assert items[0]["id"] == existing["id"]
    again = client.get_or_add_timeseries([series_request("1903.R-29PT3019.MA_Y")])["data"]["items"]
    assert again[0]["id"] == items[1]["id"]
    assert server.created == [NAME, "1903.R-29PT3019.MA_Y"]
    error = failure(client.get_or_add_timeseries, [series_request(facility="")])
    assert error.status_code == 400 and "facility" in error.message


def test_search_by_name_and_facility_exact_and_with_wildcards(server, client):
    for name, facility in ((NAME, FACILITY), (NAME, "OTHER"), (NAME + "-old", FACILITY)):
        server.add(Series(name=name, facility=facility))
    exact = client.search_timeseries(name=NAME, facility=FACILITY)["data"]["items"]
    assert [(s["name"], s["facility"]) for s in exact] == [(NAME, FACILITY)]
    assert {s["facility"] for s in client.search_timeseries(name=NAME)["data"]["items"]} == {FACILITY, "OTHER"}
    wildcard = client.search_timeseries(name="1903.R-29TT*", facility=FACILITY)["data"]["items"]
    assert sorted(s["name"] for s in wildcard) == [NAME, NAME + "-old"]
    listed = client.get_timeseries(name=NAME, facility=FACILITY)["data"]["items"]
    assert [(s["name"], s["facility"]) for s in listed] == [(NAME, FACILITY)]


def test_patch_put_and_delete_series(server, client):
    created = client.post_timeseries(series_request())["data"]["items"][0]
    patched = client.patch_timeseries(created["id"], {"unit": "bar"})["data"]["items"][0]
    assert (patched["unit"], patched["description"]) == ("bar", f"Gordo model-output - {NAME}")
    put = client.put_timeseries(created["id"], {"name": NAME, "facility": FACILITY, "step": False})["data"]["items"][0]
    assert (put["unit"], put["step"], put["description"]) == ("", False, "")
    client.delete_timeseries_by_id(created["id"])
    assert failure(client.get_timeseries_by_id, created["id"]).status_code == 404


# ---------------------------------------------------------------- datapoints: write, read, first/latest


def test_written_points_read_back_with_milliseconds_and_their_status(server, client):
    series = client.post_timeseries(series_request())["data"]["items"][0]
    client.write_data(series["id"], {"datapoints": points(1.0, 2.0) + points(3.0, start_minute=2, status=0)})
    answer = client.get_datapoints(series["id"], startTime="2024-03-01T00:00:00Z", endTime="2024-03-01T01:00:00Z")
    assert answer["data"]["items"][0]["datapoints"] == [
        {"time": "2024-03-01T00:00:00.000Z", "value": 1.0, "status": 192},
        {"time": "2024-03-01T00:01:00.000Z", "value": 2.0, "status": 192},
        {"time": "2024-03-01T00:02:00.000Z", "value": 3.0, "status": 0}]
    good = client.get_datapoints(series["id"], status=[192])
    assert stored_times(good) == ["2024-03-01T00:00:00.000Z", "2024-03-01T00:01:00.000Z"]
    error = failure(client.write_data, series["id"], {"datapoints": [{"time": "2024-03-01T00:05:00Z", "value": 1}]})
    assert error.status_code == 400 and "status" in error.message


def test_include_outside_points_as_the_client_sends_it(server, client):
    series = client.post_timeseries(series_request())["data"]["items"][0]
    client.write_data(series["id"], {"datapoints": points(0, 1, 2, 3, 4)})
    window = dict(startTime="2024-03-01T00:01:30Z", endTime="2024-03-01T00:02:30Z")
    assert stored_times(client.get_datapoints(series["id"], **window)) == ["2024-03-01T00:02:00.000Z"]
    assert stored_times(client.get_datapoints(series["id"], includeOutsidePoints=True, **window)) == [
        "2024-03-01T00:01:00.000Z", "2024-03-01T00:02:00.000Z", "2024-03-01T00:03:00.000Z"]
    assert stored_times(client.get_datapoints(series["id"], includeOutsidePoints=False, **window)) == [
        "2024-03-01T00:02:00.000Z"]
    multi = client.get_multi_datapoints([{"id": series["id"], "includeOutsidePoints": True, **window}])
    assert stored_times(multi) == ["2024-03-01T00:01:00.000Z", "2024-03-01T00:02:00.000Z",
                                   "2024-03-01T00:03:00.000Z"]


def test_write_multiple_then_multi_read_with_status_filters_and_paging(client):
    ids = [client.post_timeseries(series_request(f"T-{i}.PV"))["data"]["items"][0]["id"] for i in range(3)]
    client.write_multiple({"items": [{"id": series_id, "datapoints": points(*range(5)) + points(9, start_minute=5,
                                                                                                 status=0)}
                                     for series_id in ids]})
    request = [{"id": series_id, "startTime": "2024-03-01T00:00:00Z", "endTime": "2024-03-01T01:00:00Z",
                "limit": 2, "statusFilter": [192], "includeOutsidePoints": False} for series_id in ids]
    values: dict[str, list[float]] = {series_id: [] for series_id in ids}
    pages = 0
    while request:
        answer = client.get_multi_datapoints(request)
        pages += 1
        following = []
        for item, asked in zip(answer["data"]["items"], request, strict=True):
            values[item["id"]] += [p["value"] for p in item["datapoints"]]
            if item.get("continuationToken"):
                following.append({**asked, "continuationToken": item["continuationToken"]})
        request = following
    assert pages == 3
    assert values == {series_id: [0, 1, 2, 3, 4] for series_id in ids}


def test_first_and_latest_of_one_and_of_many(client):
    ids = [client.post_timeseries(series_request(f"T-{i}.PV"))["data"]["items"][0]["id"] for i in range(2)]
    client.write_multiple({"items": [{"id": ids[0], "datapoints": points(1, 2, 3)},
                                     {"id": ids[1], "datapoints": points(7, 8, start_minute=10) +
                                      points(9, start_minute=12, status=0)}]})

    def only(answer: dict) -> list[tuple[str, float]]:
        return [(p["time"][14:16], p["value"]) for item in answer["data"]["items"] for p in item["datapoints"]]

    assert only(client.get_first_datapoint(ids[0])) == [("00", 1)]
    assert only(client.get_latest_datapoint(ids[0])) == [("02", 3)]
    assert only(client.get_latest_datapoint(ids[1])) == [("12", 9)]
    assert only(client.get_latest_datapoint(ids[1], status=[192])) == [("11", 8)]
    assert only(client.get_first_datapoint(ids[0], afterTime="2024-03-01T00:00:30Z")) == [("01", 2)]
    assert only(client.get_latest_datapoint(ids[0], beforeTime="2024-03-01T00:01:30Z")) == [("01", 2)]
    assert only(client.get_first_multi_datapoint([{"id": i} for i in ids])) == [("00", 1), ("10", 7)]
    assert only(client.get_latest_multi_datapoint([{"id": i} for i in ids])) == [("02", 3), ("12", 9)]


def test_read_by_name_and_facility(client):
    series = client.post_timeseries(series_request())["data"]["items"][0]
    client.write_data(series["id"], {"datapoints": points(5, 6)})
    answer = client.get_datapoints_by_name(NAME, FACILITY, startTime="2024-03-01T00:00:00Z",
                                           endTime="2024-03-01T00:00:30Z")
    assert answer["data"]["items"][0]["id"] == series["id"]
    assert [p["value"] for p in answer["data"]["items"][0]["datapoints"]] == [5]
    assert failure(client.get_datapoints_by_name, NAME, "OTHER").status_code == 404


def test_delete_points_in_a_range(client):
    series = client.post_timeseries(series_request())["data"]["items"][0]
    client.write_data(series["id"], {"datapoints": points(0, 1, 2, 3)})
    client.delete_data(series["id"], startTime="2024-03-01T00:01:00Z", endTime="2024-03-01T00:02:00Z")
    assert stored_times(client.get_datapoints(series["id"])) == ["2024-03-01T00:00:00.000Z",
                                                                 "2024-03-01T00:03:00.000Z"]


def test_aggregates_are_a_clear_error_not_raw_points(client):
    series = client.post_timeseries(series_request())["data"]["items"][0]
    client.write_data(series["id"], {"datapoints": points(0, 1)})
    error = failure(client.get_aggregates, series["id"], ["avg"], processingInterval="1m")
    assert error.status_code == 501 and "aggregate" in error.message
    error = failure(client.get_multi_datapoints, [{"id": series["id"], "aggregateFunctions": ["avg"],
                                                    "processingInterval": "1m"}])
    assert error.status_code == 501 and "aggregate" in error.message


def test_every_error_carries_a_message_the_client_reports(client):
    error = failure(client.get_timeseries_by_id, "no-such-id")
    assert error.status_code == 404 and "no-such-id" in error.message and error.trace_id
