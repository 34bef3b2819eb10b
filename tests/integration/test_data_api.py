"""latigo.sensors.data_api against a local Time Series API server (real wire shapes, paging, auth, faults).

Expected values are computed here from the raw points the server holds, one bucket at a time.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
import requests

from latigo.errors import ConfigError, PermanentError, TransientError
from latigo.sensors.data_api import DataApiSensors
from tests.support.data_api_server import DataApiServer, Series, rfc3339

pytestmark = pytest.mark.integration

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)
FACILITY = "JSV"
NAMES = [f"JSV-{i:03d}.PV" for i in range(150)]
SECRET = "client-secret-value"
SUBSCRIPTION = "subscription-key-value"
SCOPE = "32f2a909-8a98-4eb8-b22d-1208d9350cb0/.default"


RAW: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
"""Series id -> (ms since the epoch, values, good) as generated, for computing expectations."""


def make_series(name: str, level: float, rng: np.random.Generator, facility: str = FACILITY) -> Series:
    """One point a minute for a day; odd series at a random second inside the minute. About 5% of the
    points are Bad (status 0) with absurd values that must never reach a mean; 5% Questionable (64)."""
    count = 24 * 60
    jitter = rng.integers(0, 60_000, count) if level % 2 == 1 else np.zeros(count, dtype=np.int64)
    times = int(T0.timestamp() * 1000) + np.arange(count, dtype=np.int64) * 60_000 + jitter
    statuses = rng.choice([192, 64, 0], p=[0.9, 0.05, 0.05], size=count)
    values = np.where(statuses == 0, 1e9, rng.normal(level, 1.0, count))
    points = [
        {"time": rfc3339(datetime.fromtimestamp(ms / 1000, timezone.utc)), "value": value, "status": status}
        for ms, value, status in zip(times.tolist(), values.tolist(), statuses.tolist(), strict=True)
    ]
    series = Series(name=name, facility=facility, points=points)
    RAW[series.id] = (times, values, statuses != 0)
    return series


@pytest.fixture(scope="module")
def all_series() -> list[Series]:
    rng = np.random.default_rng(11)
    series = [make_series(name, float(i), rng) for i, name in enumerate(NAMES)]
    series.append(make_series("SHARED-NAME", 500.0, rng, facility=FACILITY))
    series.append(make_series("SHARED-NAME", 900.0, rng, facility="OTHER"))
    series.append(make_series("OTHER-ONLY", 1.0, rng, facility="OTHER"))
    return series


@pytest.fixture
def server(all_series):
    api = DataApiServer(all_series, page_size=500, client_id="latigo-test", client_secret=SECRET,
                        subscription_key=SUBSCRIPTION)
    with api:
        yield api


class Sleeps(list):
    """Records the delays the client asks for instead of waiting them out."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_provider(server: DataApiServer, sleeps: Sleeps | None = None, **overrides) -> DataApiSensors:
    options = dict(base_url=server.url, facility=FACILITY, tenant=server.tenant, authority_host=server.authority,
                   client_id="latigo-test", client_secret=SECRET, scope=SCOPE, subscription_key=SUBSCRIPTION,
                   retry_base_delay=timedelta(milliseconds=1), max_retries=3)
    options.update(overrides)
    return DataApiSensors(DataApiSensors.Settings(**options), sleep=sleeps if sleeps is not None else Sleeps())


def expected_means(series: Series, start: datetime, end: datetime, resolution: timedelta):
    """Bucket starts (multiples of the resolution since the epoch) and means of the non-Bad points in
    [start, end), computed one bucket at a time."""
    times, values, good = RAW[series.id]
    step = int(resolution.total_seconds() * 1000)
    start_ms, end_ms = int(start.timestamp() * 1000), int(end.timestamp() * 1000)
    starts, means = [], []
    for bucket in range(start_ms - start_ms % step, end_ms, step):
        inside = good & (times >= max(bucket, start_ms)) & (times < min(bucket + step, end_ms))
        starts.append(bucket)
        means.append(values[inside].mean() if inside.any() else math.nan)
    return pd.to_datetime(starts, unit="ms", utc=True), np.array(means)


def assert_matches(frame, by_name: dict[str, Series], names, start, end, resolution) -> None:
    assert list(frame.data.columns) == list(names)
    for name in names:
        index, means = expected_means(by_name[name], start, end, resolution)
        assert frame.data.index.equals(index)
        np.testing.assert_allclose(frame.data[name].to_numpy(), means, rtol=1e-12, err_msg=name)


def query_calls(server: DataApiServer):
    return server.calls("POST", "/query/data")


