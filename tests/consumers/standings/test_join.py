"""Joining a race midway: the fold opened from the race's retained meta (its session_open).

Hand-built races check the counts and the rules; whole replays, numbered as the
producer numbers them (``simulator.feed``), check that a board joined midway
orders the cars it has seen as an uninterrupted fold does, ends in the official
classification, and is exact again after a backward seek.
"""

from __future__ import annotations

import contextlib
from functools import cache

import msgspec
import pytest

from chequered.contract.board import Snapshot
from chequered.contract.events import (
    Clock,
    Event,
    Flag,
    Lap,
    Reset,
    SessionClosed,
    SessionOpened,
)
from consumers.standings.fold import (
    APPLIED,
    DUPLICATE,
    GAP,
    JOINED,
    MAX_JOIN_SEQ,
    MAX_RACES,
    Rejected,
    Standings,
    UnknownRace,
    snapshot,
)
from simulator.live.feed import Feed
from simulator.recording.io import load
from simulator.timeline.build import build
from tests.conftest import REPLAYS
from tests.consumers.standings.test_fold import Script, fold


def opening(events: list[Event]) -> SessionOpened:
    """The session_open a stream starts with: what the producer retains as the race's meta."""
    first = events[0]
    assert isinstance(first, SessionOpened)
    return first


def joined(meta: SessionOpened, events: list[Event]) -> Standings:
    """Standings that know ``meta`` and saw ``events`` only (the tail of a stream)."""
    standings = Standings()
    standings.remember(meta)
    for event in events:
        with contextlib.suppress(Rejected):
            standings.step(event)
    return standings


def three_laps() -> Script:
    s = Script([("1", "P"), ("2", "P"), ("3", "G")])
    for lap in (1, 2, 3):
        s.lap("1", lap, lap * 90_000, 90_000)
        s.lap("2", lap, lap * 90_000 + 2_000, 90_000 + lap)
        s.lap("3", lap, lap * 100_000, 100_000)
    return s


# -- the rules, by hand ------------------------------------------------------------


def test_joined_at_the_second_event_the_board_is_exact() -> None:
    # The producer retains its session_open (seq 1): seq 2 follows it directly.
    s = three_laps()
    standings = Standings()
    standings.remember(opening(s.events))
    outcomes = [standings.step(e) for e in s.events[1:]]
    assert outcomes == [JOINED] + [APPLIED] * (len(s.events) - 2)
    assert snapshot(standings.races[s.race]) == snapshot(fold(s.events))
    assert standings.races[s.race].gaps == 0


def test_joined_midway_the_missed_seqs_are_counted_and_the_board_says_so() -> None:
    s = three_laps()
    # Joined at car 1's second lap (seq 5): seqs 2..4 were never seen, the meta stands
    # for seq 1.
    first = s.events[4]
    assert isinstance(first, Lap) and (first.car, first.lap, first.seq) == ("1", 2, 5)
    standings = Standings()
    standings.remember(opening(s.events))
    assert standings.step(first) == JOINED
    state = standings.races[s.race]
    assert (state.seq, state.gaps) == (5, 3)
    for event in s.events[5:]:
        assert standings.step(event) == APPLIED
    snap = snapshot(state)
    assert snap.session.gaps == 3 and snap.seq == len(s.events)
    full = {row.car: row for row in snapshot(fold(s.events)).cars}
    for row in snap.cars:
        # Laps and order come from the lap numbers and times: absolute, not counted.
        assert (row.car, row.laps, row.position, row.gap_ms) == (
            row.car,
            full[row.car].laps,
            full[row.car].position,
            full[row.car].gap_ms,
        )
    # What the join could not see: laps in the stint count from the join, and the
    # bests are the best seen.
    assert snap.cars[0].stint_laps == 2 and full["1"].stint_laps == 3
    assert {r.car: r.best_lap_ms for r in snap.cars}["2"] == 90_002


