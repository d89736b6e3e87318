"""Client ids cannot be taken over, and a projector that lost events gets them back.

Against real Mosquittos: the secure profile (broker/secure/) ties client ids to
users, so the read-only gateway user cannot drop the projector or a producer by
connecting with their ids; on an open broker, where it can, the projector finds
the hole in the race's seqs and asks the producer to send the race again
(control ``resend``), and ends with the exact standings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from broker.bus import Bus, BusError, connect
from broker.mosquitto import Mosquitto
from chequered.contract import board, control, topics
from chequered.contract import events as ev
from chequered.contract.control import Status
from consumers.metrics import Registry
from consumers.projector.service import ProjectorSettings, run_projector
from simulator.live.outbox import ProducerSettings
from simulator.live.producer import ReplaySpec, run_producer
from tests.broker.test_secure import secure_config, sessions, url
from tests.conftest import requires_mosquitto
from tests.support.feed import reference_fold, tiny_race
from tests.support.wait import until

pytestmark = requires_mosquitto

WAIT_S = 60.0
FAST = ProjectorSettings(reconnect_min_s=0.05, reconnect_max_s=0.2, resend_interval_s=1.0)


@dataclass
class Race:
    """What readers see of one race: the producer's status, the events, the standings."""

    race: str
    statuses: list[Status] = field(default_factory=list)
    last_event_seq: int = 0
    snapshot: board.Snapshot | None = None
    resends: list[bytes] = field(default_factory=list)

    def on(self, topic: str, payload: bytes) -> None:
        leaf = topics.leaf_of(topic)
        if leaf == topics.STATUS:
            self.statuses.append(control.decode_status(payload))
        elif leaf == topics.EVENTS:
            last = list(ev.unbatch(ev.decode(payload)))[-1]
            self.last_event_seq = max(self.last_event_seq, last.seq)
        elif leaf == topics.STANDINGS:
            self.snapshot = board.decode_snapshot(payload)
        elif leaf == topics.CONTROL:
            self.resends.append(payload)

    def past(self, seq: int) -> Callable[[], bool]:
        """A condition: an event after ``seq`` was published."""
        return lambda: self.last_event_seq > seq

    def done(self) -> bool:
        status = self.statuses[-1] if self.statuses else None
        return (
            status is not None
            and status.state == "finished"
            and self.snapshot is not None
            and self.snapshot.seq == status.last_seq
        )


@asynccontextmanager
async def reading(bus: Bus, race: Race, leaves: tuple[str, ...]) -> AsyncIterator[None]:
    for leaf in leaves:
        await bus.subscribe(topics.topic(race.race, leaf))

    async def pump() -> None:
        async for message in bus.messages():
            race.on(message.topic, message.payload)

    task = asyncio.create_task(pump())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@asynccontextmanager
async def running(coroutine_factory: object) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(coroutine_factory(stop))  # type: ignore[operator]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


def laps_by_car(snapshot: board.Snapshot) -> dict[str, int]:
    return {row.car: row.laps for row in snapshot.cars}


# -- the secure profile: ids tied to users -----------------------------------------


