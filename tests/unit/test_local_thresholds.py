"""The local models' thresholds: normal data stays below them, the demo's injected anomaly does not.

The demo once reported an "ongoing" episode at the newest bucket of its models over the sensor group
with the injected anomaly, long after the anomaly had ended: its thresholds were the 99th percentile of
the held-out errors, so one normal bucket in a hundred crossed them by construction. Trained exactly as
the demo trains (three days before a 12-hour backfill), at instants spread over several days (the
sensors' slow drift spans 3-7 days), no normal bucket may reach 1.
"""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from latigo.demo import ANOMALY_SENSOR, plan_ranges
from latigo.models.local import FittedModel, MachineSpec, fit_model, machines_for_groups
from latigo.sensors.synthetic import SyntheticSensors

RESOLUTION = timedelta(minutes=10)
INSTANTS = [datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(hours=7 * i) for i in range(18)]
GROUPS = 4


def _trained(sensors: SyntheticSensors, group: int, now: datetime) -> tuple[FittedModel, MachineSpec]:
    _, _, training = plan_ranges(now, 12)
    spec = MachineSpec.parse(machines_for_groups(sensors.get_sensor_list(), GROUPS, training)[group])
    data = sensors.get_data_for_range(training.start, training.end, spec.tags, RESOLUTION).data
    return fit_model(data, spec), spec


def _confidences(fitted: FittedModel, sensors: SyntheticSensors, spec: MachineSpec, now: datetime):
    backfill, _, _ = plan_ranges(now, 12)
    outputs = fitted.outputs(sensors.get_data_for_range(backfill.start, backfill.end, spec.tags, RESOLUTION).data)
    total = np.array(list(outputs["total-anomaly-confidence"]["total-anomaly-confidence"].values()))
    per_tag = np.array([list(values.values()) for values in outputs["anomaly-confidence"].values()])
    return total, per_tag


@pytest.mark.parametrize("group", range(GROUPS))
def test_normal_synthetic_data_stays_below_the_thresholds(group):
    sensors = SyntheticSensors()
    crossings = []
    for now in INSTANTS:
        fitted, spec = _trained(sensors, group, now)
        total, per_tag = _confidences(fitted, sensors, spec, now)
        assert len(total) == 72
        if total.max() >= 1 or per_tag.max() >= 1:
            crossings.append((now.isoformat(), round(float(total.max()), 2), round(float(per_tag.max()), 2)))
    assert not crossings, f"normal buckets at or above a threshold (instant, total, per tag): {crossings}"


def test_the_injected_anomaly_crosses_them_in_every_bucket():
    now = INSTANTS[0]
    backfill, anomaly, _ = plan_ranges(now, 12)
    clean = SyntheticSensors()
    fitted, spec = _trained(clean, 0, now)
    assert ANOMALY_SENSOR in spec.tags
    shifted = SyntheticSensors(SyntheticSensors.Settings(anomalies=[{
        "sensor": ANOMALY_SENSOR, "start": anomaly.start.isoformat(), "end": anomaly.end.isoformat(),
        "magnitude": 0.5}]))
    data = shifted.get_data_for_range(backfill.start, backfill.end, spec.tags, RESOLUTION).data
    total = fitted.outputs(data)["total-anomaly-confidence"]["total-anomaly-confidence"]
    inside = [value for ts, value in total.items() if anomaly.start <= ts < anomaly.end]
    outside = [value for ts, value in total.items() if not anomaly.start <= ts < anomaly.end]
    assert len(inside) >= 2 and min(inside) > 1
    assert max(outside) < 1