def test_cars_not_seen_since_the_join_wait_at_the_back_until_their_next_crossing() -> None:
    s = Script([("1", "P"), ("2", "P"), ("3", "G")], lines=2, grid=["3", "1", "2"])
    s.cross("3", 1, 40_000)
    s.cross("1", 1, 41_000)
    s.cross("2", 1, 42_000)
    s.cross("3", 2, 80_000)
    s.cross("1", 2, 82_000)
    s.cross("2", 2, 83_000)
    join_at = len(s.events)
    s.cross("1", 3, 120_000)  # #1 passes #3 on lap 2
    s.cross("2", 3, 121_000)
    standings = joined(opening(s.events), s.events[join_at:])
    snap = snapshot(standings.races[s.race])
    # #3 has not crossed since the join: no distance known, behind in grid order.
    assert [(r.car, r.laps) for r in snap.cars] == [("1", 1), ("2", 1), ("3", 0)]
    assert snap.session.gaps == join_at - 1
    s.cross("3", 3, 125_000)
    standings.step(s.events[-1])
    snap = snapshot(standings.races[s.race])
    assert [r.car for r in snap.cars] == [r.car for r in snapshot(fold(s.events)).cars]
    assert [r.car for r in snap.cars] == ["1", "2", "3"]
    # Gaps from the line all three crossed since the join (#3's time there minus #1's).
    assert snap.cars[2].gap_ms == 5_000


def test_the_flag_of_the_moment_comes_from_the_first_lap_seen() -> None:
    s = Script()
    s.lap("1", 1, 90_000)
    s.add(Flag, t_ms=95_000, flag="fcy")
    lap = s.add(
        Lap, t_ms=99_000, car="2", lap=1, lap_ms=None, sectors_ms=[None], position=2,
        driver="2-A", flag="fcy",
    )  # fmt: skip
    standings = joined(opening(s.events), [lap])
    assert snapshot(standings.races[s.race]).session.flag == "fcy"


def test_an_event_of_a_race_with_no_state_and_no_meta_is_an_unknown_race() -> None:
    s = three_laps()
    standings = Standings()
    with pytest.raises(UnknownRace, match="unknown"):
        standings.step(s.events[4])
    assert standings.races == {}
    # The meta comes: the same event now joins the race.
    standings.remember(opening(s.events))
    assert standings.step(s.events[4]) == JOINED
    # A cleared meta does not touch a race being folded.
    standings.forget(s.race)
    assert standings.step(s.events[5]) == APPLIED


def test_a_join_that_fails_leaves_no_race() -> None:
    s = three_laps()
    standings = Standings()
    standings.remember(opening(s.events))
    car = s.events[4]
    unknown_car = msgspec.structs.replace(car, car="99")
    with pytest.raises(Rejected, match="not entered"):
        standings.step(unknown_car)
    far = msgspec.structs.replace(car, seq=MAX_JOIN_SEQ + 1)
    with pytest.raises(Rejected, match="too far to join"):
        standings.step(far)
    assert standings.races == {}
    assert standings.step(car) == JOINED


def test_a_race_first_seen_at_a_clock_is_partial_and_joins_in_place() -> None:
    s = three_laps()
    standings = Standings()
    # A pause seen before any meta (seq 6): the race exists, unopened, with 5 seqs unseen.
    pause = Clock(race=s.race, seq=6, t_ms=180_000, action="pause", speed=10.0, paused=True)
    assert standings.step(pause) == APPLIED
    assert standings.races[s.race].gaps == 5
    with pytest.raises(Rejected, match="no session_open"):
        standings.step(msgspec.structs.replace(s.events[6], seq=7))
    standings.remember(opening(s.events))
    lap = msgspec.structs.replace(s.events[6], seq=8)  # seq 7 was the one rejected
    assert standings.step(lap) == JOINED
    state = standings.races[s.race]
    # Opened from the meta, with the clock kept and seq 7 missing too.
    assert state.opened and (state.speed, state.paused) == (10.0, True)
    assert (state.seq, state.gaps) == (8, 6)
    assert len(snapshot(state).cars) == 3


def test_a_duplicate_does_not_join() -> None:
    s = three_laps()
    standings = Standings()
    standings.step(Clock(race=s.race, seq=6, t_ms=180_000, action="speed", speed=5.0))
    standings.remember(opening(s.events))
    assert standings.step(s.events[4]) == DUPLICATE  # seq 5, at or below the clock's
    assert not standings.races[s.race].opened


