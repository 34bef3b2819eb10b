"""Synthetic sensors: deterministic, consistent across range splits, honest about missing sensors."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from latigo.errors import ConfigError
from latigo.sensors.synthetic import SyntheticSensors

UTC = timezone.utc
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TEN = timedelta(minutes=10)


def test_same_range_same_values_and_pieces_agree_with_the_whole():
    sensors = SyntheticSensors()
    names = ["sensor-g0-0", "sensor-g2-3"]
    whole = sensors.get_data_for_range(T0, T0 + timedelta(hours=6), names, TEN).data
    again = SyntheticSensors().get_data_for_range(T0, T0 + timedelta(hours=6), names, TEN).data
    pieces = pd.concat([sensors.get_data_for_range(T0 + timedelta(hours=h), T0 + timedelta(hours=h + 1), names,
                                                   TEN).data for h in range(6)])
    pd.testing.assert_frame_equal(whole, again)
    pd.testing.assert_frame_equal(whole, pieces, check_freq=False)
    assert len(whole) == 36 and list(whole.columns) == names
    assert str(whole.index.tz) == "UTC"


def test_buckets_are_means_of_the_minute_samples():
    sensors = SyntheticSensors()
    minutes = sensors.get_data_for_range(T0, T0 + TEN, ["sensor-g1-1"], timedelta(minutes=1)).data
    bucket = sensors.get_data_for_range(T0, T0 + TEN, ["sensor-g1-1"], TEN).data
    assert len(minutes) == 10
    assert bucket.iloc[0, 0] == pytest.approx(minutes["sensor-g1-1"].mean())


def test_group_members_correlate_and_groups_differ():
    data = SyntheticSensors().get_data_for_range(T0, T0 + timedelta(days=2), ["sensor-g0-0", "sensor-g0-1",
                                                                             "sensor-g3-0"], TEN).data
    corr = data.corr().values
    assert abs(corr[0, 1]) > 0.95
    assert abs(corr[0, 2]) < abs(corr[0, 1])


def test_an_injected_anomaly_shifts_only_its_sensor_and_time():
    spec = {"sensor": "sensor-g0-1", "start": "2026-01-01T02:00:00Z", "end": "2026-01-01T03:00:00Z",
            "magnitude": 1.0}
    plain = SyntheticSensors().get_data_for_range(T0, T0 + timedelta(hours=4), ["sensor-g0-0", "sensor-g0-1"], TEN)
    shifted = SyntheticSensors(SyntheticSensors.Settings(anomalies=[spec])).get_data_for_range(
        T0, T0 + timedelta(hours=4), ["sensor-g0-0", "sensor-g0-1"], TEN)
    diff = (shifted.data - plain.data).abs()
    inside = (diff.index >= pd.Timestamp("2026-01-01T02:00Z")) & (diff.index < pd.Timestamp("2026-01-01T03:00Z"))
    assert (diff["sensor-g0-1"][inside] > 0.5).all()
    assert np.allclose(diff["sensor-g0-1"][~inside], 0) and np.allclose(diff["sensor-g0-0"], 0)


def test_missing_sensors_are_reported_by_name():
    frame = SyntheticSensors().get_data_for_range(T0, T0 + TEN, ["sensor-g0-0", "nope", "sensor-g99-0"], TEN)
    assert list(frame.data.columns) == ["sensor-g0-0"]
    assert frame.missing == ("nope", "sensor-g99-0")


def test_listing_and_native_specifier():
    sensors = SyntheticSensors(SyntheticSensors.Settings(groups=2, sensors_per_group=3))
    assert sensors.get_sensor_list() == [f"sensor-g{g}-{i}" for g in range(2) for i in range(3)]
    assert sensors.sensor_exists("sensor-g1-2") and not sensors.sensor_exists("sensor-g2-0")
    text = sensors.get_native_range_specifier(T0, T0 + TEN, {"sensors": ["sensor-g0-0"], "resolution": TEN})
    assert "seed=42" in text and "sensor-g0-0" in text and "600s" in text


@pytest.mark.parametrize("spec,message", [
    ({"sensor": "sensor-g7-0", "start": "2026-01-01T00:00Z", "end": "2026-01-01T01:00Z"}, "no sensor 'sensor-g7-0'"),
    ({"sensor": "sensor-g0-0", "start": "2026-01-01T00:00Z"}, "missing 'end'"),
    ({"sensor": "sensor-g0-0", "start": "yesterday", "end": "2026-01-01T01:00Z"}, "not an ISO 8601"),
])
def test_bad_anomaly_specs_are_config_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        SyntheticSensors(SyntheticSensors.Settings(anomalies=[spec]))
