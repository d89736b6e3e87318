"""The leaderboard as published: snapshot and delta types shared by projector, gateway and widget.

The projector publishes a retained ``Snapshot`` per race on
``chequered/v2/<race>/standings`` and a ``Delta`` per folded message on
``chequered/v2/<race>/standings/delta``. Both carry the event ``seq`` they
reflect; a delta also carries ``prev_seq``, the seq of the snapshot or delta
it applies on top of, so that a reader can check it missed nothing. A delta
carries only the fields that changed (``CarPatch``, ``SessionPatch``);
``row_patch`` and ``session_patch`` make them, ``apply_delta`` merges them.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import UNSET, Struct, UnsetType

CarStatus = Literal["running", "in_pit", "retired", "finished", "dns"]
ResultStatus = Literal["classified", "not_classified", "retired", "disqualified", "dns"]


class CarRow(Struct, kw_only=True, omit_defaults=True, gc=False):
    """One car on the leaderboard; every field a timing screen shows."""

    car: str
    cls: str
    position: int
    class_position: int
    team: str = ""
    driver: str = ""
    laps: int = 0
    gap_ms: int | None = None
    """Gap to the overall leader in ms, when on the leader's lap."""
    gap_laps: int = 0
    """Laps behind the overall leader (``+N laps``); 0 when on the lead lap."""
    interval_ms: int | None = None
    interval_laps: int = 0
    class_gap_ms: int | None = None
    class_gap_laps: int = 0
    class_interval_ms: int | None = None
    class_interval_laps: int = 0
    last_lap_ms: int | None = None
    best_lap_ms: int | None = None
    best_lap: int | None = None
    """Lap number on which the best lap was set."""
    last_is_personal_best: bool = False
    last_is_class_best: bool = False
    last_is_overall_best: bool = False
    sectors_ms: list[int | None] = []
    """Latest time of each sector (this lap's where crossed, else the last lap's)."""
    pit_stops: int = 0
    in_pit: bool = False
    out_lap: bool = False
    stint_laps: int = 0
    gained: int = 0
    """Places gained overall since the start (negative: lost)."""
    status: CarStatus = "running"
    result: ResultStatus | None = None
    """Official classification status, once the session has closed."""
    penalty: str | None = None
    """The car's penalty as its row shows it (``+23 s``, ``points forfeited``, ``DSQ``)."""
    penalty_ms: int | None = None
    """Time added to the car's race time by a penalty."""


class RaceMessage(Struct, kw_only=True, omit_defaults=True, gc=False):
    """A race-control message on the board (from a ``race_control`` event)."""

    seq: int
    """Seq of its event: unique in a race, and the order of the feed."""
    t_ms: int
    lap: int
    category: str
    text: str
    cars: list[str] = []
    provenance: str = "timing"


MESSAGES_KEPT = 30
"""Race-control messages a snapshot holds (the latest); a delta carries only new ones."""


class FastLap(Struct, kw_only=True, omit_defaults=True, gc=False):
    car: str
    lap_ms: int
    lap: int


class SessionView(Struct, kw_only=True, omit_defaults=True, gc=False):
    name: str = ""
    kind: Literal["race", "qualifying"] = "race"
    flag: Literal["green", "fcy", "red", "chequered"] = "green"
    t_ms: int = 0
    remaining_ms: int | None = None
    """Time left of a time-certain session; None for a lap-count session."""
    leader_laps: int = 0
    laps_total: int | None = None
    fastest: dict[str, FastLap] = {}
    """Fastest lap per class."""
    finished: bool = False
    speed: float | None = None
    paused: bool = False
    classes: list[str] = []
    gaps: int = 0
    """Event seqs missing from the folded stream; 0 when nothing was lost."""
    flag_reason: str | None = None
    """Why the flag is out (the reason of the latest ``flag`` event)."""
    laps_run: int = 0
    """Laps completed by all cars together so far."""
    laps_neutralised: int = 0
    """Of those, laps completed under a full-course yellow or a red flag."""
    messages: int = 0
    """Race-control messages given so far (the latest are in the snapshot's ``messages``)."""
    synthesised: bool = False
    """The race is synthesised from its result (its ``session_open`` says so)."""
    provisional: bool = False
    """The order is the provisional classification: post-race decisions are awaited,
    and ``session_close`` (``finished``) brings the official one."""


