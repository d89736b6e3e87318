"""The hostile feed's shell: what the injector returns goes on the wire in order.

A recording bus stands in for the broker: it keeps the order in which publishes
were written (a real client writes a message before its first wait) and lets
the test decide when each acknowledgement comes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec

from broker.bus import Message
from chequered.contract import control, topics
from chequered.contract.control import Status
from chequered.contract.events import decode, encode, unbatch
from chequered.contract.injected import Injected
from simulator.live.faults import FaultRates, Injector
from simulator.live.feed import Feed
from simulator.live.hostile import HostileBus, hostile
from tests.support.feed import tiny_race
from tests.support.wait import until

RACE = "hostile"


class RecordingBus:
    """Writes each publish at once, in call order; acknowledges when told (or at once)."""

    def __init__(self, *, hold_acks: bool = False) -> None:
        self.wire: list[tuple[str, bytes, bool]] = []
        self.hold_acks = hold_acks
        self.acks: list[asyncio.Future[None]] = []

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        self.wire.append((topic, payload, retain))
        if self.hold_acks:
            ack = asyncio.get_running_loop().create_future()
            self.acks.append(ack)
            await ack

    async def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        pass

    async def messages(self) -> AsyncIterator[Message]:
        for _ in ():
            yield _

    def leaf(self, name: str) -> list[bytes]:
        return [p for t, p, _ in self.wire if t == topics.topic(RACE, name)]


def payloads() -> list[bytes]:
    feed = Feed.create(RACE, tiny_race(RACE, laps=6), now=0.0, speed=None)
    return [encode(e) for e in feed.start(0.0) + feed.take(0.0, 10_000)]


def seqs(wire: list[bytes]) -> list[int]:
    out: list[int] = []
    for payload in wire:
        try:
            out += [e.seq for e in unbatch(decode(payload))]
        except ValueError:
            continue
    return out


async def test_publishes_keep_the_injectors_order_without_waiting_for_each_ack() -> None:
    inner = RecordingBus(hold_acks=True)
    rates = FaultRates(seed=3, duplicate=0.2, drop=0.1, reorder=0.1, malformed=0.1)
    injector = Injector(RACE, rates)
    events = topics.topic(RACE, topics.EVENTS)
    sent = payloads()
    # What must go on the wire is what the injector says, in its order: replay it.
    replay = Injector(RACE, rates)
    expected = [o for p in sent for o in replay.message(p, 0.0) if o.payload]
    before_flush = len(expected)
    expected += [o for o in replay.flush(0.0) if o.payload]
    async with hostile(inner, injector) as bus:
        assert isinstance(bus, HostileBus)
        # The producer's way: each publish is a task of its own, started in order.
        tasks = [asyncio.create_task(bus.publish(events, p, qos=1)) for p in sent]
        await until(lambda: len(inner.wire) == before_flush, 5,
                    "every publish written while none is acknowledged")  # fmt: skip
        # Each published message waits for its own acknowledgement; a dropped or held
        # back one is done with at once (the producer's window moves on).
        waiting = sum(not t.done() for t in tasks)
        c = injector.counts
        assert waiting == len(sent) - c["drop"] - c["reorder"] - injector.held > 0
        inner.hold_acks = False
        for ack in inner.acks:
            ack.set_result(None)
        await until(lambda: all(t.done() for t in tasks), 5, "every publish acknowledged")
    on_wire = [(t, p) for t, p, _ in inner.wire]
    assert [t for t, _ in on_wire] == [topics.topic(RACE, o.leaf) for o in expected]
    assert [p for t, p in on_wire if t == events] == [
        o.payload for o in expected if o.leaf == topics.EVENTS
    ]
    labels = [msgspec.json.decode(p, type=Injected) for p in inner.leaf(topics.INJECTED)]
    assert [label.fault for label in labels] == [r.fault for r in injector.record]
    assert sorted(set(seqs(inner.leaf(topics.EVENTS)))) == sorted(
        set(seqs(sent)) - {r.first_seq for r in injector.record if r.fault == "drop"}
    )


async def test_a_stall_holds_the_status_behind_the_events_and_the_status_counts_faults() -> None:
    inner = RecordingBus()
    injector = Injector(RACE, FaultRates(seed=1, stall=1.0, stall_s=0.05, drop=0.5))
    events, status_topic = topics.topic(RACE, topics.EVENTS), topics.topic(RACE, topics.STATUS)
    sent = payloads()
    status = control.encode(Status(race=RACE, state="running"))
    async with hostile(inner, injector) as bus:
        first = asyncio.create_task(bus.publish(events, sent[0]))  # never touched
        held = asyncio.create_task(bus.publish(events, sent[2]))  # stalled first
        told = asyncio.create_task(bus.publish(status_topic, status, retain=True))
        await asyncio.gather(first, held, told)
    topics_in_order = [t for t, _, _ in inner.wire if t != topics.topic(RACE, topics.INJECTED)]
    assert topics_in_order[-1] == status_topic  # it waited behind the stalled message
    retained = [(p, r) for t, p, r in inner.wire if t == status_topic]
    assert len(retained) == 1 and retained[0][1] is True
    counted = control.decode_status(retained[0][0]).injected
    assert counted == {k: v for k, v in injector.counts.items() if v}
    assert counted is not None and counted["stall"] == 1


async def test_a_clean_stop_ends_a_stall_at_once() -> None:
    inner = RecordingBus()
    injector = Injector(RACE, FaultRates(seed=1, stall=1.0, stall_s=3600.0))
    events, status_topic = topics.topic(RACE, topics.EVENTS), topics.topic(RACE, topics.STATUS)
    offline = control.encode(Status(race=RACE, state="offline"))
    async with hostile(inner, injector) as bus:
        stalled = asyncio.create_task(bus.publish(events, payloads()[2]))
        await until(lambda: injector.counts["stall"] == 1, 5, "the stall begun")
        goodbye = asyncio.create_task(bus.publish(status_topic, offline, retain=True))
        await until(lambda: stalled.done() and goodbye.done(), 5, "the stall cut short")
    assert [t for t, _, _ in inner.wire][-2:] == [events, status_topic]


async def test_without_an_injector_the_bus_is_the_broker_itself() -> None:
    inner = RecordingBus()
    async with hostile(inner, None) as bus:
        assert bus is inner
