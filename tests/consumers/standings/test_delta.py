"""Field-level deltas: what ``fold.delta`` leaves out, ``apply_delta`` must not need.

Random sequences of boards (the same cars, any field changed, set back to its
default or to null) go through ``delta``, the JSON encoding and ``apply_delta``,
and must come back equal to the board they were made from.
"""

from __future__ import annotations

import itertools
import json
from typing import Any, get_args, get_type_hints

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from msgspec import UNSET, UnsetType

from chequered.contract import board
from chequered.contract.board import (
    CarPatch,
    CarRow,
    CarStatus,
    Delta,
    FastLap,
    RaceMessage,
    ResultStatus,
    SessionPatch,
    SessionView,
    Snapshot,
    apply_delta,
)
from consumers.standings.fold import delta

R = "delta"
CARS = {"1": "P1", "2": "P1", "7": "GT", "8": "GT", "31": "GTC"}

# Few values per field, defaults and nulls among them: most fields stay unchanged from
# one board to the next, and those that change often go back to their default.
MS = st.sampled_from([None, 0, 1_500, 82_345])
LAPS = st.sampled_from([0, 1, 2, 40])
FLAG = st.booleans()
ROW_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "class_position": st.integers(1, 3),
    "team": st.sampled_from(["", "Team A"]),
    "driver": st.sampled_from(["", "A. Driver", "B. Driver"]),
    "laps": LAPS,
    "gap_ms": MS,
    "gap_laps": LAPS,
    "interval_ms": MS,
    "interval_laps": LAPS,
    "class_gap_ms": MS,
    "class_gap_laps": LAPS,
    "class_interval_ms": MS,
    "class_interval_laps": LAPS,
    "last_lap_ms": MS,
    "best_lap_ms": MS,
    "best_lap": st.sampled_from([None, 0, 3]),
    "last_is_personal_best": FLAG,
    "last_is_class_best": FLAG,
    "last_is_overall_best": FLAG,
    "sectors_ms": st.lists(st.sampled_from([None, 30_100, 31_000]), max_size=3),
    "pit_stops": LAPS,
    "in_pit": FLAG,
    "out_lap": FLAG,
    "stint_laps": LAPS,
    "gained": st.integers(-2, 2),
    "status": st.sampled_from(get_args(CarStatus)),
    "result": st.none() | st.sampled_from(get_args(ResultStatus)),
    "penalty": st.sampled_from([None, "+23 s", "DSQ"]),
    "penalty_ms": st.sampled_from([None, 0, 23_000]),
}
"""Every field of ``CarRow`` but ``car``, ``cls`` (fixed per car) and ``position``."""

FASTEST = st.dictionaries(
    st.sampled_from(["P1", "GT"]),
    st.builds(FastLap, car=st.sampled_from(list(CARS)), lap_ms=MS.filter(bool), lap=LAPS),
    max_size=2,
)
SESSION_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.sampled_from(["", "Race"]),
    "kind": st.sampled_from(["race", "qualifying"]),
    "flag": st.sampled_from(["green", "fcy", "red", "chequered"]),
    "t_ms": st.integers(0, 10),
    "remaining_ms": MS,
    "leader_laps": LAPS,
    "laps_total": st.sampled_from([None, 0, 40]),
    "fastest": FASTEST,
    "finished": FLAG,
    "speed": st.sampled_from([None, 0.5, 60.0]),
    "paused": FLAG,
    "classes": st.sampled_from([[], ["P1", "GT", "GTC"]]),
    "gaps": st.sampled_from([0, 3]),
    "flag_reason": st.sampled_from([None, "", "debris"]),
    "laps_run": LAPS,
    "laps_neutralised": LAPS,
    "messages": LAPS,
    "synthesised": FLAG,
    "provisional": FLAG,
}


def test_the_strategies_cover_every_field() -> None:
    assert {"car", "cls", "position", *ROW_FIELDS} == set(CarRow.__struct_fields__)
    assert set(SESSION_FIELDS) == set(SessionView.__struct_fields__)


@st.composite
def boards(draw: st.DrawFn, seq: int, messages: list[RaceMessage]) -> Snapshot:
    order = draw(st.permutations(list(CARS)))
    cars = [
        CarRow(car=car, cls=CARS[car], position=position, **draw(st.fixed_dictionaries(ROW_FIELDS)))
        for position, car in enumerate(order, start=1)
    ]
    session = SessionView(**draw(st.fixed_dictionaries(SESSION_FIELDS)))
    return Snapshot(
        race=R, seq=seq, session=session, cars=cars, wall=1000.0 + seq, messages=messages
    )


@st.composite
def races(draw: st.DrawFn) -> list[Snapshot]:
    """Two to eight boards of one race, seqs rising, race-control messages added now and then."""
    out: list[Snapshot] = []
    seq = 0
    said: list[RaceMessage] = []
    for _ in range(draw(st.integers(2, 8))):
        seq += draw(st.integers(1, 5))
        for _ in range(draw(st.integers(0, 2))):
            said = board.add_messages(
                said,
                [RaceMessage(seq=seq * 10 + len(said), t_ms=seq, lap=1, category="flag", text="x")],
            )
        out.append(draw(boards(seq, said)))
    return out


