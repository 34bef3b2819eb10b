"""A small Event Hubs-compatible AMQP 1.0 broker, so the unmodified azure-eventhub SDK can be tested locally.

It speaks real AMQP 1.0 through python-qpid-proton's protocol engine (Connection/Transport/Collector) driven
from a plain socket loop in one thread, and implements just the Event Hubs surface the SDK uses:

- SASL ANONYMOUS, then claims-based security: the `$cbs` node accepts every put-token;
- the `$management` node answers READ for `com.microsoft:eventhub` and `com.microsoft:partition`;
- sender links to `<hub>` or `<hub>/Partitions/<n>`; batches (message format 0x80013700) are unpacked into
  one event per data section; `x-opt-partition-key` is hashed to a partition, otherwise round-robin;
- receiver links on `<hub>/ConsumerGroups/<cg>/Partitions/<n>` with the selector filter on offset, sequence
  number or enqueued time; every event carries x-opt-sequence-number, x-opt-offset, x-opt-enqueued-time
  (and x-opt-partition-key when it has one);
- the `com.microsoft:epoch` link property: a receiver with the same or a higher epoch steals the partition
  from the current one (detached with amqp:link:stolen), a lower epoch is refused.

Events live in memory. Connect with `broker.connection_string()` (`UseDevelopmentEmulator=true`: plain TCP).

The SDK's AMQP stack reads performative fields by position, while proton leaves trailing null fields out, as
the spec allows. Every outgoing frame is therefore re-encoded with its performative (and the composite values
inside it) padded with nulls to the full field count. Incoming transfer frames are read as well, because the
message format (which marks a batch) is not exposed by proton's Python API.
"""

from __future__ import annotations

import logging
import re
import selectors
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cproton import ffi, lib
from proton import (
    Collector,
    Condition,
    Connection,
    Data,
    Delivery,
    Described,
    Endpoint,
    Event,
    Link,
    Message,
    Transport,
    TransportException,
    symbol,
    timestamp,
    ulong,
)

log = logging.getLogger(__name__)

BATCH_FORMAT = 0x80013700
MAX_MESSAGE_SIZE = 1024 * 1024
EPOCH = symbol("com.microsoft:epoch")
SELECTOR_FILTER = symbol("apache.org:selector-filter:string")

# Performatives and the composites inside them, by descriptor code -> number of fields (AMQP 1.0 spec).
FIELD_COUNTS = {
    0x10: 10,  # open
    0x11: 8,  # begin
    0x12: 14,  # attach
    0x13: 11,  # flow
    0x14: 11,  # transfer
    0x15: 6,  # disposition
    0x16: 3,  # detach
    0x17: 1,  # end
    0x18: 1,  # close
    0x1D: 3,  # error
    0x23: 2,  # received
    0x25: 1,  # rejected
    0x27: 3,  # modified
    0x28: 11,  # source
    0x29: 7,  # target
    0x40: 1,  # sasl-mechanisms
    0x41: 3,  # sasl-init
    0x42: 1,  # sasl-challenge
    0x43: 1,  # sasl-response
    0x44: 2,  # sasl-outcome
}
_SELECTOR = re.compile(r"\s*amqp\.annotation\.x-opt-(offset|sequence-number|enqueued-time)\s*(>=|>)\s*'([^']*)'\s*")
_MESSAGE_ANNOTATIONS = 0x72
_DATA = 0x75


# ---------------------------------------------------------------- AMQP encoding at the byte level


def skip_value(buf: bytes, i: int) -> int:
    """The index just past the encoded AMQP value starting at `buf[i]`."""
    code = buf[i]
    i += 1
    if code == 0x00:  # described: descriptor, then value
        return skip_value(buf, skip_value(buf, i))
    width = code >> 4
    if width == 0x4:
        return i
    if width in (0x5, 0x6, 0x7, 0x8, 0x9):
        return i + {0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}[width]
    if width in (0xA, 0xC, 0xE):
        return i + 1 + buf[i]
    if width in (0xB, 0xD, 0xF):
        return i + 4 + struct.unpack_from(">I", buf, i)[0]
    raise ValueError(f"unknown AMQP constructor 0x{code:02x}")


def _descriptor_code(buf: bytes, i: int) -> int | None:
    """The numeric descriptor of the described value at `buf[i]` (None when symbolic)."""
    code = buf[i + 1]
    if code == 0x53:
        return buf[i + 2]
    if code == 0x80:
        return struct.unpack_from(">Q", buf, i + 2)[0]
    if code == 0x44:
        return 0
    return None


