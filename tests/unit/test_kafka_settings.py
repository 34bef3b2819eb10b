"""The librdkafka configuration the Kafka queue's settings stand for, Event Hubs' Kafka endpoint above all
(Azure itself is unreachable here: the derived settings are what can be checked)."""

from datetime import timedelta
from pathlib import Path

import pytest

from latigo.config import describe_config, load_config
from latigo.errors import ConfigError
from latigo.queues.kafka_settings import KafkaSettings, client_config

KEY = "c2VjcmV0S2V5Rm9yVGhlVGVzdHM0Mg=="
CONNECTION = (f"Endpoint=sb://plant-ns.servicebus.windows.net/;SharedAccessKeyName=latigo;SharedAccessKey={KEY};"
              "EntityPath=latigo-tasks")


def test_an_event_hubs_connection_string_gives_its_kafka_endpoint_with_sasl_ssl_plain():
    config = client_config(KafkaSettings(connection_string=CONNECTION))
    assert config.topic == "latigo-tasks" and config.event_hubs
    common = config.common
    assert common["bootstrap.servers"] == "plant-ns.servicebus.windows.net:9093"
    assert (common["security.protocol"], common["sasl.mechanism"]) == ("SASL_SSL", "PLAIN")
    assert common["sasl.username"] == "$ConnectionString"
    assert common["sasl.password"] == CONNECTION
    # The service closes idle connections after 240 s: latigo's go sooner, and metadata is refreshed as often.
    assert common["connections.max.idle.ms"] == common["metadata.max.age.ms"] == 180_000
    assert common["message.max.bytes"] < 1_046_528  # a request stays under Event Hubs' limit
    consumer = config.consumer(KafkaSettings(connection_string=CONNECTION))
    assert consumer["session.timeout.ms"] >= 30_000
    assert consumer["enable.auto.commit"] is False and consumer["enable.auto.offset.store"] is False
    assert consumer["group.id"] == "latigo"
    producer = config.producer()
    assert producer["acks"] == "all" and producer["sasl.password"] == CONNECTION


def test_a_plain_cluster_takes_its_servers_topic_security_and_extra_keys():
    settings = KafkaSettings(bootstrap_servers="k1:9092,k2:9092", topic="tasks", group_id="executors",
                             security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="latigo",
                             sasl_password="pw-1234", ssl_ca_location="/etc/ca.pem",
                             extra={"socket.keepalive.enable": True, "fetch.wait.max.ms": 50})
    config = client_config(settings)
    assert config.topic == "tasks" and not config.event_hubs
    consumer = config.consumer(settings)
    assert consumer["bootstrap.servers"] == "k1:9092,k2:9092" and consumer["group.id"] == "executors"
    assert (consumer["security.protocol"], consumer["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (consumer["sasl.username"], consumer["sasl.password"]) == ("latigo", "pw-1234")
    assert consumer["ssl.ca.location"] == "/etc/ca.pem"
    assert consumer["fetch.wait.max.ms"] == 50 and consumer["socket.keepalive.enable"] is True
    assert "connections.max.idle.ms" not in consumer  # Event Hubs' limits are Event Hubs' only


@pytest.mark.parametrize(("settings", "message"), [
    (KafkaSettings(topic="t"), "task_queue.bootstrap_servers is required"),
    (KafkaSettings(bootstrap_servers="k:9092"), "task_queue.topic is required"),
    (KafkaSettings(connection_string="Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=abcdef"),
     "task_queue.topic is required: the connection string has no EntityPath"),
    (KafkaSettings(connection_string="nonsense"), "not an Event Hubs connection string"),
    (KafkaSettings(connection_string="Endpoint=https://ns/;EntityPath=t"), "not an Event Hubs connection string"),
    (KafkaSettings(connection_string=CONNECTION, topic="other"), "differs from the connection string's EntityPath"),
    (KafkaSettings(connection_string=CONNECTION, session_timeout=timedelta(seconds=10)),
     "task_queue.session_timeout: Event Hubs needs at least 30s"),
    (KafkaSettings(connection_string=CONNECTION, security_protocol="SSL"), "SASL_SSL with PLAIN only"),
    (KafkaSettings(connection_string=CONNECTION, bootstrap_servers="k:9092"), "not both"),
    (KafkaSettings(bootstrap_servers="k:9092", topic="t", extra={"enable.auto.commit": True}),
     "task_queue.extra.enable.auto.commit: not settable here"),
    (KafkaSettings(bootstrap_servers="k:9092", topic="t", sasl_mechanism="PLAIN"),
     "security_protocol must be SASL_PLAINTEXT or SASL_SSL"),
    (KafkaSettings(bootstrap_servers="k:9092", topic="t", revoke_timeout=timedelta(minutes=10)),
     "revoke_timeout must be shorter than task_queue.max_poll_interval"),
])
def test_bad_settings_are_one_line_errors_naming_the_setting_and_never_the_key(settings, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as raised:
        client_config(settings)
    assert KEY not in str(raised.value) and "\n" not in str(raised.value)


def test_the_config_file_form_is_validated_and_its_secrets_masked(tmp_path: Path):
    path = tmp_path / "latigo.yaml"
    path.write_text("task_queue:\n  type: kafka\n  bootstrap_servers: k:9092\n  topic: tasks\n"
                    "  sasl_password: hunter2-secret\n  extra: {sasl.oauthbearer.client.secret: abc-secret-1}\n")
    config = load_config(path, env={})
    assert config.task_queue.type == "kafka" and config.task_queue.settings.topic == "tasks"
    printed = describe_config(config)
    assert "hunter2-secret" not in printed and "abc-secret-1" not in printed
    path.write_text("task_queue:\n  type: kafka\n  securty_protocol: SSL\n")
    with pytest.raises(ConfigError, match="security_protocol"):
        load_config(path, env={})
    path.write_text("task_queue:\n  type: kafka\n  security_protocol: TLS\n")
    with pytest.raises(ConfigError, match="must be one of"):
        load_config(path, env={})


def test_the_event_hub_variable_gives_the_kafka_queue_its_connection_string(tmp_path: Path):
    path = tmp_path / "latigo.yaml"
    path.write_text("task_queue: {type: kafka, group_id: executors}\n")
    config = load_config(path, env={"LATIGO_INTERNAL_EVENT_HUB": CONNECTION})
    assert config.task_queue.type == "kafka"
    derived = client_config(config.task_queue.settings)
    assert derived.topic == "latigo-tasks" and derived.common["sasl.password"] == CONNECTION
    assert KEY not in describe_config(config)
