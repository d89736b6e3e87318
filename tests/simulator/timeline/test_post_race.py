"""Post-race decisions: a result changed after the flag replays as the provisional
classification, a penalty per car with its effect, then the official classification,
and the standings board says "provisional" until then."""

from __future__ import annotations

from functools import cache
from typing import TypeVar

import pytest

from chequered.contract import events as ev
from chequered.contract.board import Snapshot
from consumers.standings import fold
from simulator.importers.alkamel import import_timing
from simulator.importers.article import import_article
from simulator.recording import io as recording_io
from simulator.recording.format import Recording
from simulator.timeline import build
from simulator.timeline.post_race import POST_RACE_DECISION_MS
from simulator.timeline.timing_replay import replay
from tests.conftest import REPLAYS, TESTS_DATA

E = TypeVar("E", bound=ev.Event)
TIMING = TESTS_DATA / "timing"
LAGUNA = "2022_07-weathertech-raceway-laguna-seca_race"
# The real Laguna Seca 2022 results with #14's TOTAL_TIME 23 s more than its last
# crossing, and the rows re-ordered as such a penalty would: 13th on the road, 16th.
PENALISED = TIMING / "penalty" / f"{LAGUNA}-results.csv"
LAPS = TIMING / f"{LAGUNA}-laps.csv"


def _import(results: str) -> Recording:
    return import_timing(
        LAPS.read_text(encoding="utf-8-sig"),
        results,
        laps_name=str(LAPS),
        results_name=str(PENALISED),
    ).recording


@cache
def penalised() -> Recording:
    return _import(PENALISED.read_text(encoding="utf-8-sig"))


@cache
def penalised_events() -> tuple[ev.Event, ...]:
    return tuple(replay(penalised(), race="pen"))


def _of(kind: type[E], stream: tuple[ev.Event, ...] | list[ev.Event]) -> list[E]:
    return [e for e in stream if isinstance(e, kind)]


# -- the importer ----------------------------------------------------------------------


def test_results_time_over_the_last_crossing_is_a_post_race_penalty() -> None:
    rows = {r.number: r for r in penalised().classification}
    assert rows["14"].penalty_ms == 23_000 and rows["14"].position == 16
    assert rows["14"].note is not None and "+23 s" in rows["14"].note
    assert [n for n, r in rows.items() if r.penalty_ms is not None] == ["14"]


def test_a_penalty_column_and_a_remark_are_read() -> None:
    # Two columns after NUMBER (rows are shorter than the header: not at the end).
    lines = PENALISED.read_text(encoding="utf-8-sig").splitlines()
    head = lines[0].split(",")
    out = [",".join([*head[:2], "PENALTY", "REMARKS", *head[2:]])]
    for line in lines[1:]:
        cells = line.split(",")
        added = ["+23s", "Causing a collision"] if cells[1] == "14" else ["", ""]
        out.append(",".join([*cells[:2], *added, *cells[2:]]))
    recording = _import("\n".join(out) + "\n")
    (row,) = [r for r in recording.classification if r.penalty_ms is not None]
    assert row.number == "14" and row.penalty_ms == 23_000
    assert row.note is not None and "Causing a collision" in row.note
    (penalty,) = _of(ev.Penalty, replay(recording, race="pen"))
    assert penalty.text == "#14 +23 s, post-race: 13th to 16th: Causing a collision"


def test_the_committed_replays_have_no_post_race_decision() -> None:
    for name in ("imsa-2022-laguna-seca-race", "imsa-2021-lime-rock-race"):
        recording = recording_io.load(REPLAYS / f"{name}.json")
        assert all(r.penalty_ms is None for r in recording.classification)
        stream = tuple(replay(recording, race=name))
        assert not _of(ev.Provisional, stream) and not _of(ev.Penalty, stream)


# -- the replay ------------------------------------------------------------------------