def test_metas_are_bounded() -> None:
    standings = Standings()
    meta = opening(Script().events)
    for i in range(MAX_RACES):
        standings.remember(msgspec.structs.replace(meta, race=f"r{i}"))
    standings.remember(msgspec.structs.replace(meta, race="r0"))  # a known race: replaced
    with pytest.raises(Rejected, match="races"):
        standings.remember(msgspec.structs.replace(meta, race="one-more"))


def test_a_reset_after_a_join_starts_exact_again() -> None:
    s = three_laps()
    standings = joined(opening(s.events), s.events[6:])
    assert standings.races[s.race].gaps == 5  # seqs 2..6
    # A backward seek: reset, then the race again from its session_open.
    base = len(s.events)
    again: list[Event] = [Reset(race=s.race, seq=base + 1, t_ms=300_000, target_ms=0)]
    again += [msgspec.structs.replace(e, seq=base + 1 + e.seq) for e in s.events]
    for event in again:
        standings.step(event)
    state = standings.races[s.race]
    assert state.gaps == 0
    assert snapshot(state).cars == snapshot(fold(s.events)).cars


# -- whole replays, numbered as on the wire ------------------------------------------


RACES = ["alms-2013-monterey-race", "imsa-2021-lime-rock-race", "alms-2013-baltimore-qualifying"]


@cache
def timeline(name: str) -> list[Event]:
    return build(load(REPLAYS / f"{name}.json"), seed=1, race="join")


def wire(events: list[Event]) -> tuple[Feed, list[Event]]:
    """The producer's stream of a whole race, flat out: session_open, clock(start), the rest."""
    feed = Feed.create("join", events, now=0.0, speed=None)
    out = feed.start(0.0)
    out += feed.take(0.0, len(events))
    return feed, out


def _order(snap: Snapshot, cars: set[str]) -> list[tuple[str, int]]:
    return [(row.car, row.laps) for row in snap.cars if row.car in cars]


@pytest.mark.parametrize("name", RACES)
@pytest.mark.parametrize("share", [0.3, 0.8])
def test_a_replay_joined_midway_orders_what_it_saw_and_ends_official(
    name: str, share: float
) -> None:
    _, stream = wire(timeline(name))
    close = stream[-1]
    assert isinstance(close, SessionClosed) and isinstance(stream[0], SessionOpened)
    cut = int(len(stream) * share)
    full = Standings()
    late = Standings()
    late.remember(opening(stream))
    seen: set[str] = set()
    qualifying = stream[0].session.kind == "qualifying"
    for i, event in enumerate(stream):
        full.step(event)
        if i < cut:
            continue
        outcome = late.step(event)
        assert outcome == (JOINED if i == cut else APPLIED)
        if isinstance(event, Lap):
            seen.add(event.car)
        if i % 500 == 0 and not qualifying and not isinstance(event, SessionClosed):
            # Cars crossing since the join are where the uninterrupted fold has them.
            ref, got = snapshot(full.races["join"]), snapshot(late.races["join"])
            assert _order(got, seen) == _order(ref, seen)
            assert got.session.gaps == cut - 1 and ref.session.gaps == 0
    got = snapshot(late.races["join"])
    # A qualifying table gives no lap counts (0 on the wire): compare what it gives.
    laps = any(r.laps for r in close.classification)
    official = [
        (r.car, r.laps if laps else None, r.class_position, r.status) for r in close.classification
    ]
    shown = [(r.car, r.laps if laps else None, r.class_position, r.result) for r in got.cars]
    assert shown[: len(official)] == official
    assert got.session.finished and got.session.gaps == cut - 1


@pytest.mark.parametrize("name", RACES[:2])
def test_a_backward_seek_after_a_join_rebuilds_the_exact_board(name: str) -> None:
    events = timeline(name)
    # The producer's own feed: half the race, a join, then a seek back to the start.
    feed = Feed.create("join", events, now=0.0, speed=None)
    stream = feed.start(0.0) + feed.take(0.0, len(events) // 2)
    tail = feed.seek(0, 0.0) + feed.take(0.0, len(events))
    assert isinstance(tail[0], Reset)
    full = Standings()
    for event in stream + tail:
        full.step(event)
    late = joined(opening(stream), stream[len(stream) // 3 :])
    assert late.races["join"].gaps > 0
    for event in tail:
        assert late.step(event) != GAP
    assert snapshot(late.races["join"]) == snapshot(full.races["join"])
    assert late.races["join"].gaps == 0
