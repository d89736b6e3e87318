"""A projector that starts while a race is already running joins it from the race's meta.

Against a real Mosquitto, with the real producer and projector: the replay runs
before any projector does; the projector, started with no checkpoint, opens the
race from its retained meta, publishes a board flagged partial (``gaps`` > 0)
and keeps it up to date; a backward seek of the replay then rebuilds the exact
board. The holding of events that come before their race's meta is checked on
the projector's own decisions (``Projector.handle``) with a clock in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from functools import cache

import msgspec
import pytest

from broker.bus import Message, connect
from broker.mosquitto import Mosquitto
from chequered.contract import board, control, topics
from chequered.contract.control import Seek, SetSpeed
from chequered.contract.deadletter import DeadLetter
from chequered.contract.events import Event, SessionClosed, encode
from consumers.metrics import Registry
from consumers.projector import intake
from consumers.projector.core import resync_time
from consumers.projector.service import Projector, ProjectorSettings, run_projector
from consumers.standings.fold import snapshot
from simulator.live.producer import ReplaySpec, run_producer
from simulator.recording.io import load
from simulator.timeline.build import build
from tests.conftest import REPLAYS
from tests.consumers.projector.test_service import FAST, projecting
from tests.consumers.standings.test_fold import Script, fold
from tests.support.observe import Observer, observing
from tests.support.wait import until

WAIT_S = 20.0
RACE = "join-monterey"
SPEED = 100.0
"""Race seconds per second: about 130 events a second, the 4-hour race in 2.5 minutes
(the test seeks back and then runs it as fast as possible)."""
JOIN_AFTER = 150
"""Events on the wire before the projector starts."""


@cache
def _monterey() -> list[Event]:
    return build(load(REPLAYS / "alms-2013-monterey-race.json"), seed=1, race=RACE)


@contextlib.asynccontextmanager
async def replaying(url: str, events: list[Event], speed: float) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_producer(url, [ReplaySpec(RACE, events, speed=speed)], stop=stop)
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, WAIT_S)


async def command(url: str, witness: Observer, cmd: control.Command) -> None:
    """Send a replay command and wait for the producer's reply to it."""
    async with connect(url) as client:
        await client.publish(topics.topic(RACE, topics.CONTROL), control.encode(cmd), qos=1)

    def answered() -> bool:
        return any(s.reply is not None and s.reply.id == cmd.id for s in witness.statuses)

    await until(answered, WAIT_S, f"the reply to {cmd.id}")
    reply = next(s.reply for s in witness.statuses if s.reply is not None and s.reply.id == cmd.id)
    assert reply.ok, reply.error


async def test_a_projector_started_mid_race_joins_it_and_a_backward_seek_makes_it_exact(
    mosquitto: Mosquitto,
) -> None:
    events = _monterey()
    close = events[-1]
    assert isinstance(close, SessionClosed)
    witness = Observer(mosquitto.url, RACE)
    registry = Registry("join")
    async with observing(witness):
        await until(lambda: witness.connects, WAIT_S, "the witness subscribed")
        async with replaying(mosquitto.url, events, SPEED):
            await until(lambda: witness.last_event_seq >= JOIN_AFTER, WAIT_S, "the race running")
            async with projecting(mosquitto.url, registry=registry, client_id="join-projector"):
                await until(lambda: witness.snapshots, WAIT_S, "the projector's first board")
                first = witness.snapshots[0]
                # Joined midway: the board is there, and says it is partial.
                assert first.seq > JOIN_AFTER
                assert first.session.gaps > 0 and not first.session.finished
                assert len(first.cars) == len(events[0].entries)  # type: ignore[union-attr]
                # ... and it follows the race: deltas chain on that first snapshot.
                await until(
                    lambda: witness.view is not None and witness.view.seq >= first.seq + 60,
                    WAIT_S,
                    "deltas after the first board",
                )
                joined_view = witness.view
                assert joined_view is not None and joined_view.session.gaps == first.session.gaps
                assert sum(1 for d in witness.deltas if d.seq > first.seq) > 0
                assert witness.chain_breaks == 0
                assert registry.values()["joins"] == 1
                notice = [intake.decode_dead_letter(p) for p in witness.dead_letters]
                assert len(notice) == 1 and "joined midway" in notice[0].reason
                assert notice[0].seq is not None and notice[0].seq <= first.seq

                # The operator's resync: a backward seek replays the race from its
                # session_open; then the rest as fast as possible.
                await command(mosquitto.url, witness, Seek(t_ms=0, id="back"))
                await command(mosquitto.url, witness, SetSpeed(speed=None, id="flat-out"))

                def folded_to_the_end() -> bool:
                    last = max((s.last_seq or 0 for s in witness.statuses if s.state == "finished"),
                               default=0)  # fmt: skip
                    retained = witness.retained
                    return bool(last) and retained is not None and retained.seq == last

                await until(folded_to_the_end, WAIT_S, "the board at the race's last seq")
                final = witness.retained
                assert final is not None
    # The exact board: that of one uninterrupted fold of the whole stream ...
    assert witness.missing_seqs() == []
    assert final == witness.reference()
    # ... which is the official classification, and says nothing is missing.
    assert final.session.finished and final.session.gaps == 0
    official = [(r.car, r.laps, r.class_position, r.status) for r in close.classification]
    assert [(r.car, r.laps, r.class_position, r.result) for r in final.cars] == official
    # One chain from the first snapshot to the last, across the reset.
    assert witness.view == final and witness.chain_breaks == 0
    values = registry.values()
    assert values["resets"] == 1 and values["gaps"] == first.session.gaps


