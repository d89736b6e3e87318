"""What the projector accepts from the events and meta topics: pure checks of one MQTT message.

``parse`` turns a topic and payload into the events to fold, ``parse_meta`` a
race's retained meta into its ``session_open``; both raise ``BadPayload`` with
the reason. ``dead_letter`` builds what goes to the dead-letter topic. No I/O,
so the checks can be fuzzed with plain calls.
"""

from __future__ import annotations

from collections.abc import Container

import msgspec

from chequered.contract import topics
from chequered.contract.deadletter import DeadLetter
from chequered.contract.events import Batch, Event, PayloadError, SessionOpened, decode, encode

MAX_PAYLOAD_BYTES = 4 * 1024 * 1024
"""Largest events-topic payload read; a batch of a few thousand events is well under it."""
MAX_BATCH_EVENTS = 10_000
"""Most events in one batch."""
DEAD_LETTER_EXCERPT_BYTES = 1024
"""How much of a rejected payload the dead letter repeats."""
UNKNOWN_RACE = "_"
"""Race segment of the dead-letter topic when the race is not one being folded."""


class BadPayload(ValueError):
    """A message that cannot be folded. ``race`` is the topic's race, if the topic had one."""

    def __init__(self, reason: str, race: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.race = race


_dead_letter_encoder = msgspec.json.Encoder()
_dead_letter_decoder = msgspec.json.Decoder(DeadLetter)


def parse(
    topic: str,
    payload: bytes,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    max_events: int = MAX_BATCH_EVENTS,
) -> list[Event]:
    """The events of one events-topic message, in order; ``BadPayload`` if unusable.

    The payload must be valid under the contract and every event in it must
    belong to the race named by the topic.
    """
    race = topics.race_of(topic)
    if race is None or topics.leaf_of(topic) != topics.EVENTS:
        raise BadPayload(f"{topic}: not an events topic of {topics.ROOT}")
    if len(payload) > max_bytes:
        raise BadPayload(f"payload of {len(payload)} bytes is more than {max_bytes}", race)
    try:
        message = decode(payload)
    except PayloadError as exc:
        raise BadPayload(f"invalid payload: {exc}", race) from exc
    if isinstance(message, Batch):
        if message.race != race:
            raise BadPayload(f"batch of race {message.race} on the topic of race {race}", race)
        if len(message.events) > max_events:
            raise BadPayload(f"batch of {len(message.events)} events, more than {max_events}", race)
        events = list(message.events)
    else:
        events = [message]
    for event in events:
        if event.race != race:
            raise BadPayload(
                f"event seq {event.seq} of race {event.race} on the topic of race {race}", race
            )
    return events


def parse_meta(
    topic: str, payload: bytes, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> SessionOpened | None:
    """The ``session_open`` a race's meta topic holds; None for an empty payload (a
    retained meta being cleared); ``BadPayload`` if it is anything else."""
    race = topics.race_of(topic)
    if race is None or topics.leaf_of(topic) != topics.META:
        raise BadPayload(f"{topic}: not a meta topic of {topics.ROOT}")
    if not payload:
        return None
    if len(payload) > max_bytes:
        raise BadPayload(f"meta of {len(payload)} bytes is more than {max_bytes}", race)
    try:
        message = decode(payload)
    except PayloadError as exc:
        raise BadPayload(f"invalid meta: {exc}", race) from exc
    if not isinstance(message, SessionOpened):
        kind = "batch" if isinstance(message, Batch) else message.__struct_config__.tag
        raise BadPayload(f"meta of race {race} is a {kind}, not a session_open", race)
    if message.race != race:
        raise BadPayload(f"meta of race {message.race} on the topic of race {race}", race)
    return message


def dead_letter_topic(race: str | None, known: Container[str]) -> str:
    """``chequered/v2/<race>/deadletter`` for a race being folded, else ``.../_/deadletter``.

    Unknown races share one topic so that garbage cannot create topics at will.
    """
    segment = race if race is not None and race in known else UNKNOWN_RACE
    return topics.topic(segment, topics.DEAD_LETTER)


def dead_letter(
    reason: str,
    topic: str,
    payload: bytes,
    *,
    race: str | None = None,
    seq: int | None = None,
    wall: float = 0.0,
    excerpt: int = DEAD_LETTER_EXCERPT_BYTES,
) -> bytes:
    """The dead-letter message for a rejected payload."""
    return _dead_letter_encoder.encode(
        DeadLetter(
            reason=reason,
            topic=topic,
            payload=payload[:excerpt].decode("utf-8", "replace"),
            truncated=len(payload) > excerpt,
            race=race,
            seq=seq,
            wall=wall,
        )
    )


def dead_event(reason: str, topic: str, event: Event, *, wall: float = 0.0) -> bytes:
    """The dead-letter message for one event the fold rejected."""
    return dead_letter(reason, topic, encode(event), race=event.race, seq=event.seq, wall=wall)


def decode_dead_letter(payload: bytes) -> DeadLetter:
    return _dead_letter_decoder.decode(payload)
