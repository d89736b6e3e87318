"""The wire contract: every event a race publishes, as msgspec Structs.

One definition of each event serves encoding, decoding, validation and the
JSON Schema. Both the simulator and the consumers import this module; it
imports nothing of theirs. Bump ``CONTRACT_VERSION`` (and the topic prefix)
on any change that an old consumer could not read.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

CONTRACT_VERSION = 2

CarNumber = Annotated[str, Meta(min_length=1, max_length=8, pattern=r"^[0-9A-Za-z]+$")]
RaceId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
Millis = Annotated[int, Meta(ge=0)]
Seq = Annotated[int, Meta(ge=1)]
Position = Annotated[int, Meta(ge=1)]

FlagState = Literal["green", "fcy", "red", "chequered"]
SessionKind = Literal["race", "qualifying"]
ResultStatus = Literal["classified", "not_classified", "retired", "disqualified", "dns"]


class _Event(Struct, frozen=True, gc=False, tag_field="kind", kw_only=True, omit_defaults=True):
    """Fields every event carries.

    ``seq`` is contiguous from 1 per race on the wire (the producer numbers
    the events as it emits them, its own clock and reset events included);
    ``t_ms`` is race time in milliseconds since the session started;
    ``wall`` is the Unix time, in seconds, at which the producer emitted the
    event (0 until emitted).
    """

    race: RaceId
    seq: Seq
    t_ms: Millis
    wall: float = 0.0


# -- session facts ---------------------------------------------------------


class EntryInfo(Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    number: CarNumber
    cls: str
    team: str
    drivers: list[str]
    chassis: str | None = None
    engine: str | None = None
    tyre: str | None = None


class SessionInfo(Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    name: str
    series: str
    season: int
    kind: SessionKind
    circuit: str
    lap_km: float
    lines: Annotated[int, Meta(ge=1, le=16)]
    """Timing lines per lap; the last one is the finish line."""
    duration_ms: Millis | None = None
    """Scheduled length of a time-certain session."""
    laps: Annotated[int, Meta(ge=1)] | None = None
    """Scheduled length of a lap-count session."""
    date: str | None = None
    start_time: str | None = None
    """Local time of day of the start, ``HH:MM:SS``."""
    round: int | None = None
    synthesised: bool = False
    """The session's laps were made up by the timeline from its result (no real timing):
    the story is the model's within what the sources say (since contract 1.1)."""


class SessionOpened(_Event, frozen=True, kw_only=True, tag="session_open"):
    """First event of every race: facts, entry list, classes and grid."""

    session: SessionInfo
    classes: list[str]
    entries: list[EntryInfo]
    grid: list[CarNumber]
    """Car numbers in starting order (after penalties); non-starters absent."""


class Flag(_Event, frozen=True, kw_only=True, tag="flag"):
    flag: FlagState
    reason: str | None = None


# -- timing lines ----------------------------------------------------------


class Sector(_Event, frozen=True, kw_only=True, tag="sector"):
    """A car crosses an intermediate timing line (not the finish line)."""

    car: CarNumber
    lap: Annotated[int, Meta(ge=1)]
    """The lap in progress."""
    sector: Annotated[int, Meta(ge=1)]
    """1-based index of the sector just completed."""
    sector_ms: Millis | None
    position: Position
    """Running overall position at this crossing."""


class Lap(_Event, frozen=True, kw_only=True, tag="lap"):
    """A car crosses the finish line, completing ``lap``."""

    car: CarNumber
    lap: Annotated[int, Meta(ge=1)]
    lap_ms: Millis | None
    sectors_ms: list[Millis | None]
    position: Position
    driver: str
    flag: FlagState = "green"
    """The flag shown at the line as the car crossed."""
    in_pit: bool = False
    """Crossed the line in the pit lane."""


# -- pit lane and retirements ---------------------------------------------