def _set(patch: CarPatch | SessionPatch) -> dict[str, Any]:
    return {
        name: value
        for name in type(patch).__struct_fields__
        if (value := getattr(patch, name)) is not UNSET
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(races())
def test_delta_then_apply_rebuilds_every_board_exactly(race: list[Snapshot]) -> None:
    held = race[0]
    for previous, current in itertools.pairwise(race):
        change = delta(previous, current)
        assert change is not None, "same cars, same classes, messages appended: a delta"
        # On the wire and back, as every reader gets it.
        wired = board.decode_delta(board.encode(change))
        assert wired == change
        assert apply_delta(previous, wired) == current
        held = apply_delta(held, wired)
        assert held == current, "a chain of deltas keeps the reader's board exact"
        # Each patch holds the fields that changed and nothing else.
        before = {row.car: row for row in previous.cars}
        patched = {patch.car for patch in change.cars}
        for row in current.cars:
            old = before[row.car]
            differs = {
                name: getattr(row, name)
                for name in CarRow.__struct_fields__
                if getattr(row, name) != getattr(old, name)
            }
            if row.car not in patched:
                assert not differs
        for patch in change.cars:
            fields = _set(patch)
            assert fields.pop("car") == patch.car
            now = next(row for row in current.cars if row.car == patch.car)
            old = before[patch.car]
            assert fields and all(
                getattr(old, n) != v == getattr(now, n) for n, v in fields.items()
            )
        if change.session is None:
            assert previous.session == current.session
        else:
            fields = _set(change.session)
            assert fields and all(
                getattr(previous.session, n) != v == getattr(current.session, n)
                for n, v in fields.items()
            )


def _row(**fields: Any) -> CarRow:
    return CarRow(car="7", cls="GT", position=1, class_position=1, **fields)


def _snap(seq: int, row: CarRow, **session: Any) -> Snapshot:
    return Snapshot(race=R, seq=seq, session=SessionView(**session), cars=[row])


def test_a_field_back_to_its_default_or_null_is_sent_and_applied() -> None:
    before = _snap(
        4,
        _row(laps=3, gap_ms=1_500, in_pit=True, penalty="DSQ", sectors_ms=[30_100, None]),
        speed=60.0,
        paused=True,
        flag_reason="debris",
        flag="fcy",
    )
    after = _snap(5, _row(laps=0, gap_ms=None, in_pit=False, penalty=None))
    change = delta(before, after)
    assert change is not None
    wire = json.loads(board.encode(change))
    assert wire["cars"] == [
        {"car": "7", "laps": 0, "gap_ms": None, "sectors_ms": [], "in_pit": False, "penalty": None}
    ]
    assert wire["session"] == {"flag": "green", "speed": None, "paused": False, "flag_reason": None}
    assert apply_delta(before, board.decode_delta(board.encode(change))) == after


def test_an_unchanged_row_or_session_is_left_out() -> None:
    row = _row(laps=3)
    before, after = _snap(4, row, t_ms=1), _snap(5, row, t_ms=2)
    change = delta(before, after)
    assert change is not None and change.cars == []
    assert json.loads(board.encode(change))["session"] == {"t_ms": 2}
    same = delta(after, _snap(6, msgspec.structs.replace(row), t_ms=2))
    assert same is not None and same.cars == [] and same.session is None


def test_a_new_car_or_a_car_changing_class_means_a_snapshot() -> None:
    before = _snap(4, _row())
    joined = msgspec.structs.replace(
        before, seq=5, cars=[*before.cars, CarRow(car="8", cls="GT", position=2, class_position=2)]
    )
    assert delta(before, joined) is None
    moved = _snap(5, msgspec.structs.replace(_row(), cls="GTC"))
    assert delta(before, moved) is None


def test_a_patch_for_a_car_the_board_lacks_does_not_apply() -> None:
    before = _snap(4, _row())
    stranger = Delta(race=R, seq=5, prev_seq=4, cars=[CarPatch(car="99", laps=1)])
    with pytest.raises(board.SeqMismatch, match="'99'"):
        apply_delta(before, stranger)


@pytest.mark.parametrize(("patch", "whole"), [(CarPatch, CarRow), (SessionPatch, SessionView)])
def test_a_patch_has_every_field_of_its_row_in_order_each_also_unset(
    patch: type[msgspec.Struct], whole: type[msgspec.Struct]
) -> None:
    assert patch.__struct_fields__ == whole.__struct_fields__
    types, patch_types = get_type_hints(whole), get_type_hints(patch)
    for name in whole.__struct_fields__:
        if name == "car":
            assert patch_types[name] is str
        else:
            assert patch_types[name] == types[name] | UnsetType, name
