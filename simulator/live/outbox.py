"""A race's messages on their way to the broker: batching, a window in flight, resend.

Publish completion is the acknowledgement (PUBACK at QoS 1). The outbox keeps
every events message not yet acknowledged, in order, and the seq of the last
one acknowledged; after a reconnect it sends those again (a consumer drops the
duplicates by seq). Part of the producer's asyncio shell.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
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
    """Publishes in flight (awaiting PUBACK) per race; under the client's inflight limit (100)."""
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
    _window: asyncio.Semaphore = field(default_factory=asyncio.Semaphore)

    async def start(self, bus: Bus, group: asyncio.TaskGroup, opening: list[Event]) -> None:
        """On a new connection: retain the race facts, then either the opening events
        (first connection) or whatever the last connection left unacknowledged."""
        self._window = asyncio.Semaphore(self.settings.window)
        if opening:
            self.meta = encode(opening[0])
        await self.send(bus, group, topics.topic(self.race, topics.META), self.meta, retain=True)
        if opening:
            await self.events(bus, group, opening)
            return
        resend = list(self.pending)
        self.counts["resent"] += len(resend)
        for entry in resend:
            await self._send_events(bus, group, entry)

    async def events(self, bus: Bus, group: asyncio.TaskGroup, events: list[Event]) -> None:
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
            await self._send_events(bus, group, entry)
        self.counts["events"] += len(events)

    async def _send_events(self, bus: Bus, group: asyncio.TaskGroup, entry: _Sent) -> None:
        await self.send(
            bus, group, topics.topic(self.race, topics.EVENTS), entry.payload, entry=entry
        )

    async def send(
        self,
        bus: Bus,
        group: asyncio.TaskGroup,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        entry: _Sent | None = None,
    ) -> None:
        """Publish at QoS 1 without waiting for the acknowledgement, within the window.

        Tasks start in the order they are created and the client writes each
        message before its first await, so the wire keeps the order of sends.
        """
        window = self._window
        await window.acquire()
        group.create_task(self._publish(bus, window, topic, payload, retain, entry))

    async def _publish(
        self,
        bus: Bus,
        window: asyncio.Semaphore,
        topic: str,
        payload: bytes,
        retain: bool,
        entry: _Sent | None,
    ) -> None:
        try:
            await bus.publish(topic, payload, qos=1, retain=retain)
        finally:
            window.release()
        if entry is not None:
            entry.acked = True
            while self.pending and self.pending[0].acked:
                self.acked_seq = self.pending.popleft().last_seq
