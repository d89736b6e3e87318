"""Replay control commands and the producer's retained status, as msgspec Structs.

Commands arrive on ``chequered/v2/<race>/control``; every command is
answered on ``chequered/v2/<race>/status`` with the producer's status and a
reply naming the command (by its ``id`` when the sender gave one).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

from chequered.contract.events import Millis, RaceId, Seq

MIN_SPEED = 0.1
MAX_SPEED = 1000.0

CommandId = Annotated[str, Meta(max_length=64)]


class _Command(Struct, frozen=True, tag_field="cmd", kw_only=True, forbid_unknown_fields=True):
    id: CommandId | None = None


class Pause(_Command, frozen=True, kw_only=True, tag="pause"):
    pass


class Resume(_Command, frozen=True, kw_only=True, tag="resume"):
    pass


class SetSpeed(_Command, frozen=True, kw_only=True, tag="speed"):
    speed: Annotated[float, Meta(ge=MIN_SPEED, le=MAX_SPEED)] | None
    """Race seconds per wall second; ``null`` runs as fast as possible."""


class Seek(_Command, frozen=True, kw_only=True, tag="seek"):
    """Seek to a race time or to the moment the leader starts a lap (one of the two)."""

    t_ms: Millis | None = None
    lap: Annotated[int, Meta(ge=1)] | None = None


class Resend(_Command, frozen=True, kw_only=True, tag="resend"):
    """Send the race again: a consumer that found seqs missing (``from_seq`` is the
    first) asks for them. The producer answers as to a backward seek to the race's
    current time: a ``reset``, then the race from its start up to now as fast as
    possible, then at pace; a consumer that folds the stream ends exact."""

    from_seq: Seq


Command = Pause | Resume | SetSpeed | Seek | Resend

ProducerState = Literal["idle", "running", "paused", "finished", "offline"]


class Reply(Struct, frozen=True, kw_only=True, omit_defaults=True):
    cmd: str
    ok: bool
    id: CommandId | None = None
    error: str | None = None


class Status(Struct, frozen=True, kw_only=True, omit_defaults=True):
    race: RaceId
    state: ProducerState
    speed: float | None = None
    """Race seconds per wall second; ``None`` when as fast as possible."""
    t_ms: Millis = 0
    last_seq: Seq | None = None
    end_ms: Millis | None = None
    wall: float = 0.0
    reply: Reply | None = None
    rejected: Annotated[int, Meta(ge=0)] = 0
    """Control payloads rejected since the producer started."""
    injected: dict[str, int] | None = None
    """Faults injected so far by a producer run with faults, by kind (see the injected topic)."""


class CommandError(ValueError):
    """A control payload that is not a valid command."""


_command_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_status_decoder = msgspec.json.Decoder(Status)
_encoder = msgspec.json.Encoder()


def decode_command(payload: bytes) -> Command:
    """Decode and validate one control payload; raise ``CommandError`` naming the fault."""
    try:
        command = _command_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise CommandError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise CommandError(f"payload is not valid UTF-8: {exc.reason} at byte {exc.start}") from exc
    except RecursionError as exc:
        raise CommandError("payload is nested too deeply") from exc
    if isinstance(command, Seek) and (command.t_ms is None) == (command.lap is None):
        raise CommandError("seek needs exactly one of `t_ms` or `lap`")
    return command


def decode_status(payload: bytes) -> Status:
    return _status_decoder.decode(payload)


def encode(value: Command | Status) -> bytes:
    return _encoder.encode(value)


def command_schema() -> dict[str, object]:
    """JSON Schema of a control-topic payload, generated from the types."""
    schema: dict[str, object] = msgspec.json.schema(Command)
    return schema


def status_schema() -> dict[str, object]:
    """JSON Schema of a status-topic payload, generated from the types."""
    schema: dict[str, object] = msgspec.json.schema(Status)
    return schema