async def test_a_restart_without_checkpoint_joins_at_the_first_event_not_folded(
    mosquitto: Mosquitto,
) -> None:
    """The persistent session keeps what the stopped projector had not folded; restarted
    with no checkpoint, it joins there and counts as missing exactly what it had folded."""
    events = _monterey()
    witness = Observer(mosquitto.url, RACE)
    first_run, second_run = Registry("first"), Registry("second")
    async with observing(witness):
        await until(lambda: witness.connects, WAIT_S, "the witness subscribed")
        # The projector is subscribed before the race starts: it folds it from seq 1 ...
        stop, ready = asyncio.Event(), asyncio.Event()
        first = asyncio.create_task(
            run_projector(mosquitto.url, client_id="restarted", stop=stop, ready=ready,
                          registry=first_run, settings=FAST)
        )  # fmt: skip
        await asyncio.wait_for(ready.wait(), WAIT_S)
        async with replaying(mosquitto.url, events, SPEED):
            await until(lambda: witness.standings_seq >= 100, WAIT_S, "the first run's board")
            # ... until it stops; with no checkpoint folder its board is lost with it.
            stop.set()
            await asyncio.wait_for(first, WAIT_S)
            stopped = int(first_run.values()["applied"])  # seqs 1..stopped, each once
            await until(lambda: witness.standings_seq == stopped, WAIT_S, "its last board")
            assert witness.retained is not None and witness.retained.session.gaps == 0
            # The race goes on; the broker queues its events for the stopped session.
            await until(
                lambda: witness.last_event_seq >= stopped + 100, WAIT_S, "events queued for it"
            )
            async with projecting(mosquitto.url, registry=second_run, client_id="restarted"):
                await until(
                    lambda: any(s.seq > stopped for s in witness.snapshots),
                    WAIT_S,
                    "the restarted projector's board",
                )
                joined = next(s for s in witness.snapshots if s.seq > stopped)
                await until(
                    lambda: witness.view is not None and witness.view.seq >= joined.seq + 50,
                    WAIT_S,
                    "deltas after it",
                )
    # Joined at seq stopped + 1: every seq the first run had folded but the meta's is
    # missing from the new board, and nothing else.
    assert joined.session.gaps == stopped - 1
    values = second_run.values()
    assert (values["joins"], values["gaps"], values["duplicates"]) == (1, stopped - 1, 0)
    assert witness.chain_breaks == 0


# -- events that come before their race's meta: the projector's decisions --------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def events_message(event: Event) -> Message:
    return Message(topics.topic(event.race, topics.EVENTS), encode(event))


def meta_message(race: str, payload: bytes) -> Message:
    return Message(topics.topic(race, topics.META), payload, retain=True)


def race_of_laps() -> Script:
    s = Script(race="early")
    for lap in (1, 2, 3):
        s.lap("1", lap, lap * 90_000, 90_000)
        s.lap("2", lap, lap * 90_000 + 2_000, 90_000)
        s.lap("3", lap, lap * 100_000, 100_000)
    return s


def letters(projector: Projector) -> list[DeadLetter]:
    return [intake.decode_dead_letter(payload) for _, payload in projector.outbox]


