"""The Event Hub task queue's settings (a module of their own: the queue and its watchdog both read them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta


@dataclass
class EventHubSettings:
    connection_string: str = ""
    """The namespace's or hub's connection string (LATIGO_INTERNAL_EVENT_HUB); masked everywhere."""
    consumer_group: str = "$Default"
    eventhub_name: str | None = None
    """Needed only when the connection string has no EntityPath."""
    prefetch: int = field(default=20, metadata={"min": 1})
    """Events the SDK buffers per partition; small, because executors work slowly and rebalance."""
    load_balancing_interval: timedelta = timedelta(seconds=10)
    ownership_expiry: timedelta = timedelta(seconds=60)
    """A crashed executor's partitions are claimed by others after this long."""
    handoff_size: int = field(default=16, metadata={"min": 1})
    """Received events waiting for a worker; the receive loop waits when it is full."""
    send_retries: int = field(default=3, metadata={"min": 0})
    send_timeout: timedelta = timedelta(seconds=60)
    """Longest wait for one batch to be sent, retries included; also bounds the watchdog's service queries."""
    watchdog_silence: timedelta = timedelta(minutes=5)
    """Restart the consumer after this long without events while the service holds unread ones."""