class Snapshot(
    Struct, kw_only=True, omit_defaults=True, gc=False, tag_field="type", tag="snapshot"
):
    race: str
    seq: int
    """Seq of the last event folded into this snapshot (0: none yet)."""
    session: SessionView
    cars: list[CarRow]
    """Every car, in overall order; filter by ``cls`` for a class view."""
    wall: float = 0.0
    """Emission time of the last event folded, for latency measurement."""
    messages: list[RaceMessage] = []
    """The latest ``MESSAGES_KEPT`` race-control messages, oldest first."""


class CarPatch(Struct, kw_only=True, omit_defaults=True, gc=False):
    """The fields of one car's row that changed: ``car``, then only what differs.

    A field left out is unchanged (``UNSET`` here); one present holds its new value,
    ``null``, ``false``, ``0`` and ``[]`` included. Fields as in ``CarRow``, in its order.
    """

    car: str
    cls: str | UnsetType = UNSET
    position: int | UnsetType = UNSET
    class_position: int | UnsetType = UNSET
    team: str | UnsetType = UNSET
    driver: str | UnsetType = UNSET
    laps: int | UnsetType = UNSET
    gap_ms: int | UnsetType | None = UNSET
    gap_laps: int | UnsetType = UNSET
    interval_ms: int | UnsetType | None = UNSET
    interval_laps: int | UnsetType = UNSET
    class_gap_ms: int | UnsetType | None = UNSET
    class_gap_laps: int | UnsetType = UNSET
    class_interval_ms: int | UnsetType | None = UNSET
    class_interval_laps: int | UnsetType = UNSET
    last_lap_ms: int | UnsetType | None = UNSET
    best_lap_ms: int | UnsetType | None = UNSET
    best_lap: int | UnsetType | None = UNSET
    last_is_personal_best: bool | UnsetType = UNSET
    last_is_class_best: bool | UnsetType = UNSET
    last_is_overall_best: bool | UnsetType = UNSET
    sectors_ms: list[int | None] | UnsetType = UNSET
    pit_stops: int | UnsetType = UNSET
    in_pit: bool | UnsetType = UNSET
    out_lap: bool | UnsetType = UNSET
    stint_laps: int | UnsetType = UNSET
    gained: int | UnsetType = UNSET
    status: CarStatus | UnsetType = UNSET
    result: ResultStatus | UnsetType | None = UNSET
    penalty: str | UnsetType | None = UNSET
    penalty_ms: int | UnsetType | None = UNSET


class SessionPatch(Struct, kw_only=True, omit_defaults=True, gc=False):
    """The fields of the session view that changed; a field left out is unchanged.

    Fields as in ``SessionView``, in its order; ``fastest`` and ``classes`` come whole.
    """

    name: str | UnsetType = UNSET
    kind: Literal["race", "qualifying"] | UnsetType = UNSET
    flag: Literal["green", "fcy", "red", "chequered"] | UnsetType = UNSET
    t_ms: int | UnsetType = UNSET
    remaining_ms: int | UnsetType | None = UNSET
    leader_laps: int | UnsetType = UNSET
    laps_total: int | UnsetType | None = UNSET
    fastest: dict[str, FastLap] | UnsetType = UNSET
    finished: bool | UnsetType = UNSET
    speed: float | UnsetType | None = UNSET
    paused: bool | UnsetType = UNSET
    classes: list[str] | UnsetType = UNSET
    gaps: int | UnsetType = UNSET
    flag_reason: str | UnsetType | None = UNSET
    laps_run: int | UnsetType = UNSET
    laps_neutralised: int | UnsetType = UNSET
    messages: int | UnsetType = UNSET
    synthesised: bool | UnsetType = UNSET
    provisional: bool | UnsetType = UNSET


class Delta(Struct, kw_only=True, omit_defaults=True, gc=False, tag_field="type", tag="delta"):
    race: str
    seq: int
    prev_seq: int
    session: SessionPatch | None = None
    """The session view's fields that changed, when any did."""
    cars: list[CarPatch] = []
    """Per car that changed (position changes included), the fields that changed."""
    wall: float = 0.0
    messages: list[RaceMessage] = []
    """Race-control messages given since ``prev_seq``, oldest first."""


_encoder = msgspec.json.Encoder()
_snapshot_decoder = msgspec.json.Decoder(Snapshot)
_delta_decoder = msgspec.json.Decoder(Delta)