class PitIn(_Event, frozen=True, kw_only=True, tag="pit_in"):
    car: CarNumber
    lap: Annotated[int, Meta(ge=0)]
    """Laps completed when the car entered the pit lane."""


class PitOut(_Event, frozen=True, kw_only=True, tag="pit_out"):
    car: CarNumber
    lap: Annotated[int, Meta(ge=0)]
    """Laps completed when the car left the pit lane."""
    pit_ms: Millis
    """Pit lane time, entry to exit."""
    stationary_ms: Millis | None = None
    driver: str
    """Driver leaving the pit lane."""
    driver_change: bool = False


class Retire(_Event, frozen=True, kw_only=True, tag="retire"):
    car: CarNumber
    lap: Annotated[int, Meta(ge=0)]
    """Laps completed."""
    reason: str | None = None


class Finish(_Event, frozen=True, kw_only=True, tag="finish"):
    """A car takes the chequered flag (after its ``Lap`` event)."""

    car: CarNumber
    lap: Annotated[int, Meta(ge=0)]


class ResultRow(Struct, frozen=True, gc=False, kw_only=True, omit_defaults=True):
    position: Position
    car: CarNumber
    cls: str
    class_position: Position
    laps: Annotated[int, Meta(ge=0)]
    status: ResultStatus
    total_ms: Millis | None = None
    best_lap_ms: Millis | None = None
    best_lap: int | None = None


class SessionClosed(_Event, frozen=True, kw_only=True, tag="session_close"):
    """Last event of a race: the official classification."""

    classification: list[ResultRow]


# -- race control ------------------------------------------------------------


MessageCategory = Literal["flag", "incident", "penalty", "pit", "retirement", "information"]
MessageProvenance = Literal["timing", "article", "report", "inferred", "model"]
"""Where a message's fact comes from: the timing feed, a note of the recording
(from the article or a race report), a reading the sources do not state
(``inferred``), or the timeline's own model of an unrecorded detail (``model``)."""


class RaceControl(_Event, frozen=True, kw_only=True, tag="race_control"):
    """A race-control message, as a timing screen's message feed shows it.

    Added in contract 1.1: a 1.0 reader rejects this one kind (its decoder
    does not know the tag) and loses nothing else.
    """

    lap: Annotated[int, Meta(ge=0)]
    """The leader's laps completed when the message was given."""
    category: MessageCategory
    text: Annotated[str, Meta(min_length=1, max_length=500)]
    cars: Annotated[list[CarNumber], Meta(max_length=64)] = []
    """The cars involved, if any, first the one the message is about."""
    provenance: MessageProvenance = "timing"


# -- post-race decisions -------------------------------------------------------


class Provisional(_Event, frozen=True, kw_only=True, tag="provisional"):
    """The provisional classification: the order on the road once every car has taken the
    flag, before post-race decisions change it. ``session_close`` then carries the
    official one.

    Added in contract 1.2, sent only for a race whose result a post-race decision
    changed (a time penalty, points forfeited, a disqualification after the flag).
    """

    classification: list[ResultRow]
    reason: Annotated[str, Meta(max_length=500)] | None = None
    """Why the result is provisional (the decisions awaited)."""


PenaltyKind = Literal["time", "points", "disqualification", "other"]


class Penalty(_Event, frozen=True, kw_only=True, tag="penalty"):
    """A penalty given to one car: its time and its effect on the result.

    Added in contract 1.2. A post-race penalty comes between ``provisional`` and
    ``session_close``; its effect is the car's place in each. Its ``text`` is the
    race-control feed's message (category ``penalty``): no ``race_control`` event
    repeats it.
    """

    car: CarNumber
    penalty: PenaltyKind
    """What was given: a time, points taken away, a disqualification, other."""
    penalty_ms: Millis | None = None
    """Time added to the car's race time (``penalty`` ``time``)."""
    post_race: bool = True
    """Given after the flag (else during the race)."""
    position_before: Position | None = None
    """The car's place in the provisional classification."""
    position_after: Position | None = None
    """Its place in the official classification."""
    text: Annotated[str, Meta(min_length=1, max_length=500)]
    """The decision as a timing screen's message feed shows it: ``#79 +23 s, post-race:
    3rd to 6th``, then the source's words when it gives any."""
    provenance: MessageProvenance = "timing"


