"""The kafka task queue through the command line against a real Kafka-protocol broker (Tansu):
`check-config --connect` names the topic's partitions (or the missing topic), `status` the group's lag."""

import json
import subprocess

import pytest
from confluent_kafka import Producer

from latigo.types import Task
from tests.integration.test_kafka_queue import tasks_for
from tests.support.processes import latigo, latigo_ok, write_config
from tests.support.tansu import SESSION_TIMEOUT, TansuBroker

pytestmark = pytest.mark.integration


@pytest.fixture
def tansu():
    with TansuBroker() as broker:
        yield broker


def config_for(tmp_path, tansu, topic, **queue):
    return write_config(tmp_path / "c.yaml", database={"url": f"sqlite:///{tmp_path / 'l.db'}"},
                        task_queue={"type": "kafka", "bootstrap_servers": tansu.bootstrap, "topic": topic,
                                    "group_id": "executors", "session_timeout": SESSION_TIMEOUT, **queue},
                        metrics={"enabled": False})


def run(config, *args):
    process = latigo(config, *args)
    output, _ = process.communicate(timeout=120)
    return process.returncode, output


def test_check_config_connect_names_the_partitions_or_the_missing_topic(tmp_path, tansu):
    tansu.create_topic("tasks", 3)
    latigo_ok(config_for(tmp_path, tansu, "tasks"), "db", "upgrade")
    code, output = run(config_for(tmp_path, tansu, "tasks"), "check-config", "--connect")
    assert (f"#  ok   task_queue: kafka topic tasks at {tansu.bootstrap}: 3 partitions (0, 1, 2); consumer group "
            "executors") in output, output
    code, output = run(config_for(tmp_path, tansu, "absent"), "check-config", "--connect")
    assert code == 2
    assert (f"#  FAIL task_queue: TopicMissing: kafka topic 'absent' does not exist at {tansu.bootstrap} (create it, "
            "or set task_queue.create_topic: true)") in output, output
    code, output = run(config_for(tmp_path, tansu, "made", create_topic=True, partitions=2), "check-config",
                       "--connect")
    assert f"#  ok   task_queue: kafka topic made at {tansu.bootstrap}: 2 partitions (0, 1)" in output, output


def test_status_shows_the_consumer_groups_lag_per_partition(tmp_path, tansu):
    tansu.create_topic("tasks", 2)
    config = config_for(tmp_path, tansu, "tasks")
    latigo_ok(config, "db", "upgrade")
    producer = Producer({"bootstrap.servers": tansu.bootstrap})
    tasks: list[Task] = tasks_for(["lag-model"], 4)
    for task in tasks:  # one request each: Tansu's high watermark is its last batch's base offset + 1
        producer.produce("tasks", key=task.key.encode(), value=task.to_json().encode(), partition=1)
        producer.flush(10)
    text = latigo_ok(config, "status")
    assert "queue lag:        4 uncommitted (by partition 0: 0, 1: 4)" in text, text
    data = json.loads(latigo_ok(config, "status", "--json", stderr=subprocess.DEVNULL))
    assert data["queue_lag"] == {"0": 0, "1": 4} and data["queue_lag_error"] == ""
    tansu.stop()
    text = latigo_ok(config, "status", timeout=120)
    assert "queue lag:        unknown (" in text  # the ledger's report still comes, saying what is missing
