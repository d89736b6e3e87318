"""The leaderboard as published: snapshot and delta types shared by projector, gateway and widget.

The projector publishes a retained ``Snapshot`` per race on
``chequered/v1/<race>/standings`` and a ``Delta`` per folded message on
``chequered/v1/<race>/standings/delta``. Both carry the event ``seq`` they
reflect; a delta also carries ``prev_seq``, the seq of the snapshot or delta
it applies on top of, so that a reader can check it missed nothing.
"""

from __future__ import annotations

from typing import Literal

import msgspec
from msgspec import Struct

CarStatus = Literal["running", "in_pit", "retired", "finished", "dns"]
ResultStatus = Literal["classified", "not_classified", "retired", "disqualified", "dns"]


class CarRow(Struct, kw_only=True, omit_defaults=True):
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


class RaceMessage(Struct, kw_only=True, omit_defaults=True):
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


class FastLap(Struct, kw_only=True, omit_defaults=True):
    car: str
    lap_ms: int
    lap: int


class SessionView(Struct, kw_only=True, omit_defaults=True):
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


class Snapshot(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="snapshot"):
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


class Delta(Struct, kw_only=True, omit_defaults=True, tag_field="type", tag="delta"):
    race: str
    seq: int
    prev_seq: int
    session: SessionView | None = None
    """The whole session view, when anything in it changed."""
    cars: list[CarRow] = []
    """Whole rows of the cars that changed (position changes included)."""
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
    """The snapshot after ``delta``: changed rows replaced by car, the order by position.

    Pure; the input snapshot is left unchanged. Raises ``SeqMismatch`` unless
    ``delta.prev_seq == snapshot.seq`` (a reader then waits for a fresh snapshot).
    """
    if delta.race != snapshot.race:
        raise SeqMismatch(f"delta for race {delta.race!r} on a snapshot of {snapshot.race!r}")
    if delta.prev_seq != snapshot.seq:
        raise SeqMismatch(
            f"{delta.race}: delta {delta.seq} applies on seq {delta.prev_seq},"
            f" the snapshot is at seq {snapshot.seq}"
        )
    changed = {row.car: row for row in delta.cars}
    cars = [changed.pop(row.car, row) for row in snapshot.cars]
    cars.extend(changed.values())
    # A stable sort keeps the previous order among rows that share a position mid-update.
    cars.sort(key=lambda row: row.position)
    return Snapshot(
        race=snapshot.race,
        seq=delta.seq,
        session=delta.session if delta.session is not None else snapshot.session,
        cars=cars,
        wall=delta.wall or snapshot.wall,
        messages=add_messages(snapshot.messages, delta.messages),
    )


def add_messages(kept: list[RaceMessage], new: list[RaceMessage]) -> list[RaceMessage]:
    """``kept`` with ``new`` after it (any already there by seq left out), the latest
    ``MESSAGES_KEPT``."""
    if not new:
        return kept
    last = kept[-1].seq if kept else 0
    out = [*kept, *(m for m in new if m.seq > last)]
    return out[-MESSAGES_KEPT:]
