"""Property-based fuzzing of the standings fold and its promise of event sourcing.

Hostile streams (duplicates, reordering, gaps, forged seqs, unknown cars and
races, resets, reopened sessions) never raise anything but ``Rejected``,
never touch the state when rejected, and always leave a leaderboard whose
positions are a permutation. Well-formed streams give the same standings
however they are delivered: all at once, resumed from a checkpoint, or with
any suffix delivered again after a crash (at-least-once delivery).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from chequered.contract import board
from chequered.contract.events import (
    Clock,
    EntryInfo,
    Event,
    Finish,
    Flag,
    Lap,
    PitIn,
    PitOut,
    Reset,
    ResultRow,
    Retire,
    Sector,
    SessionClosed,
    SessionInfo,
    SessionOpened,
)
from consumers.standings import checkpoint
from consumers.standings.fold import (
    DUPLICATE,
    MAX_RACE_MS,
    MAX_SEQ_JUMP,
    RaceState,
    Rejected,
    Standings,
    delta,
    snapshot,
)

pytestmark = pytest.mark.slow

HOSTILE_EXAMPLES = 1500
REDELIVERY_EXAMPLES = 800
MAX_EVENTS = 40

R = "fuzz"
LINES = 3
CLASSES = ["P1", "P2", "GT"]
CARS = [
    ("1", "P1"),
    ("6", "P1"),
    ("06", "P2"),
    ("552", "P2"),
    ("4", "GT"),
    ("56", "GT"),
    ("3", "GT"),
]
STRANGERS = ["99", "0", "7"]
"""Car numbers that are not entered."""
LAP_MS = 60_000
EPOCH = 1_368_288_000.0
"""Wall clock of the first event (a real Unix time: 0.0 means "not emitted")."""


SHRINK = bool(os.environ.get("CHEQUERED_FUZZ_SHRINK"))
"""Shrink a failing stream to a minimal one. Off by default: a 40-event stream takes
minutes to shrink, and the unshrunk failing example is printed all the same."""


def fuzz(max_examples: int) -> settings:
    phases = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
    return settings(
        max_examples=max_examples,
        deadline=None,
        phases=[*phases, Phase.shrink] if SHRINK else phases,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def session_open(seq: int, t_ms: int = 0, *, race: str = R, kind: str = "race") -> SessionOpened:
    return SessionOpened(
        race=race,
        seq=seq,
        t_ms=t_ms,
        wall=EPOCH + t_ms / 1000,
        session=SessionInfo(
            name="Fuzz 4 Hours",
            series="ALMS",
            season=2013,
            kind=kind,  # type: ignore[arg-type]
            circuit="Laguna Seca",
            lap_km=3.6,
            lines=LINES,
            duration_ms=4 * 3600_000,
        ),
        classes=CLASSES,
        entries=[EntryInfo(number=n, cls=c, team=f"Team {n}", drivers=[f"D{n}"]) for n, c in CARS],
        # One entry left off the grid: a non-starter.
        grid=[n for n, _ in CARS[:-1]],
    )


# -- one event at a time -------------------------------------------------------
#
# Each event is drawn as a tuple of small integers ("genes") from one strategy
# built once, then made into an event by plain code: far fewer draws than a
# strategy per field, so that thousands of streams fold in seconds, and
# hypothesis still shrinks a failure gene by gene.

NUMBERS = [n for n, _ in CARS] * 2 + STRANGERS
KINDS = (
    ["lap"] * 8
    + ["sector"] * 4
    + [
        "pit_in",
        "pit_out",
        "retire",
        "finish",
        "flag",
        "clock",
        "close",
        "reset",
        "open",
    ]
)
FLAGS: list[Any] = ["green", "fcy", "red", "chequered"]
ACTIONS: list[Any] = ["start", "pause", "resume", "speed", "seek"]
RESULTS: list[Any] = ["classified", "not_classified", "retired", "disqualified", "dns"]

genes = st.tuples(
    st.integers(0, len(KINDS) - 1),  # kind
    st.integers(0, len(NUMBERS) - 1),  # car
    st.integers(1, 12),  # lap
    st.integers(0, 2**20),  # a spare number for whatever else the kind needs
    st.integers(0, 2**20),  # and another
)
Genes = tuple[int, int, int, int, int]


def make_event(g: Genes, seq: int, t_ms: int) -> Event:
    """An event of any kind from its genes; type-valid, not necessarily plausible."""
    kind, car_i, lap, x, y = g
    car = NUMBERS[car_i]
    common: dict[str, Any] = {"race": R, "seq": seq, "t_ms": t_ms, "wall": EPOCH + t_ms / 1000}
    match KINDS[kind]:
        case "lap":
            # 0..LINES+1 sector times, some missing: feeds differ in how many they give.
            sectors = [None if (x >> i) & 1 else (y >> i) % LAP_MS for i in range(x % (LINES + 2))]
            return Lap(
                **common,
                car=car,
                lap=lap,
                lap_ms=None if y % 7 == 0 else LAP_MS - 5000 + y % 35_000,
                sectors_ms=sectors,
                position=1 + x % 12,
                driver=f"D{car}",
                flag=FLAGS[y % 2],
                in_pit=x % 5 == 0,
            )
        case "sector":
            return Sector(
                **common,
                car=car,
                lap=lap,
                sector=1 + x % LINES,
                sector_ms=None if y % 5 == 0 else y % LAP_MS,
                position=1 + y % 12,
            )
        case "pit_in":
            return PitIn(**common, car=car, lap=lap - 1)
        case "pit_out":
            return PitOut(
                **common,
                car=car,
                lap=lap - 1,
                pit_ms=x % 120_000,
                driver=f"D{car}",
                driver_change=y % 2 == 0,
            )
        case "retire":
            return Retire(**common, car=car, lap=lap - 1, reason="fuzz")
        case "finish":
            return Finish(**common, car=car, lap=lap)
        case "flag":
            return Flag(**common, flag=FLAGS[x % 4])
        case "clock":
            speed = None if y % 4 == 0 else 0.5 + y % 1000
            return Clock(**common, action=ACTIONS[x % 5], speed=speed)
        case "close":
            listed = [n for n, _ in CARS] + STRANGERS[:1]
            # A permutation of some of them, chosen by x; statuses by y.
            order = sorted(listed, key=lambda n: hash((n, x)) % 1009)[: x % (len(listed) + 1)]
            in_class: dict[str, int] = {}
            rows = []
            for i, number in enumerate(order, start=1):
                cls = dict(CARS).get(number, "GT")
                in_class[cls] = in_class.get(cls, 0) + 1
                rows.append(
                    ResultRow(
                        position=i,
                        car=number,
                        cls=cls,
                        class_position=in_class[cls],
                        laps=(y >> i) % 13,
                        status=RESULTS[(y >> (2 * i)) % 5],
                    )
                )
            return SessionClosed(**common, classification=rows)
        case "reset":
            return Reset(**common, target_ms=x % (t_ms + 1))
        case _:
            return session_open(seq, t_ms, kind="qualifying" if x % 3 == 0 else "race")


# How the next seq relates to the stream so far, drawn per event.
IN_ORDER, PAST, GAP_AHEAD, FORGED, FROM_ONE = range(5)
seq_moves = st.sampled_from([IN_ORDER] * 12 + [PAST] * 2 + [GAP_AHEAD] * 2 + [FORGED, FROM_ONE])
# Race time: mostly on, sometimes back, now and then absurd.
time_moves = st.integers(-LAP_MS, 3 * LAP_MS) | st.sampled_from([-(10**12), 10**12])


@st.composite
def hostile_stream(draw: st.DrawFn) -> list[Event]:
    """A stream as a broken or malicious publisher could send it."""
    events: list[Event] = []
    if draw(st.integers(0, 9)):
        events.append(session_open(1))
    seq, t_ms = len(events), 0
    steps = draw(st.lists(st.tuples(genes, seq_moves, time_moves), max_size=MAX_EVENTS))
    for g, move, dt in steps:
        if move == IN_ORDER:
            seq += 1
            this = seq
        elif move == PAST:
            this = 1 + g[3] % max(seq, 1)  # a duplicate, or from the past
        elif move == GAP_AHEAD:
            seq += 2 + g[4] % 50
            this = seq
        elif move == FORGED:
            this = seq + MAX_SEQ_JUMP + 1 + g[4]
        else:
            this = 1
        if abs(dt) >= 10**12:
            when = MAX_RACE_MS + 1 if dt > 0 else 0
        else:
            t_ms = max(0, t_ms + dt)
            when = t_ms
        event = make_event(g, this, when)
        if g[3] % 53 == 0:
            # Another race's stream mixed in: an unknown race opening.
            event = session_open(this, when, race="intruder")
        events.append(event)
    return events


@st.composite
def good_stream(draw: st.DrawFn) -> list[Event]:
    """A stream as the producer sends it: seq contiguous from 1, time not going back.

    Events need not make sense as a race (the fold must cope), but the
    numbering is the producer's, resets included (the seq goes on after one).
    """
    events: list[Event] = [session_open(1)]
    t_ms = 0
    steps = draw(st.lists(st.tuples(genes, st.integers(0, LAP_MS)), max_size=MAX_EVENTS))
    for seq, (g, dt) in enumerate(steps, start=2):
        t_ms += dt
        events.append(make_event(g, seq, t_ms))
    return events


# -- properties -------------------------------------------------------------------


def check_board(snap: board.Snapshot, state: RaceState) -> None:
    """Positions are 1..N in order; class positions are 1..n per class in order."""
    assert [row.position for row in snap.cars] == list(range(1, len(snap.cars) + 1))
    assert sorted(row.car for row in snap.cars) == sorted(state.cars)
    per_class: dict[str, list[int]] = {}
    for row in snap.cars:
        per_class.setdefault(row.cls, []).append(row.class_position)
    for positions in per_class.values():
        assert positions == list(range(1, len(positions) + 1))
    assert snap.seq == state.seq


def fold(events: list[Event], standings: Standings | None = None) -> Standings:
    standings = standings or Standings()
    for event in events:
        with contextlib.suppress(Rejected):
            standings.step(event)
    return standings


def boards(standings: Standings) -> dict[str, board.Snapshot]:
    return {race: snapshot(state) for race, state in standings.races.items()}


@fuzz(HOSTILE_EXAMPLES)
@given(hostile_stream())
def test_hostile_streams_keep_the_board_whole(events: list[Event]) -> None:
    standings = Standings()
    previous: dict[str, board.Snapshot] = {}
    for event in events:
        state = standings.races.get(event.race)
        before = checkpoint.encode(state) if state is not None else None
        rebase = state.rebase if state is not None else False
        last_seq = state.seq if state is not None else 0
        try:
            outcome = standings.step(event)
        except Rejected as exc:
            assert str(exc), "a rejection names its reason"
            after = standings.races.get(event.race)
            assert (checkpoint.encode(after) if after is not None else None) == before, (
                "a rejected event changed the state"
            )
            continue
        state = standings.races[event.race]
        if outcome == DUPLICATE:
            assert checkpoint.encode(state) == before, "a duplicate changed the state"
            continue
        # The seq only goes back when a reset allowed the stream to start again at 1.
        assert state.seq > last_seq or (rebase and state.seq == 1), (last_seq, state.seq)
        snap = snapshot(state)
        check_board(snap, state)
        # The delta published for this step rebuilds the new board from the old one.
        old = previous.get(event.race)
        if old is not None:
            change = delta(old, snap)
            if change is not None:
                assert board.apply_delta(old, change) == snap
        previous[event.race] = snap


@fuzz(REDELIVERY_EXAMPLES)
@given(good_stream(), st.data())
def test_same_standings_live_resumed_or_redelivered(events: list[Event], data: Any) -> None:
    """Event sourcing: however the stream is delivered, the standings come out the same."""
    live = boards(fold(events))
    assert fold(events) is not None and boards(fold(events)) == live, (
        "the fold is not deterministic"
    )
    # A crash after `k` events: the checkpoint holds the first `k`, and the broker
    # redelivers everything from `j` on (unacknowledged, or acknowledged and in flight).
    k = data.draw(st.integers(0, len(events)), label="checkpointed")
    j = data.draw(st.integers(0, k), label="redelivered from")
    first = fold(events[:k])
    restored = Standings(
        {race: checkpoint.decode(checkpoint.encode(s)) for race, s in first.races.items()}
    )
    resumed = fold(events[j:], restored)
    assert boards(resumed) == live
    # And at-least-once delivery in its plainest form: every event twice.
    doubled = [e for event in events for e in (event, event)]
    assert boards(fold(doubled)) == live


def test_fuzz_reaches_the_interesting_outcomes() -> None:
    """The hostile streams do produce gaps, duplicates, resets and rejections."""
    seen: set[str] = set()

    @fuzz(300)
    @given(hostile_stream())
    def collect(events: list[Event]) -> None:
        standings = Standings()
        for event in events:
            try:
                seen.add(standings.step(event))
            except Rejected:
                seen.add("rejected")

    collect()
    assert {"applied", "gap", "duplicate", "reset", "rejected"} <= seen