# -- replay control ---------------------------------------------------------


ClockAction = Literal["start", "pause", "resume", "speed", "seek"]


class Clock(_Event, frozen=True, kw_only=True, tag="clock"):
    """The replay clock changed: started, paused, resumed, speed or seek.

    ``speed`` is race seconds per wall second; ``None`` means as fast as
    possible. ``speed`` and ``paused`` are the clock's state after the change.
    ``t_ms`` is the race clock when the change happened (never before the
    previous event's, never after the next one's). A ``seek`` carries its
    ``target_ms``: the events up to the target follow as fast as possible,
    then the race goes on at ``speed`` from there.
    """

    action: ClockAction
    speed: Annotated[float, Meta(gt=0)] | None
    paused: bool = False
    target_ms: Millis | None = None
    """Race time sought (``seek`` only)."""


class Reset(_Event, frozen=True, kw_only=True, tag="reset"):
    """Discard everything folded so far: the stream starts the race again.

    Sent for a backward seek. Then come a fresh ``session_open``, a
    ``clock`` event (``seek``, with the same ``target_ms``) and the race
    from its start up to ``target_ms`` as fast as possible, then at the
    clock's pace. ``seq`` keeps counting up across a reset; ``t_ms`` starts
    again from the new ``session_open``. A consumer that folds the stream
    ends in the same state as one that watched the race from the start.
    """

    target_ms: Millis
    reason: str = "seek"


Event = (
    SessionOpened
    | Flag
    | Sector
    | Lap
    | PitIn
    | PitOut
    | Retire
    | Finish
    | SessionClosed
    | Clock
    | Reset
    | RaceControl
    | Provisional
    | Penalty
)

EVENT_TYPES: tuple[type[_Event], ...] = (
    SessionOpened,
    Flag,
    Sector,
    Lap,
    PitIn,
    PitOut,
    Retire,
    Finish,
    SessionClosed,
    Clock,
    Reset,
    RaceControl,
    Provisional,
    Penalty,
)


class Batch(Struct, frozen=True, gc=False, tag_field="kind", tag="batch", kw_only=True):
    """Several consecutive events of one race in one MQTT message.

    Used when the replay runs far ahead of real time, so that events per
    second are not capped by per-message client overhead.
    """

    race: RaceId
    events: Annotated[list[Event], Meta(min_length=1)]


Message = Event | Batch
"""What one MQTT message on an events topic holds."""

_encoder = msgspec.json.Encoder()
_message_decoder: msgspec.json.Decoder[Message] = msgspec.json.Decoder(Message)


class PayloadError(ValueError):
    """A payload that is not a valid message under this contract."""


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(payload: bytes) -> Message:
    """Decode and validate one MQTT payload; raise ``PayloadError`` naming the fault."""
    try:
        return _message_decoder.decode(payload)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise PayloadError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        # A tag value with invalid UTF-8 escapes msgspec's own error type.
        raise PayloadError(f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        # msgspec recurses into unknown fields while skipping them: a hostile
        # payload nested a few thousand levels deep must not escape as a crash.
        raise PayloadError("payload is nested too deeply") from exc


def unbatch(message: Message) -> list[Event]:
    """The events of a message, in order, whether it is one event or a batch."""
    if isinstance(message, Batch):
        return list(message.events)
    return [message]


def json_schema() -> dict[str, object]:
    """JSON Schema of an events-topic payload, generated from the types."""
    schema: dict[str, object] = msgspec.json.schema(Message)
    return schema
