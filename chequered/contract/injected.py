"""What a hostile feed injected: one label per fault, on ``chequered/v2/<race>/injected``.

A consumer's author runs the producer with faults (``chequered replay --drop ...``)
and checks their consumer against these labels, the truth of what was done to the
stream; documented by ``docs/schema/injected.schema.json``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from chequered.contract.events import RaceId

FaultKind = Literal["duplicate", "drop", "reorder", "burst", "stall", "seek_back", "malformed"]
FAULT_KINDS: tuple[FaultKind, ...] = (
    "duplicate",
    "drop",
    "reorder",
    "burst",
    "stall",
    "seek_back",
    "malformed",
)


class Injected(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One fault the producer injected into a race's stream, published as it is done."""

    race: RaceId
    fault: FaultKind
    n: Annotated[int, Meta(ge=1)]
    """Faults injected into this race so far, this one included."""
    first_seq: int | None = None
    """First seq of the events message the fault touched (none for a stall or burst)."""
    last_seq: int | None = None
    events: Annotated[int, Meta(ge=0)] = 0
    """Events in that message: dropped, sent twice or sent late."""
    behind: int | None = None
    """reorder: events messages sent before this one, though they came after it."""
    hold_s: float | None = None
    """burst, stall: seconds the whole feed was held before it went on."""
    target_ms: int | None = None
    """seek_back: the race time the injected seek command went back to."""
    form: str | None = None
    """malformed: not_json, truncated, unknown_kind or wrong_types."""
    payload: str | None = None
    """malformed: the payload published on the events topic, as UTF-8 with replacement."""
    wall: float = 0.0
    """When it was injected (Unix seconds)."""
