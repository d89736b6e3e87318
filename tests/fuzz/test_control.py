"""Property-based fuzzing of replay control: a bad command is refused and changes nothing.

``decode_command`` turns any bytes into a ``Command`` or a ``CommandError``;
``Feed.handle`` answers any payload with a reply, and when the reply refuses
the command the race's clock, position and numbering are exactly as before.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chequered.contract.control import (
    Command,
    CommandError,
    Pause,
    Resume,
    Seek,
    SetSpeed,
    decode_command,
)
from simulator.live.feed import Feed
from tests.support.feed import tiny_race

pytestmark = pytest.mark.slow

BYTES_EXAMPLES = 1500
SHAPED_EXAMPLES = 1000
FEED_EXAMPLES = 800

NOW = 1_700_000_000.0


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


junk = st.sampled_from(
    [None, True, 0, -1, 0.05, 0.1, 1, 1000, 1000.01, 1e308, "", "max", "1", [], {}, 2**64]
)
shaped = st.fixed_dictionaries(
    {"cmd": st.sampled_from(["pause", "resume", "speed", "seek", "stop", "", "PAUSE"])},
    optional={
        "id": st.text(max_size=70) | junk,
        "speed": st.floats(allow_nan=True, allow_infinity=True) | junk,
        "t_ms": st.integers(min_value=-5, max_value=10**12) | junk,
        "lap": st.integers(min_value=-1, max_value=10**6) | junk,
        "extra": junk,
    },
)


@fuzz(BYTES_EXAMPLES)
@given(st.binary(max_size=300))
@example(b'{"cmd":"pause","x":' + b"[" * 5000)
@example(b'{"cmd":"pa\xffse"}')
@example(b'{"cmd":"seek","t_ms":1,"lap":1}')
@example(b'{"cmd":"seek"}')
def test_any_bytes_are_a_command_or_a_command_error(payload: bytes) -> None:
    try:
        command = decode_command(payload)
    except CommandError as exc:
        assert str(exc)
        return
    assert isinstance(command, Pause | Resume | SetSpeed | Seek)


@fuzz(SHAPED_EXAMPLES)
@given(shaped)
def test_command_shaped_json_is_a_command_or_a_command_error(obj: dict[str, Any]) -> None:
    payload = json.dumps(obj).encode()
    try:
        command = decode_command(payload)
    except CommandError:
        return
    # What is accepted is within the documented bounds.
    if isinstance(command, SetSpeed) and command.speed is not None:
        assert 0.1 <= command.speed <= 1000
    if isinstance(command, Seek):
        assert (command.t_ms is None) != (command.lap is None)
    assert decode_command(msgspec.json.encode(command)) == command


def _view(feed: Feed) -> tuple[Any, ...]:
    status = feed.status(NOW + 10)
    return (status.state, status.speed, status.t_ms, status.last_seq, feed.cursor, feed.seq)


@fuzz(FEED_EXAMPLES)
@given(
    st.booleans(),
    st.one_of(st.binary(max_size=200), shaped.map(lambda o: json.dumps(o).encode())),
)
def test_a_refused_command_leaves_the_replay_as_it_was(paused: bool, payload: bytes) -> None:
    feed = Feed.create("fuzz-control", tiny_race("fuzz-control"), now=NOW, speed=10, paused=paused)
    feed.start(NOW)
    feed.take(NOW + 5, 50)
    before = _view(feed)
    reply, events = feed.handle(payload, NOW + 5)
    assert reply.cmd
    if not reply.ok:
        assert reply.error, "a refusal names its reason"
        assert events == []
        assert _view(feed) == before
        assert feed.rejected == 1
    else:
        assert isinstance(decode_command(payload), Command)
