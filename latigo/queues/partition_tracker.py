"""Which messages of one partition (an Event Hub's or a Kafka topic's) are finished, and how far it is safe
to checkpoint (Event Hubs) or commit (Kafka).

Workers finish a partition's tasks out of order. A checkpoint says "everything up to here is done", and a
new owner resumes after it, so it may only move up to the highest event below which *every* handed-out event
was acknowledged: one slow (or crashed) task holds the checkpoint back, and its successors are replayed
(and deduplicated by the ledger) rather than lost.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """A place in a partition: the transport's offset as text (opaque on Event Hubs) and the sequence number
    (on Kafka both are the message's offset)."""

    offset: str
    sequence_number: int


class PartitionTracker:
    """Bookkeeping for one partition during one ownership; thread-safe.

    `track` is called in arrival order (sequence numbers increase); `ack` from any worker thread returns the
    new checkpoint when the acknowledged prefix grew. After `close` (ownership lost) acks no longer
    checkpoint: the partition's new owner replays from the last checkpoint instead.
    """

    def __init__(self, partition_id: str, checkpoint: Position | None = None) -> None:
        self.partition_id = partition_id
        self.checkpoint = checkpoint
        """The highest position handed out for writing (what the store holds once written)."""
        self.highest_received: int | None = None
        self.closed = False
        self._lock = threading.Lock()
        self._order: deque[int] = deque()
        self._offsets: dict[int, str] = {}
        self._acked: set[int] = set()
        self._write_lock = threading.Lock()
        self._written: int | None = checkpoint.sequence_number if checkpoint else None

    def track(self, sequence_number: int, offset: str) -> bool:
        """Record a handed-out event; False for a closed tracker or an event already tracked (a replay)."""
        with self._lock:
            if self.closed or (self.highest_received is not None and sequence_number <= self.highest_received):
                return False
            self.highest_received = sequence_number
            self._order.append(sequence_number)
            self._offsets[sequence_number] = offset
            return True

    def ack(self, sequence_number: int) -> Position | None:
        """Mark an event finished; the new checkpoint when the fully acknowledged prefix grew, else None."""
        with self._lock:
            if self.closed or sequence_number not in self._offsets:
                return None
            self._acked.add(sequence_number)
            advanced: int | None = None
            while self._order and self._order[0] in self._acked:
                advanced = self._order.popleft()
                self._acked.discard(advanced)
                offset = self._offsets.pop(advanced)
            if advanced is None:
                return None
            self.checkpoint = Position(offset, advanced)
            return self.checkpoint

    def write(self, position: Position, writer) -> bool:
        """Run `writer(position)` unless a later checkpoint was already written (acks race each other to
        the store; the checkpoint must never move backwards). Returns whether it was written."""
        with self._write_lock:
            if self.closed or (self._written is not None and position.sequence_number <= self._written):
                return False
            writer(position)
            self._written = position.sequence_number
            return True

    def close(self) -> int:
        """Ownership ended: forget pending events; returns how many were still unfinished."""
        with self._lock:
            self.closed = True
            pending = len(self._order)
            self._order.clear()
            self._offsets.clear()
            self._acked.clear()
            return pending

    @property
    def pending(self) -> int:
        """Events handed out and not yet below the checkpoint."""
        with self._lock:
            return len(self._order)

    def lag(self) -> int:
        """Events received but not yet checkpointed."""
        with self._lock:
            if self.highest_received is None:
                return 0
            base = self.checkpoint.sequence_number if self.checkpoint else -1
            return max(0, self.highest_received - base)
