"""The story of the race: notes read as incidents, honoured by the timeline for every seed,
and told by race-control messages.

The checks read the events only (flags, stops, laps, retirements, messages)
and hold the official classification to the same standard as test_build.
"""

from __future__ import annotations

import statistics
from functools import cache

import msgspec
import pytest

from chequered.contract.events import (
    Event,
    Flag,
    Lap,
    PitIn,
    PitOut,
    RaceControl,
    Retire,
    SessionClosed,
)
from simulator.recording.format import Note, Recording
from simulator.recording.validate import validate
from simulator.timeline import incidents, synth
from tests.simulator.timeline.test_build import check_all, recording, small_recording

BALTIMORE = "alms-2013-baltimore-race"
MONTEREY = "alms-2013-monterey-race"
SEEDS = range(50)


@cache
def synthesis(name: str, seed: int) -> synth.Synthesis:
    return synth.synthesise(recording(name), seed=seed)


def messages(events: list[Event]) -> list[RaceControl]:
    return [e for e in events if isinstance(e, RaceControl)]


# -- reading the notes ----------------------------------------------------------------


def test_baltimore_notes_read_as_its_incidents() -> None:
    reading = incidents.read(recording(BALTIMORE))
    found = {(i.kind, i.car) for i in reading.incidents}
    assert found == {
        ("start_crash", "551"),
        ("crash", "02"),
        ("unscheduled_stop", "48"),
        ("ran_on", "48"),
        ("damage", "27"),
    }
    [crash] = reading.of("crash")
    assert crash.minutes_left == 19
    [stop] = reading.of("unscheduled_stop")
    assert stop.driver_change
    assert stop.cause == "lost its cockpit cooling"
    # The damaged car is a reading of the blog post: it says so.
    [damage] = reading.of("damage")
    assert damage.provenance == "inferred"
    assert all(i.provenance == "report" for i in reading.incidents if i.car != "27")


def test_notes_no_moment_can_hold_are_listed_unused_with_the_reason() -> None:
    rec = recording(BALTIMORE)
    reading = incidents.read(rec)
    unused = {rec.notes[u.note].text[:30]: u.reason for u in reading.unused}
    assert set(unused) == {
        "The race table kept only the e",
        "The race classification is com",
        "#48 was shared with Bryce Mill",
    }
    # The driver the facts add is provenance, not an incident.
    assert "no incident" in unused.pop("#48 was shared with Bryce Mill")
    assert all("names no car" in reason for reason in unused.values())
    # Every note is either an incident, told, or listed: none is dropped.
    placed = {i.note for i in reading.incidents} | {t.note for t in reading.told}
    assert placed | {u.note for u in reading.unused} == set(range(len(rec.notes)))
    monterey = recording(MONTEREY)
    [unused_monterey] = incidents.read(monterey).unused
    assert "Read as one car" in monterey.notes[unused_monterey.note].text
    # ``chequered validate`` lists them, as warnings naming the note.
    listed = [i for i in validate(rec) if "not used by the timeline" in i.message]
    assert [i.where for i in listed] == [f"$.notes[{u.note}]" for u in reading.unused]
    assert all(i.severity == "warning" for i in listed)


def test_a_crash_note_against_the_result_is_not_placed() -> None:
    rec = small_recording(red=False)
    rec = msgspec.structs.replace(
        rec,
        notes=[
            Note(text="#1 hit the wall with 10 minutes left.", cars=["1"], provenance="report"),
            Note(text="#13 crashed at turn 4 with 12 minutes left.", cars=["13"]),
        ],
    )
    reading = incidents.read(rec)
    assert [(i.kind, i.car) for i in reading.incidents] == [("crash", "13")]
    [unused] = reading.unused
    assert "classified as running" in unused.reason
    # A race run to a lap count has no time left to place a crash at.
    laps = msgspec.structs.replace(small_recording(laps=40, red=False), notes=rec.notes)
    assert not incidents.read(laps).incidents
    assert any("lap count" in u.reason for u in incidents.read(laps).unused)