@pytest.fixture
def secure_broker(tmp_path: object) -> Iterator[Mosquitto]:
    from pathlib import Path

    workdir = Path(str(tmp_path))
    broker = Mosquitto(workdir=workdir, base_config=secure_config(workdir))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_the_gateway_user_cannot_take_over_the_projector_or_a_producer(
    secure_broker: Mosquitto,
) -> None:
    race = Race("takeover-secure")
    timeline = tiny_race(race.race, cars=4, laps=30, lap_ms=12_000)
    registry = Registry("chequered_projector")
    ready = asyncio.Event()

    def project(stop: asyncio.Event) -> object:
        return run_projector(sessions(secure_broker, "projector"), stop=stop, ready=ready,
                             settings=FAST, registry=registry)  # fmt: skip

    def produce(stop: asyncio.Event) -> object:
        spec = ReplaySpec(race.race, timeline, speed=30)
        return run_producer(url(secure_broker, "producer"), [spec], stop=stop)

    async with running(project), connect(url(secure_broker, "gateway")) as reader:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        async with reading(reader, race, (topics.STATUS, topics.STANDINGS)), running(produce):
            await until(lambda: race.snapshot is not None and race.snapshot.seq > 20, WAIT_S,
                        "the projector to fold the first events")  # fmt: skip
            producer_ids = [f"chequered-producer-{race.race}", f"chequered-demo-{race.race}"]
            # The ids an intruder would try, on both listeners; none reaches the real ones.
            for port in (secure_broker.port, secure_broker.sessions_port or 0):
                for cid in ("projector", "chequered-projector", *producer_ids):
                    with contextlib.suppress(BusError):  # refused: no `chequered-` prefix
                        async with connect(url(secure_broker, "gateway", port=port),
                                           client_id=cid) as intruder:  # fmt: skip
                            await intruder.subscribe(topics.topic(race.race, topics.STATUS))
            await until(race.done, WAIT_S, "the standings of the finished race")
    assert registry.values()["reconnects"] == 0, secure_broker.log()
    assert registry.values()["gaps"] == 0
    assert "offline" not in [s.state for s in race.statuses[:-1]], "a producer was dropped"
    assert race.snapshot is not None and race.snapshot.session.gaps == 0
    assert laps_by_car(race.snapshot) == reference_fold(timeline).laps
    log = secure_broker.log()
    assert "as projector (" in log  # the projector's session is its user name


# -- an open broker: a taken-over session loses events, the projector gets them back -


async def test_events_lost_to_a_taken_over_session_are_sent_again(mosquitto: Mosquitto) -> None:
    race = Race("takeover-open")
    timeline = tiny_race(race.race, cars=6, laps=40, lap_ms=12_000)
    registry = Registry("chequered_projector")
    ready = asyncio.Event()
    client_id = "chequered-projector-open"

    def project(stop: asyncio.Event) -> object:
        return run_projector(mosquitto.url, client_id=client_id, stop=stop, ready=ready,
                             settings=FAST, registry=registry)  # fmt: skip

    def produce(stop: asyncio.Event) -> object:
        # A short tick: the race publishes every few ms, so that each takeover (as long
        # as the projector's reconnect) has events published while it lasts.
        return run_producer(mosquitto.url, [ReplaySpec(race.race, timeline, speed=20)],
                            stop=stop, settings=ProducerSettings(tick_s=0.005))  # fmt: skip

    leaves = (topics.STATUS, topics.EVENTS, topics.STANDINGS, topics.CONTROL)
    async with running(project), connect(mosquitto.url) as reader:
        await asyncio.wait_for(ready.wait(), WAIT_S)
        async with reading(reader, race, leaves), running(produce):
            await until(lambda: race.snapshot is not None and race.snapshot.seq > 20, WAIT_S,
                        "the projector to fold the first events")  # fmt: skip
            # Someone connects again and again with the projector's id and a clean session:
            # each time the broker drops the projector and forgets its session, so what is
            # published meanwhile never reaches it.
            # Each intruder holds on while the race moves on by a few events (or until the
            # projector, reconnecting, drops it in turn).
            start = race.last_event_seq
            while race.last_event_seq < start + 40:
                moved_on = race.past(race.last_event_seq + 5)
                with contextlib.suppress(BusError):
                    async with connect(mosquitto.url, client_id=client_id, clean_session=True):
                        await until(moved_on, WAIT_S, "the race to move on")
            await until(race.done, WAIT_S, "the standings of the finished race")
    values = registry.values()
    assert values["gaps"] > 0 and values["resends"] >= 1, values
    assert isinstance(control.decode_command(race.resends[0]), control.Resend)
    assert race.snapshot is not None and race.snapshot.session.gaps == 0
    assert laps_by_car(race.snapshot) == reference_fold(timeline).laps