@pytest.mark.parametrize(
    "start, span",
    [(T0 + timedelta(hours=2, minutes=3, seconds=30), timedelta(minutes=30)), (T0, timedelta(days=1))],
)
def test_twenty_sensor_model_gets_bucket_means_of_every_page(server, all_series, start, span):
    by_name = {s.name: s for s in all_series if s.facility == FACILITY}
    model = [NAMES[i] for i in (7, 3, 120, 44, 0, 91, 18, 149, 60, 33, 5, 76, 101, 12, 88, 27, 64, 139, 50, 9)]
    provider = make_provider(server)

    frame = provider.get_data_for_range(start, start + span, model, timedelta(minutes=10))

    assert frame.missing == ()
    assert_matches(frame, by_name, model, start, start + span, timedelta(minutes=10))
    calls = query_calls(server)
    assert all(len(call.body) <= 100 for call in calls)
    if span == timedelta(days=1):  # 1440 points a series in pages of 500: tokens were followed
        assert len(calls) == 3
        assert all("continuationToken" in item for call in calls[1:] for item in call.body)
    first = calls[0].body[0]
    assert first["startTime"] == rfc3339(start) and first["endTime"] == rfc3339(start + span)
    assert first["includeOutsidePoints"] is False


def test_a_point_exactly_at_the_end_is_not_in_the_range(server, all_series):
    """The server's endTime is inclusive; the frame is half-open all the same."""
    series = next(s for s in all_series if s.name == NAMES[0])  # points exactly on whole minutes
    end = T0 + timedelta(minutes=20)
    at_end = next(p for p in series.points if p["time"] == rfc3339(end))
    assert at_end  # the server will send it
    frame = make_provider(server).get_data_for_range(T0, end, [NAMES[0]], timedelta(minutes=10))
    assert len(frame.data) == 2
    assert_matches(frame, {NAMES[0]: series}, [NAMES[0]], T0, end, timedelta(minutes=10))


def test_101_ids_take_two_requests_and_the_server_refuses_more_than_100(server, all_series):
    by_name = {s.name: s for s in all_series if s.facility == FACILITY}
    names = NAMES[:101]
    start, end = T0 + timedelta(hours=1), T0 + timedelta(hours=2)
    frame = make_provider(server).get_data_for_range(start, end, names, timedelta(minutes=15))
    assert_matches(frame, by_name, names, start, end, timedelta(minutes=15))
    assert [len(call.body) for call in query_calls(server)] == [100, 1]

    too_many = [{"id": by_name[n].id, "startTime": rfc3339(start), "endTime": rfc3339(end)} for n in names]
    answer = requests.post(f"{server.url}/query/data", json=too_many, timeout=5,
                           headers={"Ocp-Apim-Subscription-Key": SUBSCRIPTION,
                                    "Authorization": f"Bearer {server.issue_token()}"})
    assert answer.status_code == 400 and "maximum of 100" in answer.json()["message"]


@pytest.mark.parametrize("paging", ["item", "top"])
def test_small_pages_are_all_followed(all_series, paging):
    by_name = {s.name: s for s in all_series if s.facility == FACILITY}
    with DataApiServer(all_series, page_size=1000, paging=paging) as api:
        provider = make_provider(api, client_id="", client_secret="", tenant="", scope="", page_limit=97)
        names = NAMES[:3]
        frame = provider.get_data_for_range(T0, T0 + timedelta(days=1), names, timedelta(hours=1))
        assert_matches(frame, by_name, names, T0, T0 + timedelta(days=1), timedelta(hours=1))
        assert len(query_calls(api)) == math.ceil(1440 / 97)


def test_unknown_names_are_missing_and_names_resolve_within_the_facility(server, all_series):
    provider = make_provider(server)
    frame = provider.get_data_for_range(T0, T0 + timedelta(hours=1), [NAMES[1], "NO-SUCH", "OTHER-ONLY", "SHARED-NAME"],
                                        timedelta(minutes=30))
    assert frame.missing == ("NO-SUCH", "OTHER-ONLY")
    assert list(frame.data.columns) == [NAMES[1], "SHARED-NAME"]
    shared = next(s for s in all_series if s.name == "SHARED-NAME" and s.facility == FACILITY)
    assert_matches(frame, {NAMES[1]: next(s for s in all_series if s.name == NAMES[1]), "SHARED-NAME": shared},
                   [NAMES[1], "SHARED-NAME"], T0, T0 + timedelta(hours=1), timedelta(minutes=30))
    assert provider.sensor_exists(NAMES[1]) and not provider.sensor_exists("NO-SUCH")

    anywhere = make_provider(server, facility="")
    with pytest.raises(PermanentError, match="2 series are named 'SHARED-NAME'.*JSV, OTHER"):
        anywhere.get_data_for_range(T0, T0 + timedelta(hours=1), ["SHARED-NAME"], timedelta(minutes=30))


def test_names_are_looked_up_once(server):
    provider = make_provider(server)
    for _ in range(3):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:5], timedelta(minutes=30))
    assert len(server.calls("GET", server.url.split("://", 1)[1].split("/", 1)[1])) == 5


def test_token_is_cached_and_every_call_carries_token_and_subscription_key(server):
    provider = make_provider(server)
    provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:3], timedelta(minutes=30))
    provider.get_sensor_list()
    token_calls = server.calls("POST", "/oauth2/v2.0/token")
    assert len(token_calls) == 1
    assert token_calls[0].body == {"grant_type": "client_credentials", "client_id": "latigo-test",
                                   "client_secret": SECRET, "scope": SCOPE}
    assert "Ocp-Apim-Subscription-Key" not in token_calls[0].headers
    api_calls = [c for c in server.calls() if c.path.startswith("/plant/")]
    assert len(api_calls) >= 5
    assert all(c.headers["Authorization"].startswith("Bearer ") for c in api_calls)
    assert all(c.headers["Ocp-Apim-Subscription-Key"] == SUBSCRIPTION for c in api_calls)


