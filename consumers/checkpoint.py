"""Checkpoints of the standings fold: one file per race of checksummed msgpack records.

A checkpoint only saves time: the projector acknowledges events to the broker
after the checkpoint that holds them is on disk, so that a restart resumes
from it and the broker redelivers the rest (reasoning in STANDINGS.md).
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from pathlib import Path

import msgspec

from chequered import log
from consumers.standings import STATE_VERSION, RaceState

_log = log.get(__name__)

SUFFIX = ".ckpt"
BAD_SUFFIX = ".bad"
FSYNC = False
"""fsync each checkpoint. Off by default: a record appended (or a file renamed into
place) survives a killed process; fsync adds survival of a power cut, at a cost in ms."""
COMPACT_BYTES = 1024 * 1024
"""A file that would grow past this is rewritten holding its newest record only."""
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
"""A checkpoint file larger than this is not read (a race's state is a few kB)."""

# Each record: magic, payload length, CRC-32 of the payload, then the payload.
# Appending a record costs tens of microseconds; replacing a file by rename
# costs a millisecond or more on ext4 (a rename over a file forces its data out).
MAGIC = b"CQK1"
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


def record(state: RaceState) -> bytes:
    """One checkpoint record: header and payload."""
    payload = encode(state)
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def last_record(data: bytes, *, name: str = "checkpoint") -> tuple[bytes, int, bool]:
    """The payload of the last complete record, the records read, and whether
    anything followed them.

    Reading stops at the first record that is cut short or fails its checksum
    (a write interrupted when the process was killed).
    """
    offset = 0
    count = 0
    last: bytes | None = None
    size = _HEADER.size
    while offset + size <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, offset)
        start = offset + size
        payload = data[start : start + length]
        if magic != MAGIC or len(payload) != length or zlib.crc32(payload) != crc:
            break
        last = payload
        count += 1
        offset = start + length
    if last is None:
        raise CheckpointError(f"{name}: no complete checkpoint record")
    return last, count, offset != len(data)


def path_for(directory: Path, race: str) -> Path:
    # Race ids match [a-z0-9][a-z0-9_-]*: safe as file names as they are.
    return directory / f"{race}{SUFFIX}"


def save(directory: Path, state: RaceState, *, fsync: bool = FSYNC) -> Path:
    """Append the race's state to its checkpoint file (rewritten when it grows large)."""
    data = record(state)
    target = path_for(directory, state.race)
    # Bare file descriptors: this runs at every flush, and a buffered file object
    # costs more to open than the record costs to write.
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return _replace(directory, target, data, fsync=fsync)
    try:
        if os.fstat(fd).st_size + len(data) <= COMPACT_BYTES:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
            return target
    finally:
        os.close(fd)
    return _replace(directory, target, data, fsync=fsync)


def _replace(directory: Path, target: Path, data: bytes, *, fsync: bool) -> Path:
    """A new file holding ``data`` only, put in place atomically (temporary file, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, target)
    if fsync:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def load(path: Path) -> RaceState:
    """The newest state in one checkpoint file; ``CheckpointError`` naming the file."""
    state, _ = _load(path)
    return state


def _load(path: Path) -> tuple[RaceState, bool]:
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, more than {MAX_CHECKPOINT_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    payload, count, torn = last_record(data, name=str(path))
    state = decode(payload, name=str(path))
    if path.name != f"{state.race}{SUFFIX}":
        raise CheckpointError(f"{path}: holds race {state.race!r}, not the one its name says")
    return state, torn or count > 1


def load_all(directory: Path, *, compact: bool = True) -> dict[str, RaceState]:
    """Every race checkpointed in ``directory``, each file rewritten to its newest record.

    Rewriting on start means records are only ever appended to a clean file,
    never after a record cut short by a kill. An unusable file is logged and
    renamed to ``*.bad`` (kept for a look); its race starts from nothing.
    """
    states: dict[str, RaceState] = {}
    if not directory.exists():
        return states
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            state, untidy = _load(path)
        except CheckpointError as exc:
            _log.error("checkpoint_unusable", file=str(path), reason=str(exc))
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + BAD_SUFFIX))
            continue
        if compact and untidy:
            _replace(directory, path, record(state), fsync=FSYNC)
        states[state.race] = state
    return states