def _list_items(buf: bytes, i: int) -> tuple[list[tuple[int, int]], int]:
    """(start, end) of each item of the list at `buf[i]`, and the end of the list."""
    code = buf[i]
    if code == 0x45:
        return [], i + 1
    if code == 0xC0:
        size, count, pos = buf[i + 1], buf[i + 2], i + 3
        end = i + 2 + size
    elif code == 0xD0:
        size, count = struct.unpack_from(">II", buf, i + 1)
        pos, end = i + 9, i + 5 + size
    else:
        raise ValueError(f"expected an AMQP list, found constructor 0x{code:02x}")
    items = []
    for _ in range(count):
        nxt = skip_value(buf, pos)
        items.append((pos, nxt))
        pos = nxt
    return items, end


def encode_list(items: list[bytes]) -> bytes:
    body = b"".join(items)
    if not items:
        return b"\x45"
    if len(body) + 1 < 256 and len(items) < 256:
        return bytes((0xC0, len(body) + 1, len(items))) + body
    return b"\xd0" + struct.pack(">II", len(body) + 4, len(items)) + body


def pad_value(buf: bytes, i: int) -> tuple[bytes, int]:
    """The value at `buf[i]` re-encoded with every known composite padded to its full field count."""
    end = skip_value(buf, i)
    if buf[i] != 0x00:
        return buf[i:end], end
    code = _descriptor_code(buf, i)
    value_at = skip_value(buf, i + 1)
    if code not in FIELD_COUNTS or buf[value_at] not in (0x45, 0xC0, 0xD0):
        return buf[i:end], end
    spans, _ = _list_items(buf, value_at)
    items = [pad_value(buf, start)[0] for start, _ in spans]
    items += [b"\x40"] * (FIELD_COUNTS[code] - len(items))
    return buf[i:value_at] + encode_list(items), end


def pad_frame(frame: bytes) -> bytes:
    """An AMQP/SASL frame with its performative padded (see the module docstring); heartbeats unchanged."""
    if len(frame) <= 8:
        return frame
    body_at = frame[4] * 4
    performative, end = pad_value(frame, body_at)
    body = frame[8:body_at] + performative + frame[end:]
    return struct.pack(">I", 8 + len(body)) + frame[4:8] + body


class FrameSplitter:
    """Cuts a byte stream into protocol headers and whole frames."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        out = []
        while len(self._buffer) >= 8:
            if self._buffer[:4] == b"AMQP":
                size = 8
            else:
                size = struct.unpack_from(">I", self._buffer, 0)[0]
            if len(self._buffer) < size:
                break
            out.append(bytes(self._buffer[:size]))
            del self._buffer[:size]
        return out


def decode_performative(frame: bytes) -> tuple[int, int | None, list[Any]]:
    """(channel, descriptor code, fields) of an AMQP frame, decoded with proton's codec."""
    channel = struct.unpack_from(">H", frame, 6)[0]
    body_at = frame[4] * 4
    if len(frame) <= body_at:
        return channel, None, []
    end = skip_value(frame, body_at)
    data = Data()
    data.decode(frame[body_at:end])
    value = _owned(data.get_object())
    if not isinstance(value, Described):
        return channel, None, []
    return channel, int(value.descriptor), list(value.value or [])


def _data_object(data: Data) -> Any:
    """The first value held by a proton Data (a terminus filter, for one), or None."""
    data.rewind()
    return _owned(data.get_object()) if data.next() is not None else None


