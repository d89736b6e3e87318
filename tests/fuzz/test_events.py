"""Property-based fuzzing of the wire decoder: any bytes give a Message or a PayloadError.

The events topic is open to anything a broker lets through, so the decoder
is the projector's first line of defence: it must never raise anything but
``PayloadError``, and whatever it accepts must survive an encode round trip.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chequered.contract import events
from chequered.contract.events import EVENT_TYPES, Batch, PayloadError, decode, encode

pytestmark = pytest.mark.slow

# Examples per property; the fuzz files together run well over 10,000 cases.
BYTES_EXAMPLES = 4000
JSON_EXAMPLES = 800
SHAPED_EXAMPLES = 2000
MUTATION_EXAMPLES = 3000


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


KINDS = [
    "session_open",
    "flag",
    "sector",
    "lap",
    "pit_in",
    "pit_out",
    "retire",
    "finish",
    "session_close",
    "clock",
    "reset",
    "batch",
]


def _accepts(payload: bytes) -> None:
    """The property: a valid Message that round-trips, or PayloadError; nothing else."""
    try:
        message = decode(payload)
    except PayloadError as exc:
        assert str(exc), "a PayloadError must say what is wrong"
        return
    assert isinstance(message, (*EVENT_TYPES, Batch))
    assert decode(encode(message)) == message
    for event in events.unbatch(message):
        assert event.seq >= 1
        assert event.t_ms >= 0


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=10,
)

# Values that sit near the boundaries the contract validates.
edgy = st.sampled_from(
    [0, -1, 2**63, -(2**63) - 1, 2**64, 1e308, -0.0, "", "07", "A-b", "a" * 65, "r/1", "123456789"]
) | st.lists(json_scalars, max_size=2)


# The fields each kind needs, with a generator of valid values for each.
_int = st.integers(min_value=0, max_value=10**7)
_valid_fields: dict[str, st.SearchStrategy[Any]] = {
    "race": st.sampled_from(["r", "alms-2013", "x_1"]),
    "seq": st.integers(min_value=1, max_value=10**6),
    "t_ms": _int,
    "car": st.sampled_from(["1", "06", "99", "4A"]),
    "lap": st.integers(min_value=1, max_value=400),
    "lap_ms": st.none() | _int,
    "sectors_ms": st.lists(st.none() | _int, max_size=3),
    "sector": st.integers(min_value=1, max_value=3),
    "sector_ms": st.none() | _int,
    "position": st.integers(min_value=1, max_value=40),
    "driver": st.sampled_from(["A. Driver", ""]),
    "flag": st.sampled_from(["green", "fcy", "red", "chequered"]),
    "pit_ms": _int,
    "action": st.sampled_from(["start", "pause", "resume", "speed", "seek"]),
    "speed": st.none() | st.floats(min_value=0.1, max_value=1000),
    "target_ms": _int,
    "classes": st.lists(st.sampled_from(["P1", "GT"]), max_size=2),
    "grid": st.lists(st.sampled_from(["1", "06"]), max_size=2),
    "entries": st.lists(
        st.fixed_dictionaries(
            {"number": st.sampled_from(["1", "06"]), "cls": st.just("GT"), "team": st.just("T")},
            optional={"drivers": st.just(["A"])},
        ),
        max_size=2,
    ),
    "session": st.fixed_dictionaries(
        {
            "name": st.just("Race"),
            "series": st.just("ALMS"),
            "season": st.just(2013),
            "kind": st.sampled_from(["race", "qualifying", "practice"]),
            "circuit": st.just("Laguna Seca"),
            "lap_km": st.just(3.6),
            "lines": st.integers(min_value=0, max_value=17),
        }
    ),
    "classification": st.lists(
        st.fixed_dictionaries(
            {
                "position": st.integers(min_value=0, max_value=3),
                "car": st.sampled_from(["1", "06"]),
                "cls": st.just("GT"),
                "class_position": st.integers(min_value=1, max_value=3),
                "laps": st.integers(min_value=-1, max_value=3),
                "status": st.sampled_from(["classified", "retired", "gone"]),
            }
        ),
        max_size=2,
    ),
}
_common = ["race", "seq", "t_ms"]
_kind_fields: dict[str, list[str]] = {
    "session_open": [*_common, "session", "classes", "entries", "grid"],
    "flag": [*_common, "flag"],
    "sector": [*_common, "car", "lap", "sector", "sector_ms", "position"],
    "lap": [*_common, "car", "lap", "lap_ms", "sectors_ms", "position", "driver"],
    "pit_in": [*_common, "car", "lap"],
    "pit_out": [*_common, "car", "lap", "pit_ms", "driver"],
    "retire": [*_common, "car", "lap"],
    "finish": [*_common, "car", "lap"],
    "session_close": [*_common, "classification"],
    "clock": [*_common, "action", "speed"],
    "reset": [*_common, "target_ms"],
}


@st.composite
def shaped_event(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    """An event of a known kind (sometimes unknown), each field valid or, now and then, junk.

    Mostly valid values, so that the decoder's validation of each field and the
    encode round trip of accepted events are both exercised.
    """
    kind = draw(st.sampled_from([*_kind_fields, "batch", "lap ", "LAP", ""]))
    if kind == "batch" and depth == 0:
        obj: dict[str, Any] = {"kind": kind, "race": draw(_valid_fields["race"])}
        obj["events"] = draw(st.lists(shaped_event(depth=1), max_size=3))
        return obj
    obj = {"kind": kind}
    for name in _kind_fields.get(kind, _common):
        fate = draw(st.integers(min_value=0, max_value=19))
        if fate == 0:
            continue  # a missing field
        obj[name] = draw(edgy) if fate == 1 else draw(_valid_fields[name])
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        obj[draw(st.sampled_from(["x", "kind2", "car", "wall"]))] = draw(edgy)
    return obj


def _valid_lap(seq: int) -> dict[str, Any]:
    return {
        "kind": "lap",
        "race": "alms-2013",
        "seq": seq,
        "t_ms": 91_000 * seq,
        "car": "06",
        "lap": seq,
        "lap_ms": 91_000,
        "sectors_ms": [30_000, 31_000, 30_000],
        "position": 1,
        "driver": "Klaus Graf",
    }


VALID_PAYLOADS = [
    json.dumps(_valid_lap(3)).encode(),
    json.dumps(
        {"kind": "batch", "race": "alms-2013", "events": [_valid_lap(1), _valid_lap(2)]}
    ).encode(),
    json.dumps(
        {"kind": "clock", "race": "r", "seq": 9, "t_ms": 0, "action": "speed", "speed": 60.0}
    ).encode(),
    json.dumps({"kind": "reset", "race": "r", "seq": 10, "t_ms": 5, "target_ms": 0}).encode(),
]


@fuzz(BYTES_EXAMPLES)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff\xfe")
@example(b"null")
@example(b"[" * 100_000)
@example(b'{"kind":"lap","x":' + b"[" * 5_000)
@example(b'{"kind":"batch","race":"a","events":[' + b'{"kind":"batch",' * 2_000)
@example(b'{"kind":"session_open","race":"a","entries":[{"team":' + b'{"a":' * 5_000)
@example(b'{"kind":"lap","seq":1e999999}')
@example(b'{"kind":"lap","seq":' + b"9" * 10_000 + b"}")
def test_any_bytes_decode_to_a_message_or_a_payload_error(payload: bytes) -> None:
    _accepts(payload)


@fuzz(JSON_EXAMPLES)
@given(json_values)
def test_any_json_value_decodes_to_a_message_or_a_payload_error(value: Any) -> None:
    _accepts(json.dumps(value).encode())


@fuzz(SHAPED_EXAMPLES)
@given(shaped_event())
def test_event_shaped_json_decodes_to_a_message_or_a_payload_error(obj: dict[str, Any]) -> None:
    _accepts(json.dumps(obj).encode())


@fuzz(MUTATION_EXAMPLES)
@given(
    st.sampled_from(VALID_PAYLOADS),
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=10_000), st.binary(min_size=0, max_size=4)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)
def test_mutated_valid_payloads_decode_to_a_message_or_a_payload_error(
    payload: bytes, edits: list[tuple[int, bytes]], truncate: bool
) -> None:
    data = bytearray(payload)
    for offset, chunk in edits:
        at = offset % (len(data) + 1)
        # Alternate between overwriting and inserting, so both kinds of damage occur.
        if offset % 2:
            data[at : at + len(chunk)] = chunk
        else:
            data[at:at] = chunk
    if truncate:
        del data[len(data) // 2 :]
    _accepts(bytes(data))


def test_valid_payloads_decode() -> None:
    """The seeds of the mutation fuzzing are themselves valid (or the fuzzing proves little)."""
    for payload in VALID_PAYLOADS:
        assert events.unbatch(decode(payload))


def test_deep_nesting_is_a_payload_error_not_a_crash() -> None:
    """An attacker's deeply nested value in an ignored field must not escape as RecursionError."""
    for payload in (
        b'{"kind":"lap","x":' + b"[" * 50_000,
        b'{"kind":"flag","race":"r","seq":1,"t_ms":0,"flag":"green","x":'
        + b"[" * 20_000
        + b"]" * 20_000
        + b"}",
    ):
        try:
            decode(payload)
        except PayloadError:
            continue
        raise AssertionError("deeply nested payload was accepted")


def test_shaped_events_are_mostly_accepted() -> None:
    """The shaped strategy reaches the decoder's happy path (round trips), not just its errors."""
    accepted = 0

    @fuzz(300)
    @given(shaped_event())
    def count(obj: dict[str, Any]) -> None:
        nonlocal accepted
        try:
            decode(json.dumps(obj).encode())
        except PayloadError:
            return
        accepted += 1

    count()
    assert accepted >= 30
