"""`latigo demo` end to end: real processes, real models, and an anomaly the models must see."""

import json
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from latigo.settings import DatabaseSettings
from latigo.storage.db import create_engine_for
from latigo.storage.tables import Prediction, TaskRecord
from tests.support.processes import latigo_ok

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("demo") / "latigo-demo"
    config = directory.parent / "unused.yaml"
    config.write_text("{}\n")
    output = latigo_ok(config, "demo", "--dir", str(directory), "--models", "2", "--hours", "3", timeout=300)
    summary = json.loads((directory / "summary.json").read_text())
    engine = create_engine_for(DatabaseSettings(url=f"sqlite:///{directory / 'latigo.db'}"))
    yield directory, output, summary, engine
    engine.dispose()


def test_it_reports_what_it_did(demo):
    _, output, summary, _ = demo
    assert summary["tasks_failed"] == 0
    assert summary["tasks_done"] >= 2 * 18  # 3 hours of 10-minute windows per model (+ the live one)
    assert f"{summary['tasks_done']} tasks" in output and "tasks/s" in output


def test_every_model_has_a_prediction_for_every_window(demo):
    _, _, summary, engine = demo
    with engine.connect() as c:
        tasks = c.execute(sa.select(TaskRecord.model, TaskRecord.window_start, TaskRecord.state)).all()
        predicted = set(c.execute(sa.select(Prediction.model, Prediction.ts)
                                  .where(Prediction.output == "total-anomaly-scaled")).all())
    assert {state for _, _, state in tasks} == {"done"}
    for model, window_start, _ in tasks:
        assert (model, window_start) in predicted
    assert {m for m, _, _ in tasks} == set(summary["models"])


def test_the_chart_is_a_png(demo):
    directory, _, _, _ = demo
    data = (directory / "demo.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_the_injected_anomaly_scores_clearly_higher_than_normal_windows(demo):
    _, _, summary, engine = demo
    start, end = (datetime.fromisoformat(summary[k]) for k in ("anomaly_start", "anomaly_end"))
    with engine.connect() as c:
        rows = c.execute(sa.select(Prediction.ts, Prediction.value).where(
            Prediction.model == "demo-model-0", Prediction.output == "total-anomaly-scaled")).all()
    inside = [v for ts, v in rows if start <= ts < end]
    outside = [v for ts, v in rows if ts < start - timedelta(minutes=10) or ts >= end + timedelta(minutes=10)]
    assert len(inside) >= 2 and len(outside) >= 10
    assert min(inside) > 5 * max(outside), (inside, sorted(outside)[-3:])
    # A model over another sensor group must not see it.
    with engine.connect() as c:
        other = c.execute(sa.select(Prediction.ts, Prediction.value).where(
            Prediction.model == "demo-model-1", Prediction.output == "total-anomaly-scaled")).all()
    other_inside = [v for ts, v in other if start <= ts < end]
    assert max(other_inside) < min(inside) / 5


def test_follow_keeps_scheduling_until_interrupted(tmp_path):
    import signal

    from tests.support.processes import latigo
    from tests.support.waiting import wait_for

    config = tmp_path / "unused.yaml"
    config.write_text("{}\n")
    directory = tmp_path / "follow"
    process = latigo(config, "demo", "--dir", str(directory), "--models", "1", "--hours", "1", "--follow")
    lines: list[str] = []

    def following() -> bool:
        lines.append(process.stdout.readline())
        return "following live windows" in lines[-1]

    assert wait_for(following, timeout=120, every=0), "".join(lines)[-3000:]
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output[-3000:]
    assert "done:" in output and (directory / "demo.png").exists()


def test_a_second_run_in_the_same_directory_is_fresh_and_a_foreign_directory_is_refused(tmp_path):
    config = tmp_path / "unused.yaml"
    config.write_text("{}\n")
    directory = tmp_path / "latigo-demo"
    latigo_ok(config, "demo", "--dir", str(directory), "--models", "1", "--hours", "1", timeout=300)
    output = latigo_ok(config, "demo", "--dir", str(directory), "--models", "2", "--hours", "1",
                       "--model", "demo-model-1", timeout=300)
    assert f"replacing the earlier demo run in {directory}/" in output
    summary = json.loads((directory / "summary.json").read_text())
    engine = create_engine_for(DatabaseSettings(url=f"sqlite:///{directory / 'latigo.db'}"))
    with engine.connect() as c:
        tasks = c.execute(sa.select(sa.func.count()).select_from(TaskRecord)).scalar()
        models = set(c.execute(sa.select(TaskRecord.model).distinct()).scalars())
    engine.dispose()
    assert summary["tasks_done"] == tasks and models == {"demo-model-0", "demo-model-1"}  # this run's only
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    from tests.support.processes import latigo

    process = latigo(config, "demo", "--dir", str(tmp_path / "foreign"))
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2 and "holds files that are not an earlier demo's (notes.txt)" in out
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"


def test_latigo_anomalies_reports_the_injected_anomaly_and_nothing_else(demo):
    """The only episode is the injected one, and it has ended: normal buckets never cross the threshold (an
    "ongoing" episode at the newest bucket once appeared on data that holds none)."""
    directory, _, summary, _ = demo
    start, end = (datetime.fromisoformat(summary[k]) for k in ("anomaly_start", "anomaly_end"))
    output = latigo_ok(directory / "latigo.yaml", "anomalies", "--since", "24h", "--json")
    episodes = json.loads(output)
    assert [(e["model"], e["end"] is not None) for e in episodes] == [("demo-model-0", True)], episodes
    assert start <= datetime.fromisoformat(episodes[0]["start"]) < end
    assert datetime.fromisoformat(episodes[0]["end"]) < end
