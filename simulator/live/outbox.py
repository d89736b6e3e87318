"""A race's messages on their way to the broker: batching, a window in flight, resend.

The acknowledgement (PUBACK at QoS 1) calls back into the outbox: no task or
wait per message. The outbox keeps
every events message not yet acknowledged, in order, and the seq of the last
one acknowledged; after a reconnect it sends those again (a consumer drops the
duplicates by seq). Part of the producer's asyncio shell.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec

from broker.bus import Bus
from chequered.contract import topics
from chequered.contract.events import Event, encode


@dataclass(frozen=True, slots=True)
class ProducerSettings:
    """Every limit of the producer, with its default."""

    max_batch_events: int = 500
    """Most events in one MQTT message when several are due at once."""
    max_batch_bytes: int = 256 * 1024
    """Most bytes in one batched MQTT message (a larger single event still goes alone)."""
    window: int = 64
    """Publishes in flight (awaiting PUBACK) per race: a race whose window is full takes
    no more events until acknowledgements come back."""
    races_per_connection: int = 25
    """Races whose messages share one MQTT connection (and one read of its PUBACKs).
    Each race of a shared connection also holds an idle connection of its own that
    carries its last will (MQTT has one will per connection)."""
    tick_s: float = 0.1
    """The producer's coalescing window: each race sends what it has due at most once
    per tick, as one message where it can, on a phase of its own within the tick (the
    races spread over it: no burst of every race at once). An event goes out at most
    this late against its race's clock (at 60x, 6 s of race time; at 1x, nothing a
    viewer sees), and is stamped as it goes. At 100 races at 60x: 52 µs of CPU per
    event at 5 ms, 38 at 20 ms, 19 at 50 ms, 13 at 100 ms (docs/PERFORMANCE.md)."""
    status_interval_s: float = 1.0
    """Status refresh while running; state changes and replies are published at once."""
    reconnect_min_s: float = 0.1
    """Longest wait before the first reconnect; doubles per failed attempt (full jitter:
    each wait is drawn from zero to that, ``broker.backoff``)."""
    reconnect_max_s: float = 5.0
    """Longest wait between reconnect attempts."""
    max_command_bytes: int = 4096
    """Larger control payloads are rejected unread."""
    max_pending_commands: int = 100
    """Control payloads waiting to be handled; more are rejected (a flood, not a person)."""
    keepalive_s: int = 10
    """MQTT keepalive: with nothing else to send, a ping this often; the broker drops the
    connection (and publishes the last will) after 1.5 times this without a packet."""


def batch_payload(race: str, parts: Sequence[bytes]) -> bytes:
    """An ``events.Batch`` of already encoded events, byte for byte as msgspec encodes it."""
    return b'{"kind":"batch","race":%s,"events":[%s]}' % (
        msgspec.json.encode(race),
        b",".join(parts),
    )


def group_messages(
    parts: Sequence[bytes], max_events: int, max_bytes: int, overhead: int = 0
) -> list[tuple[int, int]]:
    """Split encoded events into messages: (first, last) index pairs, in order.

    ``overhead`` is the size of a batch's envelope, counted against ``max_bytes``.
    """
    out: list[tuple[int, int]] = []
    first = 0
    while first < len(parts):
        last, size = first, overhead + len(parts[first])
        while (
            last + 1 < len(parts)
            and last + 1 - first < max_events
            and size + 1 + len(parts[last + 1]) <= max_bytes
        ):
            last += 1
            size += 1 + len(parts[last])
        out.append((first, last))
        first = last + 1
    return out


@dataclass(slots=True)
class _Sent:
    last_seq: int
    payload: bytes
    acked: bool = False


def _nothing() -> None:
    pass


@dataclass
class Outbox:
    race: str
    settings: ProducerSettings
    pending: deque[_Sent] = field(default_factory=deque)
    """Events messages sent and not yet acknowledged, in seq order."""
    acked_seq: int = 0
    """Every event up to this seq has been acknowledged by the broker."""
    meta: bytes = b""
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("events", "messages", "batches", "resent"), 0)
    )
    in_flight: int = 0
    """Publishes of this connection not yet acknowledged."""
    on_room: Callable[[], None] = _nothing
    """Called when an acknowledgement brings ``in_flight`` back under the window."""
    on_idle: Callable[[], None] = _nothing
    """Called when the last publish in flight is acknowledged."""
    epoch: int = 0
    """Connections so far: an acknowledgement from an earlier one is not counted."""

    def start(self, bus: Bus, opening: list[Event]) -> None:
        """On a new connection: retain the race facts, then either the opening events
        (first connection) or whatever the last connection left unacknowledged."""
        self.epoch += 1
        self.in_flight = 0
        if opening:
            self.meta = encode(opening[0])
        self.send(bus, topics.topic(self.race, topics.META), self.meta, retain=True)
        if opening:
            self.events(bus, opening)
            return
        resend = list(self.pending)
        self.counts["resent"] += len(resend)
        for entry in resend:
            entry.acked = False
            self._send_events(bus, entry)

    def room(self) -> bool:
        """Whether the window lets more events go now."""
        return self.in_flight < self.settings.window

    def events(self, bus: Bus, events: Sequence[Event]) -> None:
        if not events:
            return
        parts = [encode(event) for event in events]
        settings = self.settings
        overhead = len(batch_payload(self.race, ()))
        limits = (settings.max_batch_events, settings.max_batch_bytes, overhead)
        for first, last in group_messages(parts, *limits):
            if first == last:
                payload = parts[first]
            else:
                payload = batch_payload(self.race, parts[first : last + 1])
                self.counts["batches"] += 1
            entry = _Sent(events[last].seq, payload)
            self.pending.append(entry)
            self.counts["messages"] += 1
            self._send_events(bus, entry)
        self.counts["events"] += len(events)

    def _send_events(self, bus: Bus, entry: _Sent) -> None:
        self.send(bus, topics.topic(self.race, topics.EVENTS), entry.payload, entry=entry)

    def send(
        self,
        bus: Bus,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        entry: _Sent | None = None,
    ) -> None:
        """Publish at QoS 1 without waiting; the acknowledgement settles ``entry``.

        The bus writes messages in the order of the calls, so the wire keeps the
        order of sends. The window is the caller's to respect (``room``): a status
        or a command's events may go beyond it.
        """
        epoch = self.epoch

        def acknowledged() -> None:
            if epoch != self.epoch:
                return  # an earlier connection's: what it carried is being sent again
            self.in_flight -= 1
            if entry is not None:
                entry.acked = True
                while self.pending and self.pending[0].acked:
                    self.acked_seq = self.pending.popleft().last_seq
            if self.in_flight == self.settings.window - 1:
                self.on_room()
            if self.in_flight == 0:
                self.on_idle()

        self.in_flight += 1
        try:
            bus.publish_nowait(topic, payload, acknowledged, qos=1, retain=retain)
        except BaseException:
            self.in_flight -= 1
            raise
