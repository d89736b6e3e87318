"""A witness on the broker: records a race's events, standings, deltas and dead letters.

It holds a persistent QoS 1 session and reconnects (with backoff) when the
broker goes away, so that it sees every event the producer got acknowledged
even across broker restarts. From what it saw, a test folds the reference
standings and checks the projector's delta chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt

from broker.bus import connect
from chequered.contract import board, control, topics
from chequered.contract.events import Event, PayloadError, decode, unbatch
from consumers.standings.fold import Standings, snapshot

RECONNECT_S = 0.1


@dataclass
class Observer:
    url: str
    race: str
    client_id: str = field(default_factory=lambda: f"witness-{uuid.uuid4().hex[:8]}")
    events: dict[int, Event] = field(default_factory=dict)
    """Every event seen, by seq (redeliveries collapse)."""
    event_copies: int = 0
    snapshots: list[board.Snapshot] = field(default_factory=list)
    deltas: list[board.Delta] = field(default_factory=list)
    dead_letters: list[bytes] = field(default_factory=list)
    status: control.Status | None = None
    statuses: list[control.Status] = field(default_factory=list)
    retained: board.Snapshot | None = None
    """The latest snapshot received (the retained one on a fresh subscription)."""
    view: board.Snapshot | None = None
    """The board rebuilt from snapshots and deltas, as a reader would hold it."""
    chain_breaks: int = 0
    """Deltas that did not chain on the board held (a reader must wait for a snapshot)."""
    connects: int = 0
    bad_payloads: int = 0

    @property
    def standings_seq(self) -> int:
        return max(self.view.seq if self.view else 0, self.retained.seq if self.retained else 0)

    @property
    def last_event_seq(self) -> int:
        return max(self.events, default=0)

    def reference(self) -> board.Snapshot:
        """The standings of every event seen, folded once, in seq order, without a fault."""
        standings = Standings()
        for seq in sorted(self.events):
            with contextlib.suppress(ValueError):
                standings.step(self.events[seq])
        return snapshot(standings.races[self.race])

    def missing_seqs(self) -> list[int]:
        return [s for s in range(1, self.last_event_seq + 1) if s not in self.events]

    def _on(self, topic: str, payload: bytes) -> None:
        leaf = topics.leaf_of(topic)
        try:
            if leaf == topics.EVENTS:
                for event in unbatch(decode(payload)):
                    self.event_copies += 1
                    self.events.setdefault(event.seq, event)
            elif leaf == topics.STANDINGS and payload:
                snap = board.decode_snapshot(payload)
                self.snapshots.append(snap)
                self.retained = snap
                if self.view is None or snap.seq >= self.view.seq:
                    self.view = snap
            elif leaf == topics.STANDINGS_DELTA:
                delta = board.decode_delta(payload)
                self.deltas.append(delta)
                if self.view is not None and delta.seq <= self.view.seq:
                    return  # already in the board held
                if self.view is None or delta.prev_seq != self.view.seq:
                    self.chain_breaks += 1
                    return
                self.view = board.apply_delta(self.view, delta)
            elif leaf == topics.DEAD_LETTER:
                self.dead_letters.append(payload)
            elif leaf == topics.STATUS and payload:
                self.status = control.decode_status(payload)
                self.statuses.append(self.status)
        except (PayloadError, ValueError):
            self.bad_payloads += 1

    async def run(self) -> None:
        """Follow the race until cancelled, reconnecting to the same persistent session."""
        while True:
            with contextlib.suppress(aiomqtt.MqttError, OSError):
                async with connect(self.url, client_id=self.client_id, clean_session=False) as bus:
                    await bus.subscribe(topics.topic(self.race, "#"), qos=1)
                    self.connects += 1
                    async for message in bus.messages():
                        self._on(message.topic, message.payload)
            await asyncio.sleep(RECONNECT_S)  # backoff before reconnecting, not a sync


@contextlib.asynccontextmanager
async def observing(observer: Observer) -> AsyncIterator[Observer]:
    task = asyncio.create_task(observer.run())
    try:
        yield observer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