def test_events_before_the_meta_are_held_then_the_race_joined() -> None:
    s = race_of_laps()
    clock = Clock()
    projector = Projector(settings=ProjectorSettings(join_wait_s=1.0), clock=clock)
    for event in s.events[5:8]:
        projector.handle(events_message(event))
    assert "early" not in projector.standings.races and projector.outbox == []
    assert projector.next_due() == 101.0  # the wait for the meta ends then
    projector.handle(meta_message("early", encode(s.events[0])))
    state = projector.standings.races["early"]
    # Joined at seq 6: seqs 2..5 missed; 6, 7, 8 folded.
    assert (state.seq, state.gaps) == (8, 4) and projector.held == {}
    assert projector.next_due() is None
    (notice,) = letters(projector)
    assert notice.seq == 6 and "4 earlier seqs not folded" in notice.reason
    values = projector.metrics
    assert (values.joins.value, values.held.value, values.gaps.value) == (1, 3, 4)
    # The board published says it is partial.
    (published,) = [p for t, p, _ in projector.publications() if t.endswith("/standings")]
    snap = board.decode_snapshot(published)
    assert snap.session.gaps == 4 and snap == snapshot(state)
    # A meta that comes again (every reconnection) changes nothing.
    projector.handle(meta_message("early", encode(s.events[0])))
    assert projector.standings.races["early"] is state


def test_a_race_whose_meta_never_comes_is_dead_lettered_as_unknown() -> None:
    s = race_of_laps()
    clock = Clock()
    projector = Projector(settings=ProjectorSettings(join_wait_s=1.0), clock=clock)
    for event in s.events[5:8]:
        projector.handle(events_message(event))
    assert not projector.expire_held()  # not yet
    clock.now += 1.0
    assert projector.expire_held()
    got = letters(projector)
    assert [d.seq for d in got] == [6, 7, 8]
    assert all("unknown" in d.reason for d in got)
    assert all(
        t == topics.topic(intake.UNKNOWN_RACE, topics.DEAD_LETTER) for t, _ in projector.outbox
    )
    assert projector.standings.races == {} and projector.held == {}


def test_holding_is_bounded_per_race_and_in_races() -> None:
    s = race_of_laps()
    projector = Projector(
        settings=ProjectorSettings(join_wait_events=2, join_wait_races=1), clock=Clock()
    )
    for event in s.events[5:9]:
        projector.handle(events_message(event))
    # Two held at most: the oldest two were dead-lettered.
    assert [d.seq for d in letters(projector)] == [6, 7]
    assert "more than 2 events held" in letters(projector)[0].reason
    # One race waiting at most: another's event is dead-lettered at once.
    other = msgspec.structs.replace(s.events[5], race="other")
    projector.handle(events_message(other))
    assert letters(projector)[-1].race == "other" and "unknown" in letters(projector)[-1].reason
    projector.outbox.clear()
    projector.handle(meta_message("early", encode(s.events[0])))
    state = projector.standings.races["early"]
    assert (state.seq, state.gaps) == (9, 6)  # joined at seq 8: 2..7 missing


def test_a_session_open_before_the_meta_opens_the_race_itself() -> None:
    s = race_of_laps()
    projector = Projector(clock=Clock())
    late = msgspec.structs.replace(s.events[1], seq=1)  # a stray lap before the open
    projector.handle(events_message(late))
    assert projector.held
    reopened = [msgspec.structs.replace(e, seq=e.seq + 1) for e in s.events]
    for event in reopened:
        projector.handle(events_message(event))
    # The stray lap came before the race opened: rejected as of an unknown race.
    (letter,) = letters(projector)
    assert letter.seq == 1 and "unknown" in letter.reason
    state = projector.standings.races["early"]
    # The session_open starts the race over: nothing after it is missing.
    assert state.gaps == 0 and state.seq == len(s.events) + 1
    assert snapshot(state).cars == snapshot(fold(s.events)).cars


def test_a_bad_meta_is_dead_lettered_and_an_empty_one_forgets_the_race() -> None:
    s = race_of_laps()
    projector = Projector(clock=Clock())
    projector.handle(meta_message("early", b"not json"))
    projector.handle(meta_message("early", encode(s.events[1])))  # a lap, not a session_open
    projector.handle(meta_message("other", encode(s.events[0])))  # another race's facts
    reasons = [d.reason for d in letters(projector)]
    assert len(reasons) == 3
    assert "invalid meta" in reasons[0]
    assert "is a lap, not a session_open" in reasons[1]
    assert "meta of race early on the topic of race other" in reasons[2]
    assert projector.standings.metas == {}
    projector.handle(meta_message("early", encode(s.events[0])))
    assert "early" in projector.standings.metas
    projector.handle(meta_message("early", b""))
    assert projector.standings.metas == {}
    assert projector.metrics.metas_in.value == 5


@pytest.mark.parametrize(
    ("t_ms", "text"), [(0, "0:00:00"), (1_500, "0:00:00"), (3_725_999, "1:02:04")]
)
def test_the_resync_hint_names_a_race_time_before_the_join(t_ms: int, text: str) -> None:
    assert resync_time(t_ms) == text
