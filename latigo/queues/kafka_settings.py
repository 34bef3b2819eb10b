"""The Kafka task queue's settings, and the librdkafka configuration they stand for.

Two forms: a Kafka cluster (`bootstrap_servers`, `topic`, the client's security settings, `extra` for any
other librdkafka key), or an Event Hubs namespace through its Kafka endpoint (`connection_string` alone:
`NAMESPACE.servicebus.windows.net:9093`, SASL_SSL with PLAIN, user `$ConnectionString`, the connection string
as password, the topic from `EntityPath`), with the limits Event Hubs documents respected: requests under
1 MB, idle connections closed by the service after 240 s (so latigo's are recycled at 180 s and metadata
refreshed as often), a session timeout of at least 30 s.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from latigo.errors import ConfigError
from latigo.secrets import is_secret_key, register_secret

CLIENT_LOG = logging.getLogger("latigo.queues.kafka.client")
"""librdkafka's own log lines (a broker unreachable, a reconnect) go through logging, where secrets are
masked, rather than straight to stderr."""
EVENT_HUBS_PORT = 9093
EVENT_HUBS_IDLE_MS = 180_000
"""Event Hubs closes a connection idle for 240 s; latigo recycles its own (and refreshes metadata) sooner."""
EVENT_HUBS_MIN_SESSION = timedelta(seconds=30)
MAX_REQUEST_BYTES = 1_000_000
TOPIC_REFRESH_MS = 10_000
"""librdkafka's message.max.bytes (a whole produce request): under Event Hubs' 1,046,528-byte limit."""
OWNED_KEYS = {
    "enable.auto.commit": "latigo commits offsets itself, only past settled messages",
    "enable.auto.offset.store": "latigo commits offsets itself, only past settled messages",
    "group.id": "set task_queue.group_id",
    "bootstrap.servers": "set task_queue.bootstrap_servers",
}
"""librdkafka keys `extra` may not set: the queue's guarantees depend on them, or a setting of its own says it."""
SECURITY_PROTOCOLS = ("", "PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")


@dataclass
class KafkaSettings:
    bootstrap_servers: str = ""
    """HOST:PORT[,HOST:PORT...]; derived from `connection_string` on Event Hubs."""
    topic: str = ""
    """The topic the tasks go to; on Event Hubs the connection string's EntityPath."""
    group_id: str = "latigo"
    """The executors' consumer group: its committed offsets are where a partition's next owner resumes."""
    connection_string: str = ""
    """An Event Hubs connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...;
    EntityPath=...): everything else needed for its Kafka endpoint is derived. Masked everywhere."""
    security_protocol: str = field(default="", metadata={"choices": SECURITY_PROTOCOLS})
    """Empty: PLAINTEXT, or SASL_SSL with a connection string."""
    sasl_mechanism: str = field(default="", metadata={"choices": SASL_MECHANISMS})
    sasl_username: str = ""
    sasl_password: str = ""
    ssl_ca_location: str = ""
    """A CA bundle (PEM) to verify the brokers by; empty: the system's."""
    ssl_certificate_location: str = ""
    ssl_key_location: str = ""
    ssl_key_password: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other librdkafka setting (`{"socket.keepalive.enable": true}`), applied last."""
    create_topic: bool = False
    """Create the topic when it does not exist (else a missing topic is an error naming it)."""
    partitions: int = field(default=8, metadata={"min": 1})
    """Partitions of a topic latigo creates: executors doing useful work at once are at most this many."""
    replication_factor: int = field(default=-1, metadata={"min": -1})
    """Replicas of a topic latigo creates; -1: the broker's default."""
    session_timeout: timedelta = timedelta(seconds=45)
    """An executor that stops heartbeating (killed) loses its partitions after this long."""
    max_poll_interval: timedelta = timedelta(minutes=5)
    poll_batch: int = field(default=100, metadata={"min": 1})
    """Messages taken from the client per call, at most the room left in the hand-off."""
    handoff_size: int = field(default=64, metadata={"min": 1})
    """Received messages waiting for a worker; the consumer pauses its partitions when it is full."""
    commit_interval: timedelta = timedelta(seconds=1)
    """How often settled offsets are committed (asynchronously; synchronously at a rebalance and at close)."""
    revoke_timeout: timedelta = timedelta(seconds=20)
    """At a rebalance, how long a partition's tasks in flight may take to finish before it is given up
    (the rest are replayed by its next owner). Below max_poll_interval: the group waits meanwhile."""
    send_timeout: timedelta = timedelta(seconds=60)
    """Longest wait for enqueued tasks to be acknowledged by the brokers, retries included."""


@dataclass(frozen=True)
class ClientConfig:
    """What the settings resolve to: the topic and the librdkafka settings every client shares."""

    topic: str
    common: dict[str, Any]
    event_hubs: bool = False

    @property
    def where(self) -> str:
        return str(self.common["bootstrap.servers"])

    def producer(self) -> dict[str, Any]:
        """Keyed messages land where a Java client would put them (murmur2), each acknowledged by every
        in-sync replica; batched for 5 ms."""
        return {"acks": "all", "partitioner": "murmur2_random", "linger.ms": 5, **self.common}

    def consumer(self, settings: KafkaSettings) -> dict[str, Any]:
        """Offsets are committed by the queue only (never automatically); a group new to the topic starts
        at its beginning. Eager round-robin assignment by default (`extra` may choose another).

        The subscribed topic's metadata is refreshed every 10 s (librdkafka's default: 5 minutes): a group
        that assigned while the topic was missing (a broker that lost it, a topic created after the
        executors started) gave every member nothing, and only librdkafka's own refresh finding the topic
        starts the rebalance that hands its partitions out (a metadata request of the application's does not)."""
        return {
            "topic.metadata.refresh.interval.ms": TOPIC_REFRESH_MS,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "roundrobin",
            "session.timeout.ms": _ms(settings.session_timeout),
            "max.poll.interval.ms": _ms(settings.max_poll_interval),
            **self.common,
            "group.id": settings.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }


def client_config(settings: KafkaSettings) -> ClientConfig:
    """The topic and shared librdkafka settings; raises ConfigError naming the setting that is wrong."""
    _register_secrets(settings)
    if settings.connection_string:
        config = _event_hubs(settings)
    else:
        if not settings.bootstrap_servers.strip():
            raise ConfigError("task_queue.bootstrap_servers is required for the kafka task queue (HOST:PORT), "
                              "or task_queue.connection_string for Event Hubs")
        if not settings.topic.strip():
            raise ConfigError("task_queue.topic is required for the kafka task queue")
        config = ClientConfig(settings.topic.strip(), {"bootstrap.servers": settings.bootstrap_servers.strip()})
    if not settings.group_id.strip():
        raise ConfigError("task_queue.group_id may not be empty: the executors' consumer group")
    if settings.revoke_timeout >= settings.max_poll_interval:
        raise ConfigError("task_queue.revoke_timeout must be shorter than task_queue.max_poll_interval: the group "
                          "waits for a rebalance no longer than that")
    common = {"client.id": "latigo", "logger": CLIENT_LOG, **config.common, **_security(settings, config)}
    for key, value in settings.extra.items():
        if key in OWNED_KEYS:
            raise ConfigError(f"task_queue.extra.{key}: not settable here ({OWNED_KEYS[key]})")
        common[str(key)] = value
    return ClientConfig(config.topic, common, config.event_hubs)


def _event_hubs(settings: KafkaSettings) -> ClientConfig:
    fields = parse_connection_string(settings.connection_string)
    endpoint = fields.get("endpoint", "")
    if not endpoint.lower().startswith("sb://"):
        raise ConfigError("task_queue.connection_string: not an Event Hubs connection string (no Endpoint=sb://...)")
    host = endpoint[len("sb://"):].strip("/").split("/")[0].split(":")[0]
    if not host:
        raise ConfigError("task_queue.connection_string: its Endpoint names no namespace host")
    entity = fields.get("entitypath", "")
    topic = settings.topic.strip()
    if entity and topic and entity != topic:
        raise ConfigError(f"task_queue.topic {topic!r} differs from the connection string's EntityPath {entity!r}")
    if not (entity or topic):
        raise ConfigError("task_queue.topic is required: the connection string has no EntityPath")
    if settings.bootstrap_servers:
        raise ConfigError("task_queue.bootstrap_servers: set it or connection_string, not both")
    if settings.session_timeout < EVENT_HUBS_MIN_SESSION:
        raise ConfigError("task_queue.session_timeout: Event Hubs needs at least 30s")
    common = {
        "bootstrap.servers": f"{host}:{EVENT_HUBS_PORT}",
        "connections.max.idle.ms": EVENT_HUBS_IDLE_MS,
        "metadata.max.age.ms": EVENT_HUBS_IDLE_MS,
        "socket.keepalive.enable": True,
        "request.timeout.ms": 60_000,
        "message.max.bytes": MAX_REQUEST_BYTES,
    }
    return ClientConfig(entity or topic, common, event_hubs=True)


def _security(settings: KafkaSettings, config: ClientConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.event_hubs:
        if settings.security_protocol not in ("", "SASL_SSL") or settings.sasl_mechanism not in ("", "PLAIN"):
            raise ConfigError("task_queue: Event Hubs takes SASL_SSL with PLAIN only (leave security_protocol "
                              "and sasl_mechanism empty)")
        if settings.sasl_username or settings.sasl_password:
            raise ConfigError("task_queue: the connection string is the Event Hubs credential; leave "
                              "sasl_username and sasl_password empty")
        out.update({"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "$ConnectionString",
                    "sasl.password": settings.connection_string})
    else:
        if settings.security_protocol:
            out["security.protocol"] = settings.security_protocol
        if settings.sasl_mechanism:
            out["sasl.mechanism"] = settings.sasl_mechanism
        if settings.sasl_username:
            out["sasl.username"] = settings.sasl_username
        if settings.sasl_password:
            out["sasl.password"] = settings.sasl_password
        if (settings.sasl_mechanism or settings.sasl_username) and "SASL" not in settings.security_protocol:
            raise ConfigError("task_queue.security_protocol must be SASL_PLAINTEXT or SASL_SSL when SASL is set")
    for name, key in (("ssl_ca_location", "ssl.ca.location"), ("ssl_certificate_location", "ssl.certificate.location"),
                      ("ssl_key_location", "ssl.key.location"), ("ssl_key_password", "ssl.key.password")):
        if getattr(settings, name):
            out[key] = getattr(settings, name)
    return out


def parse_connection_string(text: str) -> dict[str, str]:
    """`Key=Value;...` with lower-cased keys (a value may hold '=', as keys in base64 do)."""
    fields = {}
    for part in text.strip().split(";"):
        key, sep, value = part.partition("=")
        if not sep:
            if part.strip():
                raise ConfigError("task_queue.connection_string: not an Event Hubs connection string "
                                  "(expected Key=Value pairs separated by ';')")
            continue
        fields[key.strip().lower()] = value.strip()
    return fields


def _register_secrets(settings: KafkaSettings) -> None:
    for value in (settings.connection_string, settings.sasl_password, settings.ssl_key_password):
        register_secret(value)
    for key, value in settings.extra.items():
        if is_secret_key(str(key).replace(".", "_")) and isinstance(value, str):
            register_secret(value)


def _ms(duration: timedelta) -> int:
    return int(duration.total_seconds() * 1000)