# -- Baltimore, every seed ----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_the_baltimore_story_for_every_seed(seed: int) -> None:
    rec = recording(BALTIMORE)
    s = synthesis(BALTIMORE, seed)
    events = s.events
    said = messages(events)

    # The start crash: a red flag naming the cars out on the opening lap, told in order.
    out_on_lap_0 = [e.car for e in events if isinstance(e, Retire) and e.lap == 0]
    assert "551" in out_on_lap_0
    red = next(e for e in events if isinstance(e, Flag) and e.flag == "red")
    red_message = next(m for m in said if m.category == "flag" and m.text.startswith("Red flag"))
    assert red_message.t_ms == red.t_ms
    assert set(red_message.cars) == set(out_on_lap_0)
    assert red_message.provenance == "inferred"  # four of the five are the result's reading
    crash = next(m for m in said if m.category == "incident" and "551" in m.cars)
    assert crash.t_ms < red.t_ms and crash.provenance == "report"

    # #48's unscheduled stop for a driver change: both of its drivers drive.
    stop = next(m for m in said if m.category == "pit" and "unscheduled" in m.text)
    assert stop.cars == ["48"] and "cockpit cooling" in stop.text
    pit_in = next(e for e in events if isinstance(e, PitIn) and e.t_ms == stop.t_ms)
    assert pit_in.car == "48"
    pit_out = next(e for e in events if isinstance(e, PitOut) and e.car == "48")
    assert pit_out.seq > pit_in.seq and pit_out.driver_change
    drivers = {e.driver for e in events if isinstance(e, Lap) and e.car == "48"}
    assert drivers == {"Marco Holzer", "Bryce Miller"}
    change = next(m for m in said if m.category == "pit" and "driver change" in m.text)
    assert change.t_ms == pit_out.t_ms and "Marco Holzer" in change.text

    # #02 hits the barrier with 19 minutes left: a yellow at that moment.
    retire_02 = next(e for e in events if isinstance(e, Retire) and e.car == "02")
    assert retire_02.t_ms == round(s.end_ms - 19 * 60_000)
    assert retire_02.reason == "hit the chicane tyre barrier"
    yellow = next(e for e in events if isinstance(e, Flag) and e.t_ms == retire_02.t_ms)
    assert yellow.flag == "fcy" and yellow.reason is not None and "#02" in yellow.reason
    hit = next(m for m in said if m.category == "incident" and m.cars == ["02"])
    assert hit.t_ms <= yellow.t_ms and "chicane tyre barrier" in hit.text
    assert hit.lap >= retire_02.lap  # the leader's lap, by then

    # The damaged #27 on its class podium.
    damaged = next(m for m in said if m.category == "incident" and m.cars == ["27"])
    assert damaged.provenance == "inferred" and "damaged" in damaged.text
    closed = events[-1]
    assert isinstance(closed, SessionClosed)
    row_27 = next(r for r in closed.classification if r.car == "27")
    assert (row_27.cls, row_27.class_position) == ("GTC", 3)

    # In that order in the feed, with the official classification still exact.
    assert crash.seq < stop.seq < hit.seq
    check_all(s, rec)


def test_the_damaged_car_laps_slower_for_a_while() -> None:
    slower = 0
    for seed in range(10):
        laps = [
            e
            for e in synthesis(BALTIMORE, seed).events
            if isinstance(e, Lap) and e.car == "27" and e.flag == "green" and not e.in_pit
        ]
        # Lap 3 is the restart after the red flag; the damage fades out within 12 laps.
        early = [e.lap_ms or 0 for e in laps if 4 <= e.lap <= 8]
        later = [e.lap_ms or 0 for e in laps if e.lap > 16]
        if early and later and statistics.median(early) > 1.005 * statistics.median(later):
            slower += 1
    assert slower >= 8


def test_every_flag_and_retirement_is_told_with_its_cause() -> None:
    for name in (BALTIMORE, MONTEREY):
        for seed in range(5):
            events = synthesis(name, seed).events
            said = messages(events)
            flags = [e for e in events if isinstance(e, Flag)]
            flag_told = [m for m in said if m.category == "flag"]
            assert [m.t_ms for m in flag_told] == [f.t_ms for f in flags]
            for flag, told in zip(flags, flag_told, strict=True):
                if flag.flag == "fcy" and flag.reason and not flag.reason.startswith("restart"):
                    assert flag.reason.lower() in told.text.lower()
            retired = {e.car: e for e in events if isinstance(e, Retire)}
            retirements = {m.cars[0]: m for m in said if m.category == "retirement"}
            assert set(retirements) == set(retired)
            for car, event in retired.items():
                assert retirements[car].t_ms == event.t_ms
                assert event.reason is not None and event.reason in retirements[car].text
            # Messages are dated by the leader's laps, which never go back.
            laps = [m.lap for m in said]
            assert laps == sorted(laps)


def test_monterey_penalties_are_told_before_the_start_and_after_the_flag() -> None:
    events = synthesis(MONTEREY, 0).events
    penalties = [m for m in messages(events) if m.category == "penalty"]
    chequered = next(e for e in events if isinstance(e, Flag) and e.flag == "chequered")
    before = [m for m in penalties if m.t_ms == 0]
    after = [m for m in penalties if m.t_ms >= chequered.t_ms]
    assert {c for m in before for c in m.cars} == {"0", "66", "06"}
    assert [m.cars for m in after] == [["17"]]
    assert all(m.provenance == "article" for m in penalties)


def test_a_crash_note_brings_a_yellow_in_a_race_made_by_hand() -> None:
    rec: Recording = msgspec.structs.replace(
        small_recording(red=False),
        notes=[Note(text="#13 crashed at turn 4 with 30 minutes left.", cars=["13"])],
    )
    for seed in range(10):
        s = synth.synthesise(rec, seed=seed)
        check_all(s, rec)
        retire = next(e for e in s.events if isinstance(e, Retire) and e.car == "13")
        assert retire.t_ms == round(s.end_ms - 30 * 60_000)
        flag = next(e for e in s.events if isinstance(e, Flag) and e.t_ms == retire.t_ms)
        assert flag.flag == "fcy" and flag.reason == "#13 crashed at turn 4"