def test_provisional_at_the_flag_then_the_penalty_then_the_official_result() -> None:
    stream = penalised_events()
    (provisional,) = _of(ev.Provisional, stream)
    (penalty,) = _of(ev.Penalty, stream)
    close = stream[-1]
    assert isinstance(provisional, ev.Provisional) and isinstance(penalty, ev.Penalty)
    assert isinstance(close, ev.SessionClosed)
    last_finish = max(e.t_ms for e in _of(ev.Finish, stream))
    assert provisional.t_ms == last_finish
    assert penalty.t_ms == close.t_ms == last_finish + POST_RACE_DECISION_MS
    assert provisional.seq < penalty.seq < close.seq
    assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
    # The road order: #14 13th at its time before the penalty.
    road = [r.car for r in provisional.classification]
    official = [r.car for r in close.classification]
    assert road.index("14") == 12 and official.index("14") == 15
    assert road[:12] == official[:12] and road[16:] == official[16:]
    assert road[12:16] == ["14", "25", "3", "16"] and official[12:16] == ["25", "3", "16", "14"]
    row = next(r for r in provisional.classification if r.car == "14")
    last_lap = max(
        (e for e in _of(ev.Lap, stream) if isinstance(e, ev.Lap) and e.car == "14"),
        key=lambda e: e.lap,
    )
    assert row.total_ms == last_lap.t_ms
    assert (penalty.car, penalty.penalty, penalty.penalty_ms) == ("14", "time", 23_000)
    assert (penalty.position_before, penalty.position_after, penalty.post_race) == (13, 16, True)
    assert penalty.text == "#14 +23 s, post-race: 13th to 16th"
    assert penalty.provenance == "timing"
    # The penalty is the feed's message: no race_control event repeats it.
    assert not [e for e in _of(ev.RaceControl, stream) if e.category == "penalty"]
    for event in stream:
        assert ev.decode(ev.encode(event)) == event


def test_the_board_says_provisional_until_the_official_result() -> None:
    stream = penalised_events()
    state = fold.new_race("pen")
    seen: dict[str, Snapshot] = {}
    for event in stream:
        fold.apply(state, event)
        if isinstance(event, ev.Provisional | ev.Penalty | ev.SessionClosed):
            seen[type(event).__name__] = fold.snapshot(state)
        elif not seen:
            assert not state.provisional  # nothing provisional before the flag
    provisional, penalty, close = seen["Provisional"], seen["Penalty"], seen["SessionClosed"]
    assert provisional.session.provisional and not provisional.session.finished
    assert [r.car for r in provisional.cars].index("14") == 12
    assert all(r.penalty is None for r in provisional.cars)
    row = next(r for r in penalty.cars if r.car == "14")
    assert (row.penalty, row.penalty_ms, row.position) == ("+23 s", 23_000, 13)
    assert penalty.session.provisional
    # The decision joins the race-control feed, dated by the leader's laps.
    told = penalty.messages[-1]
    assert (told.category, told.cars, told.text) == (
        "penalty",
        ["14"],
        "#14 +23 s, post-race: 13th to 16th",
    )
    assert told.lap == 117 and told.provenance == "timing"
    assert penalty.session.messages == provisional.session.messages + 1
    delta = fold.delta(provisional, penalty)
    assert delta is not None and [m.text for m in delta.messages] == [told.text]
    assert not close.session.provisional and close.session.finished
    row = next(r for r in close.cars if r.car == "14")
    assert (row.position, row.penalty) == (16, "+23 s")
    assert [r.car for r in close.cars][12:16] == ["25", "3", "16", "14"]
    # The delta from the provisional board to the official one names every car moved.
    delta = fold.delta(penalty, close)
    assert delta is not None and delta.session is not None
    assert {r.car for r in delta.cars} >= {"14", "25", "3", "16"}


# -- an article's notes that change a result -------------------------------------------


def test_monterey_17_forfeits_its_points_and_keeps_its_place() -> None:
    recording = recording_io.load(REPLAYS / "alms-2013-monterey-race.json")
    stream = tuple(build.build(recording, seed=0))
    (provisional,) = _of(ev.Provisional, stream)
    (penalty,) = _of(ev.Penalty, stream)
    close = stream[-1]
    assert isinstance(provisional, ev.Provisional) and isinstance(penalty, ev.Penalty)
    assert isinstance(close, ev.SessionClosed)
    assert provisional.classification == close.classification
    assert (penalty.car, penalty.penalty, penalty.penalty_ms) == ("17", "points", None)
    assert penalty.position_before == penalty.position_after == 10
    assert penalty.provenance == "article"
    note = next(n for n in recording.notes if n.effect == "points_forfeited")
    assert penalty.text == f"#17 points forfeited, post-race: 10th, position kept: {note.text}"
    # The note is told once, by the penalty, not also by a message of its own.
    assert not [e for e in _of(ev.RaceControl, stream) if "17" in e.cars and e.t_ms > 0]
    state = fold.new_race(recording.facts.id)
    for event in stream:
        fold.apply(state, event)
    board = fold.snapshot(state)
    row = next(r for r in board.cars if r.car == "17")
    assert (row.position, row.penalty) == (10, "points forfeited")
    assert [m.text for m in board.messages if "17" in m.cars] == [penalty.text]