def encode(value: Snapshot | Delta) -> bytes:
    return _encoder.encode(value)


def decode_snapshot(payload: bytes) -> Snapshot:
    return _snapshot_decoder.decode(payload)


def decode_delta(payload: bytes) -> Delta:
    return _delta_decoder.decode(payload)


class SeqMismatch(ValueError):
    """A delta that does not apply on top of the given snapshot (``prev_seq`` differs)."""


def apply_delta(snapshot: Snapshot, delta: Delta) -> Snapshot:
    """The snapshot after ``delta``: each car's patch merged into its row, the session's
    into the session view, the order by position.

    Pure; the input snapshot is left unchanged. Raises ``SeqMismatch`` unless
    ``delta.prev_seq == snapshot.seq`` and every patched car is on the board (a
    reader then waits for a fresh snapshot).
    """
    if delta.race != snapshot.race:
        raise SeqMismatch(f"delta for race {delta.race!r} on a snapshot of {snapshot.race!r}")
    if delta.prev_seq != snapshot.seq:
        raise SeqMismatch(
            f"{delta.race}: delta {delta.seq} applies on seq {delta.prev_seq},"
            f" the snapshot is at seq {snapshot.seq}"
        )
    cars = snapshot.cars
    if delta.cars:
        cars = list(cars)
        index = {row.car: i for i, row in enumerate(cars)}
        for patch in delta.cars:
            i = index.get(patch.car)
            if i is None:
                raise SeqMismatch(
                    f"{delta.race}: delta {delta.seq} changes car {patch.car!r},"
                    f" which the snapshot at seq {snapshot.seq} does not have"
                )
            cars[i] = patch_row(cars[i], patch)
        # A stable sort keeps the previous order among rows that share a position mid-update.
        cars.sort(key=lambda row: row.position)
    session = snapshot.session
    if delta.session is not None:
        session = patch_session(session, delta.session)
    return Snapshot(
        race=snapshot.race,
        seq=delta.seq,
        session=session,
        cars=cars,
        wall=delta.wall or snapshot.wall,
        messages=add_messages(snapshot.messages, delta.messages),
    )


_ROW_FIELDS = CarRow.__struct_fields__
_SESSION_FIELDS = SessionView.__struct_fields__


def row_patch(old: CarRow, new: CarRow) -> CarPatch | None:
    """The fields of ``new`` that differ from ``old`` (the same car's row); None if none do."""
    if old is new or old == new:  # most rows of a board are unchanged: compared in C, at once
        return None
    changed = {
        name: value
        for name, was, value in zip(
            _ROW_FIELDS, msgspec.structs.astuple(old), msgspec.structs.astuple(new), strict=True
        )
        if was != value
    }
    if not changed:
        return None
    changed["car"] = new.car
    return CarPatch(**changed)


def session_patch(old: SessionView, new: SessionView) -> SessionPatch | None:
    """The fields of ``new`` that differ from ``old``; None if none do."""
    if old is new or old == new:
        return None
    changed = {
        name: value
        for name, was, value in zip(
            _SESSION_FIELDS,
            msgspec.structs.astuple(old),
            msgspec.structs.astuple(new),
            strict=True,
        )
        if was != value
    }
    return SessionPatch(**changed) if changed else None


def patch_row(row: CarRow, patch: CarPatch) -> CarRow:
    """``row`` with every field that ``patch`` sets (``car`` is the row's own)."""
    values = msgspec.structs.astuple(patch)
    changed = {
        name: value
        for name, value in zip(_ROW_FIELDS[1:], values[1:], strict=True)
        if value is not UNSET
    }
    return msgspec.structs.replace(row, **changed) if changed else row


def patch_session(view: SessionView, patch: SessionPatch) -> SessionView:
    """``view`` with every field that ``patch`` sets."""
    changed = {
        name: value
        for name, value in zip(_SESSION_FIELDS, msgspec.structs.astuple(patch), strict=True)
        if value is not UNSET
    }
    return msgspec.structs.replace(view, **changed) if changed else view


def add_messages(kept: list[RaceMessage], new: list[RaceMessage]) -> list[RaceMessage]:
    """``kept`` with ``new`` after it (any already there by seq left out), the latest
    ``MESSAGES_KEPT``."""
    if not new:
        return kept
    last = kept[-1].seq if kept else 0
    out = [*kept, *(m for m in new if m.seq > last)]
    return out[-MESSAGES_KEPT:]