def test_a_401_refreshes_the_token_exactly_once(server):
    provider = make_provider(server)
    provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
    server.revoke_tokens()
    frame = provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
    assert frame.missing == () and not frame.is_empty
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 2

    server.inject("POST", "/query/data", 401, times=5)
    with pytest.raises(PermanentError, match="401"):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
    assert len(server.calls("POST", "/oauth2/v2.0/token")) == 3, "one refresh, not a loop"


def test_wrong_client_secret_is_a_clear_permanent_error(server):
    provider = make_provider(server, client_secret="wrong-secret-value")
    with pytest.raises(PermanentError, match="refused the client credentials") as caught:
        provider.sensor_exists(NAMES[0])
    assert "wrong-secret-value" not in str(caught.value)


def test_429_with_retry_after_is_retried_after_that_delay(server, all_series):
    sleeps = Sleeps()
    provider = make_provider(server, sleeps)
    provider.sensor_exists(NAMES[0])
    server.inject("POST", "/query/data", 429, times=2, headers={"Retry-After": "7"})
    frame = provider.get_data_for_range(T0, T0 + timedelta(hours=1), [NAMES[0]], timedelta(minutes=30))
    assert sleeps == [7.0, 7.0]
    assert_matches(frame, {NAMES[0]: all_series[0]}, [NAMES[0]], T0, T0 + timedelta(hours=1), timedelta(minutes=30))
    assert len(query_calls(server)) == 3


@pytest.mark.parametrize("status", [408, 425, 502, 503, 504])
def test_retryable_statuses_exhausted_are_transient(server, status):
    sleeps = Sleeps()
    provider = make_provider(server, sleeps, max_retries=2)
    provider.sensor_exists(NAMES[0])
    server.inject("POST", "/query/data", status, times=10)
    with pytest.raises(TransientError, match=f"answered {status} after 3 attempts"):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), [NAMES[0]], timedelta(minutes=30))
    assert len(query_calls(server)) == 3
    assert len(sleeps) == 2


def test_4xx_answers_are_permanent_with_the_servers_message(server):
    provider = make_provider(server)
    provider.sensor_exists(NAMES[0])
    server.inject("POST", "/query/data", 400, times=1)
    with pytest.raises(PermanentError, match="answered 400: injected 400"):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), [NAMES[0]], timedelta(minutes=30))
    assert len(query_calls(server)) == 1


def test_a_series_deleted_after_lookup_is_a_permanent_error_and_forgotten(all_series):
    series = [s for s in all_series if s.name in NAMES[:2]]
    with DataApiServer(series, page_size=500) as api:
        provider = make_provider(api, client_id="", client_secret="", tenant="", scope="", subscription_key="")
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
        del api.series[series[1].id]
        with pytest.raises(PermanentError, match=f"unknown series.*{series[1].id}"):
            provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
        frame = provider.get_data_for_range(T0, T0 + timedelta(hours=1), NAMES[:2], timedelta(minutes=30))
        assert frame.missing == (NAMES[1],)


def test_a_slow_answer_times_out_as_transient(server):
    provider = make_provider(server, timeout=timedelta(seconds=0.2), max_retries=1)
    provider.sensor_exists(NAMES[0])
    server.delay("POST", "/query/data", seconds=1.0, times=2)
    with pytest.raises(TransientError, match="Timeout"):
        provider.get_data_for_range(T0, T0 + timedelta(hours=1), [NAMES[0]], timedelta(minutes=30))


def test_sensor_listing_follows_pages_within_the_facility(server):
    provider = make_provider(server, page_limit=40)
    names = provider.get_sensor_list()
    assert names == NAMES + ["SHARED-NAME"]
    assert len(server.calls("GET", "/v1.6")) == math.ceil(151 / 40)


def test_native_range_specifier_describes_the_requests(server, all_series):
    provider = make_provider(server)
    provider.sensor_exists(NAMES[0])
    spec = provider.get_native_range_specifier(T0, T0 + timedelta(hours=1),
                                               {"sensors": [NAMES[0], NAMES[1]], "resolution": timedelta(minutes=10)})
    assert f"POST {server.url}/query/data" in spec
    assert all_series[0].id in spec and f"<id of '{NAMES[1]}'>" in spec
    assert "startTime: 2024-03-01T00:00:00.000Z" in spec and "endTime: 2024-03-01T01:00:00.000Z" in spec
    assert "0 days 00:10:00" in spec and server.calls("POST", "/query/data") == []


def test_incomplete_auth_settings_are_a_config_error(server):
    with pytest.raises(ConfigError, match="missing client_secret, scope"):
        make_provider(server, client_secret="", scope="")
    with pytest.raises(ConfigError, match="page_limit"):
        make_provider(server, page_limit=100_001)