def _owned(value: Any) -> Any:
    """`value` with proton's memoryviews (which point into the decoder's buffer) copied to bytes."""
    if isinstance(value, memoryview):
        return value.tobytes()
    if isinstance(value, Described):
        return Described(value.descriptor, _owned(value.value))
    if isinstance(value, dict):
        return type(value)({_owned(k): _owned(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_owned(v) for v in value]
    return value


def split_sections(payload: bytes) -> list[tuple[int | None, bytes]]:
    """A message's sections as (descriptor code, encoded section)."""
    sections, pos = [], 0
    while pos < len(payload):
        end = skip_value(payload, pos)
        sections.append((_descriptor_code(payload, pos), payload[pos:end]))
        pos = end
    return sections


def decode_section(section: bytes) -> Any:
    data = Data()
    data.decode(section)
    value = _owned(data.get_object())
    return value.value if isinstance(value, Described) else value


def encode_annotations(annotations: dict[Any, Any]) -> bytes:
    data = Data()
    data.put_object(Described(ulong(_MESSAGE_ANNOTATIONS), {symbol(str(k)): v for k, v in annotations.items()}))
    return data.encode()


# ---------------------------------------------------------------- the hub's state


@dataclass
class StoredEvent:
    sequence_number: int
    offset: int
    enqueued_ms: int
    partition_key: str | None
    body: bytes
    """The inner message as published, without the broker's annotations."""
    wire: bytes
    """The message as delivered: the published sections plus the x-opt annotations."""


@dataclass
class Partition:
    pid: str
    events: list[StoredEvent] = field(default_factory=list)
    next_offset: int = 0
    receivers: list[_ReceiverState] = field(default_factory=list)

    def append(self, message: bytes, partition_key: str | None) -> StoredEvent:
        seq = len(self.events)
        now_ms = int(time.time() * 1000)
        annotations: dict[Any, Any] = {}
        sections = split_sections(message)
        for code, section in sections:
            if code == _MESSAGE_ANNOTATIONS:
                annotations.update({str(k): v for k, v in (decode_section(section) or {}).items()})
        annotations.update(
            {
                "x-opt-sequence-number": seq,
                "x-opt-offset": str(self.next_offset),
                "x-opt-enqueued-time": timestamp(now_ms),
            }
        )
        if partition_key is not None:
            annotations["x-opt-partition-key"] = partition_key
        head = [s for c, s in sections if c in (0x70, 0x71)]
        rest = [s for c, s in sections if c not in (0x70, 0x71, _MESSAGE_ANNOTATIONS)]
        wire = b"".join(head) + encode_annotations(annotations) + b"".join(rest)
        event = StoredEvent(seq, self.next_offset, now_ms, partition_key, message, wire)
        self.events.append(event)
        self.next_offset += len(message)
        return event

    def start_index(self, selector: str | None) -> int:
        """Where a receiver with this selector filter starts reading."""
        if not selector:
            return 0
        match = _SELECTOR.fullmatch(selector)
        if not match:
            raise ValueError(f"unsupported selector {selector!r}")
        kind, op, raw = match.groups()
        if kind == "offset" and raw == "-1":
            return 0
        if kind == "offset" and raw == "@latest":
            return len(self.events)
        value = int(raw)
        key: Callable[[StoredEvent], int] = {
            "offset": lambda e: e.offset,
            "sequence-number": lambda e: e.sequence_number,
            "enqueued-time": lambda e: e.enqueued_ms,
        }[kind]
        for index, event in enumerate(self.events):
            if key(event) > value or (op == ">=" and key(event) == value):
                return index
        return len(self.events)


@dataclass
class _ReceiverState:
    link: Link
    partition: Partition
    consumer_group: str
    epoch: int | None
    cursor: int
    owner: _ConnectionHandler


class EventHub:
    """The partitions of one event hub, shared by all connections (used from the broker thread only)."""

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.created_ms = int(time.time() * 1000)
        self.partitions = [Partition(str(i)) for i in range(partitions)]
        self._round_robin = 0

    def partition_for_key(self, key: str) -> Partition:
        return self.partitions[zlib.crc32(key.encode()) % len(self.partitions)]

    def next_partition(self) -> Partition:
        self._round_robin = (self._round_robin + 1) % len(self.partitions)
        return self.partitions[self._round_robin]


# ---------------------------------------------------------------- one client connection


class _ConnectionHandler:
    """One accepted socket: proton engine in the middle, padding on the way out, sniffing on the way in."""

    def __init__(self, broker: EventHubBroker, sock: socket.socket) -> None:
        self.broker = broker
        self.sock = sock
        self.collector = Collector()
        self.connection = Connection()
        self.connection.collect(self.collector)
        self.transport = Transport(Transport.SERVER)
        self.transport.max_frame_size = 65536
        self.transport.idle_timeout = 120.0
        sasl = self.transport.sasl()
        sasl.allowed_mechs("ANONYMOUS")
        self.transport.bind(self.connection)
        self.inbound = FrameSplitter()
        self.outbound = FrameSplitter()
        self.out_buffer = bytearray()
        self.closed = False
        self.stalled = False
        self._ended_channels: set[int] = set()
        self._link_names: dict[tuple[int, int], str] = {}
        self._formats: dict[tuple[str, bytes], int] = {}
        self.receivers: list[_ReceiverState] = []

    # -- bytes in and out

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.transport.close_tail()
            self.process()
            self.close()
            return
        for frame in self.inbound.feed(data):
            if not self._sniff(frame):
                continue
            try:
                self._push(frame)
            except (TransportException, OverflowError) as exc:
                log.warning("test broker: closing a connection after a protocol error: %s", exc)
                self.close()
                return

    def _push(self, frame: bytes) -> None:
        """Feed a frame to proton in pieces no larger than its input capacity."""
        view = memoryview(frame)
        while view:
            capacity = self.transport.capacity()
            if capacity <= 0:
                raise TransportException(f"transport cannot take input (capacity {capacity})")
            self.transport.push(bytes(view[:capacity]))
            view = view[capacity:]
            self.process()

    def _sniff(self, frame: bytes) -> bool:
        """Remember link names by handle and the message format of each incoming delivery; False for a
        frame to drop. The SDK detaches management links after ending their session: those late frames on
        an ended channel are dropped here (proton would close the whole connection over them)."""
        if frame[:4] == b"AMQP" or frame[5] != 0 or len(frame) <= 8:
            return True
        channel, code, fields = decode_performative(frame)
        if code == 0x11:  # begin
            self._ended_channels.discard(channel)
        elif channel in self._ended_channels:
            return False
        elif code == 0x17:  # end
            self._ended_channels.add(channel)
        elif code == 0x12:  # attach
            self._link_names[(channel, int(fields[1]))] = fields[0]
        elif code == 0x14 and len(fields) > 3 and fields[3] is not None:  # transfer with a message format
            name = self._link_names.get((channel, int(fields[0])))
            if name is not None and fields[2] is not None:
                self._formats[(name, bytes(fields[2]))] = int(fields[3])
        return True

    def message_format(self, link: Link, delivery: Delivery) -> int:
        raw = lib.pn_delivery_tag(delivery._impl)  # Delivery.tag would decode binary tags as UTF-8
        return self._formats.pop((link.name, ffi.unpack(raw.start, raw.size)), 0)

    def flush(self) -> None:
        if self.closed or self.stalled:
            return
        pending = self.transport.pending()
        if pending > 0:
            data = self.transport.peek(pending)
            self.transport.pop(pending)
            for frame in self.outbound.feed(data):
                self.out_buffer += pad_frame(frame) if frame[:4] != b"AMQP" else frame
        elif pending < 0 and not self.out_buffer:
            self.close()
            return
        while self.out_buffer:
            try:
                sent = self.sock.send(self.out_buffer)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close()
                return
            del self.out_buffer[:sent]

    def tick(self, now: float) -> None:
        if not self.closed:
            self.transport.tick(now)
            self.process()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for receiver in list(self.receivers):
            self.broker.drop_receiver(receiver)
        self.broker.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

    # -- protocol events

    def process(self) -> None:
        while True:
            event = self.collector.peek()
            if event is None:
                break
            try:
                self._dispatch(event)
            except Exception:  # a broker bug must not kill the broker thread
                log.exception("test broker: error handling %s", event.type)
            self.collector.pop()
        self.flush()

    def _dispatch(self, event: Event) -> None:
        kind = event.type
        if kind == Event.CONNECTION_REMOTE_OPEN:
            self.connection.container = "latigo-test-broker"
            self.connection.open()
        elif kind == Event.SESSION_REMOTE_OPEN:
            event.session.open()
        elif kind == Event.LINK_REMOTE_OPEN:
            self._attach(event.link)
        elif kind in (Event.LINK_REMOTE_CLOSE, Event.LINK_REMOTE_DETACH):
            self._detach(event.link)
        elif kind == Event.SESSION_REMOTE_CLOSE:
            event.session.close()
        elif kind == Event.CONNECTION_REMOTE_CLOSE:
            self.connection.close()
        elif kind == Event.LINK_FLOW and event.link.is_sender:
            self.broker.pump_link(event.link)
        elif kind == Event.DELIVERY:
            self._delivery(event.link, event.delivery)

    def _attach(self, link: Link) -> None:
        link.source.copy(link.remote_source)
        link.target.copy(link.remote_target)
        try:
            if link.is_receiver:  # the client sends
                self._attach_incoming(link)
            else:
                self._attach_outgoing(link)
        except _Refused as refused:
            link.open()
            link.condition = Condition(refused.condition, refused.description)
            link.close()

    def _attach_incoming(self, link: Link) -> None:
        address = link.remote_target.address or ""
        node = self.broker.resolve(address)
        if node not in ("$cbs", "$management") and not isinstance(node, (EventHub, Partition)):
            raise _Refused("amqp:not-found", f"no entity at {address}")
        link.max_message_size = MAX_MESSAGE_SIZE
        link.open()
        link.flow(1000)

    def _attach_outgoing(self, link: Link) -> None:
        address = link.remote_source.address or ""
        node = self.broker.resolve(address)
        if node in ("$cbs", "$management"):
            link.open()
            return
        if not isinstance(node, Partition) or "/consumergroups/" not in address.lower():
            raise _Refused("amqp:not-found", f"no consumer group partition at {address}")
        selector = None
        filters = _data_object(link.remote_source.filter)
        if filters:
            value = filters.get(SELECTOR_FILTER)
            selector = str(value.value if isinstance(value, Described) else value)
        try:
            start = node.start_index(selector)
        except ValueError as exc:
            raise _Refused("amqp:not-implemented", str(exc)) from None
        props = link.remote_properties or {}
        epoch = props.get(EPOCH)
        group = re.split(r"/consumergroups/", address, flags=re.I)[1].split("/")[0]
        state = _ReceiverState(link, node, group, None if epoch is None else int(epoch), start, self)
        self.broker.add_receiver(state)  # raises _Refused for a lower epoch
        self.receivers.append(state)
        link.max_message_size = MAX_MESSAGE_SIZE
        if epoch is not None:
            link.properties = {EPOCH: epoch}
        link.open()
        self.broker.pump_link(link)

    def _detach(self, link: Link) -> None:
        for receiver in [r for r in self.receivers if r.link == link]:
            self.broker.drop_receiver(receiver)
        if link.state & Endpoint.LOCAL_ACTIVE:
            link.close()

    def _delivery(self, link: Link, delivery: Delivery) -> None:
        if link.is_sender:
            if delivery.updated or delivery.remote_state:
                delivery.settle()
            return
        if delivery.partial or not delivery.readable:
            return
        payload = link.recv(delivery.pending) or b""
        message_format = self.message_format(link, delivery)
        link.advance()
        node = self.broker.resolve(link.remote_target.address or "")
        if node in ("$cbs", "$management"):
            self._request(link, node, payload)
            delivery.update(Delivery.ACCEPTED)
        else:
            try:
                self.broker.publish(node, payload, message_format)
                delivery.update(Delivery.ACCEPTED)
            except ValueError as exc:
                delivery.local.condition = Condition("amqp:decode-error", str(exc))
                delivery.update(Delivery.REJECTED)
        delivery.settle()
        if link.credit < 500:
            link.flow(1000 - link.credit)

    def _request(self, link: Link, node: str, payload: bytes) -> None:
        request = Message()
        request.decode(payload)
        props = request.properties or {}
        if node == "$cbs":
            status, description, body = 202, "Accepted", None
        else:
            status, description, body = self.broker.management(props)
        reply = Message(
            correlation_id=request.id,
            properties={"status-code": status, "status-description": description},
            body=body,
        )
        candidates = [
            c for c in self.broker.links_of(self.connection) if c.is_sender and c.remote_source.address == node
        ]
        candidates.sort(key=lambda c: c.session != link.session)  # the request's own session first
        if candidates:
            candidates[0].delivery(str(time.monotonic_ns()))
            candidates[0].send(reply.encode())
            candidates[0].advance()


class _Refused(Exception):
    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.condition, self.description = condition, description


# ---------------------------------------------------------------- the broker


class EventHubBroker:
    """Listens on 127.0.0.1 (a free port unless given) and serves one event hub from a background thread."""

    def __init__(self, hub: str = "latigo-tasks", partitions: int = 4, host: str = "127.0.0.1", port: int = 0) -> None:
        self.hub = EventHub(hub, partitions)
        self.host = host
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._handlers: dict[socket.socket, _ConnectionHandler] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._calls: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stalled: list[_ConnectionHandler] = []

    # -- life cycle

    def start(self) -> EventHubBroker:
        self._selector.register(self._listener, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="eventhub-broker", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake()
        if self._thread:
            self._thread.join(timeout=10)
        for handler in [*self._handlers.values(), *self._stalled]:
            handler.close()
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> EventHubBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def connection_string(self, key_name: str = "x", key: str = "y") -> str:
        return (
            f"Endpoint=sb://{self.host}:{self.port};SharedAccessKeyName={key_name};SharedAccessKey={key};"
            f"EntityPath={self.hub.name};UseDevelopmentEmulator=true"
        )

    # -- looking inside (thread-safe: run in the broker thread)

    def call(self, fn: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run `fn` in the broker thread and return its result."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = fn()
            except Exception as exc:  # handed back to the caller
                box["error"] = exc
            done.set()

        with self._lock:
            self._calls.append(run)
        self._wake()
        if not done.wait(timeout):
            raise TimeoutError("test broker did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def event_counts(self) -> dict[str, int]:
        return self.call(lambda: {p.pid: len(p.events) for p in self.hub.partitions})

    def receiver_count(self) -> int:
        return self.call(lambda: sum(len(p.receivers) for p in self.hub.partitions))

    def stall_connections(self) -> None:
        """Stop serving every current connection without closing it (a half-open TCP connection, the way a
        consumer can go silent in the field); new connections are served normally."""

        def stall() -> None:
            for handler in list(self._handlers.values()):
                handler.stalled = True
                for receiver in list(handler.receivers):
                    self.drop_receiver(receiver)
                self.forget(handler)
                self._stalled.append(handler)

        self.call(stall)

    def disconnect_all(self) -> None:
        """Drop every client connection abruptly (as a network failure would)."""

        def drop() -> None:
            for handler in list(self._handlers.values()):
                handler.close()

        self.call(drop)

    # -- the loop

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self) -> None:
        next_tick = 0.0
        while not self._stopping:
            timeout = max(0.0, min(1.0, next_tick - time.monotonic())) if next_tick else 1.0
            for key, mask in self._selector.select(timeout):
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                elif mask & selectors.EVENT_READ:
                    self._guarded(key.data, key.data.on_readable)
            with self._lock:
                calls, self._calls = self._calls, []
            for call in calls:
                call()
            now = time.monotonic()
            if now >= next_tick:
                for handler in list(self._handlers.values()):
                    self._guarded(handler, lambda h=handler: h.tick(time.time()))
                next_tick = now + 0.5
            for handler in list(self._handlers.values()):
                self._guarded(handler, handler.process)
                if not handler.closed:  # wait for writability only while output is queued
                    events = selectors.EVENT_READ | (selectors.EVENT_WRITE if handler.out_buffer else 0)
                    if self._selector.get_key(handler.sock).events != events:
                        self._selector.modify(handler.sock, events, handler)

    @staticmethod
    def _guarded(handler: _ConnectionHandler, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # one broken connection must not stop the broker
            log.exception("test broker: dropping a connection after an internal error")
            handler.close()

    def _accept(self) -> None:
        try:
            sock, _ = self._listener.accept()
        except OSError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        handler = _ConnectionHandler(self, sock)
        self._handlers[sock] = handler
        self._selector.register(sock, selectors.EVENT_READ, handler)

    def forget(self, handler: _ConnectionHandler) -> None:
        if self._handlers.pop(handler.sock, None) is not None:
            try:
                self._selector.unregister(handler.sock)
            except (KeyError, ValueError):
                pass

    def links_of(self, connection: Connection) -> list[Link]:
        links, link = [], connection.link_head(Endpoint.LOCAL_ACTIVE)
        while link:
            links.append(link)
            link = link.next(Endpoint.LOCAL_ACTIVE)
        return links

    # -- Event Hubs semantics

    def resolve(self, address: str) -> Any:
        """'$cbs', '$management', the EventHub, or a Partition for an address (URL or path)."""
        path = re.sub(r"^[a-z]+://[^/]*", "", address).strip("/")
        if path in ("$cbs", "$management"):
            return path
        parts = path.split("/")
        if not parts or parts[0].lower() != self.hub.name.lower():
            return None
        if len(parts) == 1:
            return self.hub
        if parts[-2].lower() == "partitions" and parts[-1].isdigit() and int(parts[-1]) < len(self.hub.partitions):
            return self.hub.partitions[int(parts[-1])]
        return None

    def publish(self, node: EventHub | Partition, payload: bytes, message_format: int) -> None:
        sections = split_sections(payload)
        key = None
        for code, section in sections:
            if code == _MESSAGE_ANNOTATIONS:
                key = (decode_section(section) or {}).get(symbol("x-opt-partition-key"))
        if message_format == BATCH_FORMAT:
            messages = [bytes(decode_section(s)) for c, s in sections if c == _DATA]
        else:
            messages = [payload]
        if isinstance(node, Partition):
            partition = node
        elif key is not None:
            partition = self.hub.partition_for_key(str(key))
        else:
            partition = self.hub.next_partition()
        for message in messages:
            partition.append(message, None if key is None else str(key))
        self.pump_partition(partition)

    def management(self, props: dict[Any, Any]) -> tuple[int, str, Any]:
        operation, kind, name = props.get("operation"), props.get("type"), props.get("name")
        if operation != "READ":
            return 400, f"unsupported operation {operation!r}", None
        if name != self.hub.name:
            return 404, f"no event hub {name!r}", None
        if kind == "com.microsoft:eventhub":
            return 200, "OK", {
                "name": self.hub.name,
                "type": "com.microsoft:eventhub",
                "created_at": timestamp(self.hub.created_ms),
                "partition_count": len(self.hub.partitions),
                "partition_ids": [p.pid for p in self.hub.partitions],
            }
        if kind == "com.microsoft:partition":
            pid = str(props.get("partition"))
            if not pid.isdigit() or int(pid) >= len(self.hub.partitions):
                return 404, f"no partition {pid!r}", None
            partition = self.hub.partitions[int(pid)]
            last = partition.events[-1] if partition.events else None
            return 200, "OK", {
                "name": self.hub.name,
                "type": "com.microsoft:partition",
                "partition": pid,
                "begin_sequence_number": 0,
                "last_enqueued_sequence_number": last.sequence_number if last else -1,
                "last_enqueued_offset": str(last.offset) if last else "-1",
                "last_enqueued_time_utc": timestamp(last.enqueued_ms if last else 0),
                "is_partition_empty": last is None,
            }
        return 400, f"unsupported type {kind!r}", None

    def add_receiver(self, state: _ReceiverState) -> None:
        """Enforce epochs: the same or a higher epoch steals the partition, a lower one is refused."""
        rivals = [r for r in state.partition.receivers if r.consumer_group.lower() == state.consumer_group.lower()]
        for rival in rivals:
            if rival.epoch is not None and (state.epoch is None or state.epoch < rival.epoch):
                raise _Refused(
                    "amqp:link:stolen" if state.epoch is not None else "amqp:resource-locked",
                    f"receiver with epoch {state.epoch} refused: a receiver with epoch {rival.epoch} exists",
                )
        for rival in rivals:
            if state.epoch is not None:
                self.drop_receiver(rival)
                rival.link.condition = Condition(
                    "amqp:link:stolen",
                    f"New receiver with higher epoch of '{state.epoch}' is created hence current receiver "
                    f"with epoch '{rival.epoch}' is getting disconnected.",
                )
                rival.link.close()
                rival.owner.flush()
        state.partition.receivers.append(state)

    def drop_receiver(self, state: _ReceiverState) -> None:
        if state in state.partition.receivers:
            state.partition.receivers.remove(state)
        if state in state.owner.receivers:
            state.owner.receivers.remove(state)

    def pump_partition(self, partition: Partition) -> None:
        for receiver in list(partition.receivers):
            self._pump(receiver)

    def pump_link(self, link: Link) -> None:
        for partition in self.hub.partitions:
            for receiver in partition.receivers:
                if receiver.link == link:
                    self._pump(receiver)
                    return

    def _pump(self, receiver: _ReceiverState) -> None:
        link, events = receiver.link, receiver.partition.events
        if not link.state & Endpoint.LOCAL_ACTIVE:
            return
        settled = link.remote_snd_settle_mode == Link.SND_SETTLED
        while link.credit > 0 and receiver.cursor < len(events):
            event = events[receiver.cursor]
            delivery = link.delivery(f"{receiver.partition.pid}:{event.sequence_number}")
            link.send(event.wire)
            link.advance()
            if settled:
                delivery.settle()
            receiver.cursor += 1
        receiver.owner.flush()