def test_a_car_disqualified_after_the_flag_is_classified_on_the_road_first() -> None:
    text = (TESTS_DATA / "articles" / "sprint-lap-count.txt").read_text(encoding="utf-8")
    result = import_article(text, race_id="test-sprint-race", qualifying_id="q", sessions=("race",))
    assert result.race is not None
    stream = tuple(build.build(result.race, seed=0))
    (provisional,) = _of(ev.Provisional, stream)
    (penalty,) = _of(ev.Penalty, stream)
    assert isinstance(provisional, ev.Provisional) and isinstance(penalty, ev.Penalty)
    road = {r.car: r for r in provisional.classification}
    assert road["8"].status == "classified" and road["8"].position == 4
    assert (penalty.car, penalty.penalty) == ("8", "disqualification")
    assert (penalty.position_before, penalty.position_after) == (4, 6)
    assert penalty.text == (
        "#8 disqualified, post-race: 4th to 6th: "
        "The #8 Ferrari was disqualified after post-race scrutineering found it underweight."
    )


@pytest.mark.parametrize("name", ["alms-2013-baltimore-race", "imsa-2021-lime-rock-race"])
def test_a_race_with_no_decision_is_unchanged(name: str) -> None:
    recording = recording_io.load(REPLAYS / f"{name}.json")
    stream = build.build(recording, seed=0)
    assert not any(isinstance(e, ev.Provisional | ev.Penalty) for e in stream)


def test_a_remark_of_a_penalty_after_the_race_is_a_decision() -> None:
    """An export whose remarks column tells of the penalty, its times not showing it."""
    lines = (TIMING / f"{LAGUNA}-results.csv").read_text(encoding="utf-8-sig").splitlines()
    head = lines[0].split(",")
    out = [",".join([*head[:2], "REMARKS", *head[2:]])]
    remark = "30 s penalty after the race for exceeding track limits"
    for line in lines[1:]:
        cells = line.split(",")
        out.append(",".join([*cells[:2], remark if cells[1] == "25" else "", *cells[2:]]))
    stream = tuple(replay(_import("\n".join(out) + "\n"), race="pen"))
    (penalty,) = _of(ev.Penalty, stream)
    assert (penalty.car, penalty.penalty, penalty.penalty_ms) == ("25", "time", 30_000)
    assert penalty.position_before == penalty.position_after == 14
    assert penalty.text == f"#25 +30 s, post-race: 14th, position kept: {remark}"
    # A remark of a penalty served in the race is no post-race decision.
    served = "\n".join(out).replace(remark, "Drive-through penalty for pit lane speeding")
    stream = tuple(replay(_import(served + "\n"), race="pen"))
    assert not _of(ev.Penalty, stream) and not _of(ev.Provisional, stream)


def _with_31_on(laps: str, total: str | None, order: list[str]) -> tuple[ev.Event, ...]:
    lines = (TIMING / f"{LAGUNA}-results.csv").read_text(encoding="utf-8-sig").splitlines()
    rows = {r.split(",")[1]: r.split(",") for r in lines[1:] if r}
    rows["31"][3] = laps
    if total is not None:
        rows["31"][4] = total
    out = [lines[0]]
    for i, car in enumerate([*order, *(c for c in rows if c not in order)], start=1):
        rows[car][0] = str(i)
        out.append(",".join(rows[car]))
    return tuple(replay(_import("\n".join(out) + "\n"), race="pen"))


def test_a_result_on_fewer_laps_than_the_car_ran_is_a_lap_penalty() -> None:
    """#31 (3rd, 117 laps) classified on 116 laps in the time of its 117: 5th."""
    stream = _with_31_on("116", None, ["10", "60", "5", "02", "31"])
    (penalty,) = _of(ev.Penalty, stream)
    assert (penalty.car, penalty.penalty, penalty.penalty_ms) == ("31", "other", None)
    assert penalty.text == "#31 -1 lap, post-race: 3rd to 5th"
    (provisional,) = _of(ev.Provisional, stream)
    assert [r.car for r in provisional.classification][:5] == ["10", "60", "31", "5", "02"]


def test_a_result_timed_at_an_earlier_crossing_is_no_penalty() -> None:
    """A result that ends at the car's 116th crossing (a lap after it in the lap file, as
    a lap run after the flag would be): no decision."""
    head = LAPS.read_text(encoding="utf-8-sig").splitlines()
    number, lap, elapsed = (
        head[0].split(",").index(c) for c in ("NUMBER", " LAP_NUMBER", " ELAPSED")
    )
    at_116 = next(
        r.split(",")[elapsed]
        for r in head[1:]
        if r.split(",")[number] == "31" and r.split(",")[lap].strip() == "116"
    )
    stream = _with_31_on("116", at_116.strip(), ["10", "60", "5", "02", "31"])
    assert not _of(ev.Penalty, stream) and not _of(ev.Provisional, stream)
