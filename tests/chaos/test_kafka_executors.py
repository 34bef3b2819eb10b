"""Chaos on the Kafka queue (a real Kafka-protocol broker, Tansu; see tests/support/tansu.py), with the
ledger on PostgreSQL:

- two executors in one consumer group, one `kill -9`ed mid-run: the survivor takes its partitions when its
  session times out and replays them from the committed offsets; every window is done exactly once, and a
  poison message among them is dead-lettered once;
- a third executor joins two that are busy: the rebalance hands back work in flight cleanly (finished
  before the partitions move), so no task runs twice;
- the broker restarted mid-drain: its memory (topic, messages, commits) is lost; a `latigo backfill`
  re-run publishes the windows not done yet, and they are completed without duplicates.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Producer

from latigo.storage.tables import TaskRecord
from tests.chaos.harness import PROVIDER, REPORT, Probe, ScenarioResult, backfill_args, task_keys, wait_until
from tests.chaos.invariants import assert_invariants, dead_letters
from tests.support.processes import write_config
from tests.support.tansu import SESSION_TIMEOUT, TansuBroker

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def tansu(tmp_path):
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        yield broker


def kafka_config(path: Path, url: str, broker: TansuBroker, topic: str, models: list[str], sleep: float,
                 concurrency: int = 3, **queue: object) -> Path:
    provider = {"type": PROVIDER, "models": models, "sleep": sleep}
    return write_config(
        path,
        database={"url": url, "connect_timeout": "3s"},
        task_queue={"type": "kafka", "bootstrap_servers": broker.bootstrap, "topic": topic, "group_id": "executors",
                    "session_timeout": SESSION_TIMEOUT, "commit_interval": "500ms", **queue},
        sensor_data={"type": PROVIDER},
        model_information=provider,
        model_execution=provider,
        scheduler={"interval": "10m", "delay": "0s", "check_interval": "1s"},
        executor={"concurrency": concurrency, "shutdown_timeout": "10s", "poll_timeout": "500ms"},
        metrics={"enabled": False},
    )


def executor_name(process) -> str:
    return f"{socket.gethostname()}:{process.pid}"


def test_a_killed_executors_partitions_are_replayed_by_the_survivor(pg_database, tansu, procs, tmp_path):
    began = time.monotonic()
    topic = f"tasks-{uuid.uuid4().hex[:6]}"
    tansu.create_topic(topic, 4)
    models, windows = [f"kill-{i}" for i in range(8)], 12  # 96 tasks of 0.3 s
    expected = task_keys(models, windows)
    config = kafka_config(tmp_path / "latigo.yaml", pg_database.url, tansu, topic, models, sleep=0.3)
    procs.run_ok(config, *backfill_args(windows))
    poison = Producer({"bootstrap.servers": tansu.bootstrap})
    poison.produce(topic, key=b"default/kill-3", value=b"\x00 not a task")
    assert poison.flush(10) == 0
    del poison  # its client goes with it (it would reconnect for as long as it lives)
    probe = Probe(pg_database.url)
    victim, survivor = (procs.start(config, "executor", name=name) for name in ("victim", "survivor"))
    wait_until(lambda: victim.count("assigned partitions") and survivor.count("assigned partitions")
               and probe.count(TaskRecord.executor == executor_name(victim), TaskRecord.state == "done") >= 3
               and probe.count(TaskRecord.executor == executor_name(victim), TaskRecord.state == "running") >= 1,
               90, "both executors to hold partitions and the victim to be mid-run", procs.tails, every=0.05)
    held = probe.count(TaskRecord.executor == executor_name(victim), TaskRecord.state == "running")
    victim.send(signal.SIGKILL)
    victim.wait(10)
    wait_until(lambda: probe.done() >= len(expected) and not probe.running(), 180,
               "the survivor to drain everything", lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop([survivor]) == [0], procs.tails()
    replayed = probe.count(TaskRecord.runs > 1)
    probe.close()

    summary = assert_invariants(pg_database.url, expected, max_runs=2, max_lost=1)
    assert summary.lost >= 1 and replayed >= 1  # the victim's tasks in flight were run again by the survivor
    letters = dead_letters(pg_database.url)
    assert [(source, error.split(":")[0]) for source, _, error in letters] == [("KafkaTaskQueue",
                                                                                "task body is not JSON")]
    REPORT.add(ScenarioResult(
        "kafka: executor killed -9", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"1 SIGKILL with {held} tasks running", 0, time.monotonic() - began, {"tasks run twice": replayed}))


def test_a_third_executor_joining_takes_partitions_without_a_task_running_twice(pg_database, tansu, procs,
                                                                                tmp_path):
    began = time.monotonic()
    topic = f"tasks-{uuid.uuid4().hex[:6]}"
    tansu.create_topic(topic, 6)
    models, windows = [f"join-{i}" for i in range(12)], 20  # 240 tasks of 0.3 s
    expected = task_keys(models, windows)
    config = kafka_config(tmp_path / "latigo.yaml", pg_database.url, tansu, topic, models, sleep=0.3,
                          concurrency=2)
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(pg_database.url)
    first = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.done() >= 15, 90, "two executors to get going", procs.tails)
    third = procs.start(config, "executor", name="executor-third")
    wait_until(lambda: third.count("assigned partitions"), 60, "the third executor to be given partitions",
               procs.tails)
    assert probe.done() < len(expected) - 20, "drained before the rebalance: nothing was handed over"
    wait_until(lambda: probe.done() >= len(expected) and not probe.running(), 180, "the backlog to drain",
               lambda: f"{probe.snapshot()}\n{procs.tails()}")
    assert procs.stop([*first, third]) == [0, 0, 0], procs.tails()
    probe.close()

    gave_up = procs.log_count("gave up partitions")
    summary = assert_invariants(pg_database.url, expected, max_runs=1, max_lost=0)
    assert gave_up >= 2  # the rebalance revoked partitions of both busy executors
    assert all(p.count("still running") == 0 for p in procs.started)  # every revoke finished its work first
    REPORT.add(ScenarioResult(
        "kafka: third executor joins", pg_database.backend, summary.tasks, summary.done, summary.failed,
        summary.runs_max, summary.lost, summary.attempts, summary.dead_letters, "1 rebalance by a joining executor",
        0, time.monotonic() - began, {"revokes": gave_up}))


def test_a_broker_restart_loses_the_queue_and_a_backfill_rerun_completes_it(pg_database, tansu, procs, tmp_path):
    began = time.monotonic()
    topic = f"tasks-{uuid.uuid4().hex[:6]}"
    models, windows = [f"restart-{i}" for i in range(6)], 12  # 72 tasks of 0.2 s
    expected = task_keys(models, windows)
    config = kafka_config(tmp_path / "latigo.yaml", pg_database.url, tansu, topic, models, sleep=0.2,
                          create_topic=True, partitions=4)
    procs.run_ok(config, *backfill_args(windows))
    probe = Probe(pg_database.url)
    executors = [procs.start(config, "executor", name=f"executor-{i}") for i in range(2)]
    wait_until(lambda: probe.done() >= 15, 90, "the executors to get going", procs.tails)
    tansu.restart()  # in memory: the topic, its messages and the group's commits are gone
    lost_at = probe.done()
    time.sleep(3)
    assert probe.done() < len(expected), "drained before the restart: nothing was lost to test"
    # The re-run creates the topic again only once both executors have seen it gone: a group that assigned
    # meanwhile gave them nothing, and they must find the topic back themselves.
    wait_until(lambda: all(e.count("does not exist") for e in executors), 60,
               "the executors to see the topic gone", procs.tails)
    output = procs.run_ok(config, *backfill_args(windows), name="backfill-again")
    wait_until(lambda: probe.done() >= len(expected) and not probe.running(), 180,
               "the re-published windows to be done", lambda: f"{probe.snapshot()}\n{output}\n{procs.tails()}")
    assert procs.stop(executors) == [0, 0], procs.tails()
    with probe.engine.connect() as connection:
        rerun = connection.execute(sa.select(sa.func.count()).select_from(TaskRecord)
                                   .where(TaskRecord.runs > 1)).scalar_one()
    probe.close()

    summary = assert_invariants(pg_database.url, expected, max_runs=2, max_lost=1)
    REPORT.add(ScenarioResult(
        "kafka: broker restarted, backfill re-run", pg_database.backend, summary.tasks, summary.done,
        summary.failed, summary.runs_max, summary.lost, summary.attempts, summary.dead_letters,
        f"1 broker restart (memory lost) after {lost_at} done", 0, time.monotonic() - began,
        {"tasks run twice": rerun}))
