"""The checkpoint codec of the standings fold: checksummed msgpack records (pure).

``consumers.projector.checkpoints`` keeps them in files, one per race; this
module only turns states into bytes and back, so it can be fuzzed with plain calls.

A record is whole (the race's state) or a patch: the race's state with only the
cars that changed since the record before it, which a reader lays over that
record's state. A file starts with a whole record; when an event or two changed
one or two cars of a field of 36, a patch is a tenth the size of a whole record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Collection

import msgspec

from consumers.standings.fold import STATE_VERSION, RaceState

# Each record: magic, payload length, CRC-32 of the payload, then the payload.
# Appending a record costs tens of microseconds; replacing a file by rename
# costs a millisecond or more on ext4 (a rename over a file forces its data out).
MAGIC = b"CQK1"
"""A whole record: the race's state."""
PATCH_MAGIC = b"CQP1"
"""A patch: the race's state holding only the cars changed since the record before."""
_HEADER = struct.Struct(">4sII")

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RaceState)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names it."""


def encode(state: RaceState) -> bytes:
    return _encoder.encode(state)


def decode(data: bytes, *, name: str = "checkpoint") -> RaceState:
    """The state in one record's payload; ``CheckpointError`` naming ``name`` if unusable."""
    try:
        state = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise CheckpointError(f"{name}: not a standings checkpoint ({exc})") from exc
    if state.version != STATE_VERSION:
        raise CheckpointError(
            f"{name}: checkpoint version {state.version}, this projector reads {STATE_VERSION}"
        )
    return state


def record(state: RaceState, cars: Collection[str] | None = None) -> bytes:
    """One checkpoint record, header and payload: whole, or with ``cars`` a patch
    holding only those of the race's cars."""
    if cars is None:
        payload, magic = encode(state), MAGIC
    else:
        changed = {car: state.cars[car] for car in cars if car in state.cars}
        payload, magic = encode(msgspec.structs.replace(state, cars=changed)), PATCH_MAGIC
    return _HEADER.pack(magic, len(payload), zlib.crc32(payload)) + payload


def read_records(data: bytes, *, name: str = "checkpoint") -> tuple[RaceState, int, bool]:
    """The state the records of a file lead to, the records read, and whether
    anything followed them.

    Reading stops at the first record that is cut short or fails its checksum
    (a write interrupted when the process was killed): the state is then the
    one the records before it lead to.
    """
    offset = 0
    count = 0
    state: RaceState | None = None
    size = _HEADER.size
    while offset + size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        start = offset + size
        payload = data[start : start + length]
        if (
            magic not in (MAGIC, PATCH_MAGIC)
            or len(payload) != length
            or zlib.crc32(payload) != crc
        ):
            break
        found = decode(payload, name=name)
        if magic == MAGIC:
            state = found
        elif state is None:
            raise CheckpointError(f"{name}: a patch record with no whole record before it")
        elif found.race != state.race:
            raise CheckpointError(f"{name}: a patch of race {found.race!r} on {state.race!r}")
        else:
            found.cars = {**state.cars, **found.cars}
            state = found
        count += 1
        offset = start + length
    if state is None:
        raise CheckpointError(f"{name}: no complete checkpoint record")
    return state, count, offset != len(data)
