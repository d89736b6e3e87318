"""The wire contract: generated schemas are current and describe what is really sent; topics."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from msgspec.structs import replace

from chequered.contract import control, schemas, topics
from chequered.contract import events as ev
from simulator.live.feed import Feed
from simulator.live.outbox import batch_payload
from tests.support.feed import tiny_race

T0 = 1_700_000_000.0


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((schemas.SCHEMA_DIR / name).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schemas_match_the_types() -> None:
    assert schemas.stale() == [], "run: python -m chequered.contract.schemas"


def test_a_stale_schema_is_noticed(tmp_path: Any) -> None:
    schemas.write(tmp_path)
    assert schemas.stale(tmp_path) == []
    path = tmp_path / "status.schema.json"
    path.write_text(path.read_text().replace('"running"', '"sprinting"'))
    assert schemas.stale(tmp_path) == ["status.schema.json"]
    assert schemas.main(["--bogus"]) == 2


def produced_stream() -> list[ev.Event]:
    """Every kind of event as the producer stamps it, a reset and seek included."""
    feed = Feed.create("contract", tiny_race("contract"), now=T0, speed=10)
    stream = feed.start(T0) + feed.take(T0 + 20, 10_000)
    for payload in (b'{"cmd":"pause"}', b'{"cmd":"seek","lap":2}', b'{"cmd":"speed","speed":null}'):
        stream += feed.handle(payload, T0 + 21)[1]
    stream += feed.handle(b'{"cmd":"resume"}', T0 + 22)[1] + feed.take(T0 + 22, 10_000)
    extra: list[ev.Event] = [
        ev.PitIn(race="contract", seq=1, t_ms=5, car="1", lap=1),
        ev.PitOut(race="contract", seq=1, t_ms=6, car="1", lap=1, pit_ms=60_000, driver="D1",
                  driver_change=True, stationary_ms=40_000),
        ev.Retire(race="contract", seq=1, t_ms=7, car="2", lap=3, reason="gearbox"),
        ev.RaceControl(race="contract", seq=1, t_ms=8, lap=3, category="retirement",
                       text="#2 retired: gearbox", cars=["2"], provenance="report"),
        ev.Provisional(race="contract", seq=1, t_ms=9, reason="post-race decisions awaited",
                       classification=[ev.ResultRow(position=1, car="1", cls="A",
                                                    class_position=1, laps=3,
                                                    status="classified")]),
        ev.Penalty(race="contract", seq=1, t_ms=10, car="1", penalty="time", penalty_ms=23_000,
                   position_before=1, position_after=2, text="#1 +23 s, post-race"),
    ]  # fmt: skip
    return stream + extra


def test_every_event_as_sent_is_valid_under_the_events_schema() -> None:
    check = validator("events.schema.json")
    stream = produced_stream()
    kinds = {e.__struct_config__.tag for e in stream}
    assert kinds == {cls.__struct_config__.tag for cls in ev.EVENT_TYPES}
    for event in stream:
        check.validate(json.loads(ev.encode(event)))
        assert ev.decode(ev.encode(event)) == event
    batch = batch_payload("contract", [ev.encode(e) for e in stream[:20]])
    check.validate(json.loads(batch))
    assert ev.unbatch(ev.decode(batch)) == stream[:20]


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "lap", "race": "r", "seq": 0, "t_ms": 1},
        {"kind": "flag", "race": "R!", "seq": 1, "t_ms": 1, "flag": "green"},
        {"kind": "flag", "race": "r", "seq": 1, "t_ms": 1, "flag": "blue"},
        {"kind": "batch", "race": "r", "events": []},
        {"kind": "teleport", "race": "r", "seq": 1, "t_ms": 1},
    ],
)
def test_what_the_decoder_refuses_the_schema_refuses_too(bad: dict[str, Any]) -> None:
    with pytest.raises(ev.PayloadError):
        ev.decode(json.dumps(bad).encode())
    assert not validator("events.schema.json").is_valid(bad)


def test_commands_and_statuses_are_valid_under_their_schemas() -> None:
    commands = validator("control.schema.json")
    for payload in (
        control.Pause(id="a"),
        control.Resume(),
        control.SetSpeed(speed=None),
        control.SetSpeed(speed=1000),
        control.Seek(lap=3),
        control.Seek(t_ms=0, id="z"),
    ):
        commands.validate(json.loads(control.encode(payload)))
    for bad in ({"cmd": "speed", "speed": 0}, {"cmd": "pause", "x": 1}, {"cmd": "warp"}):
        assert not commands.is_valid(bad)
        with pytest.raises(control.CommandError):
            control.decode_command(json.dumps(bad).encode())
    statuses = validator("status.schema.json")
    feed = Feed.create("contract", tiny_race("contract"), now=T0)
    reply, _ = feed.handle(b'{"cmd":"speed","speed":0,"id":"q"}', T0)
    for status in (feed.status(T0), feed.status(T0, reply), feed.offline_status(T0)):
        statuses.validate(json.loads(control.encode(status)))
        assert control.decode_status(control.encode(status)) == status


def test_adding_producer_fields_keeps_old_payloads_readable() -> None:
    """Fields added to the contract have defaults: a payload without them still decodes."""
    old_clock = b'{"kind":"clock","race":"r","seq":2,"t_ms":0,"action":"start","speed":1.0}'
    clock = ev.decode(old_clock)
    assert isinstance(clock, ev.Clock) and clock.target_ms is None and clock.wall == 0.0
    old_status = b'{"race":"r","state":"running","speed":2.0,"t_ms":5,"last_seq":9}'
    assert control.decode_status(old_status).rejected == 0


def test_topic_names_round_trip() -> None:
    leaves = [topics.META, topics.EVENTS, topics.STATUS, topics.CONTROL, topics.STANDINGS,
              topics.STANDINGS_DELTA, topics.DEAD_LETTER]  # fmt: skip
    for leaf in leaves:
        name = topics.topic("alms-2013-monterey-race", leaf)
        assert name.startswith(f"chequered/v{ev.CONTRACT_VERSION}/alms-2013-monterey-race/")
        assert topics.race_of(name) == "alms-2013-monterey-race"
        assert topics.leaf_of(name) == leaf
    assert topics.all_races(topics.EVENTS) == "chequered/v2/+/events"
    assert topics.race_of("other/v1/r/events") is None
    assert topics.leaf_of("chequered/v1/r/events") is None


def test_the_wall_field_is_the_only_difference_between_two_emissions() -> None:
    event = tiny_race("w")[3]
    first, again = replace(event, wall=T0), replace(event, wall=T0 + 1)
    assert ev.encode(first) != ev.encode(again)
    assert replace(ev.decode(ev.encode(first)), wall=0.0) == replace(again, wall=0.0)


def test_generated_schemas_do_not_depend_on_how_the_library_cleans_docstrings() -> None:
    # Two msgspec releases differ only in docstring indentation and in adding
    # "$schema": both must give the same committed file.
    indented = {
        "$schema": "http://example.invalid/other-dialect",
        "description": "First line.\n\n    Second paragraph,\n    indented.",
        "$defs": {"A": {"description": "One.\n\n    Two."}},
        "anyOf": [{"description": "  Three.\n      Four."}],
    }
    cleaned = {
        "description": "First line.\n\nSecond paragraph,\nindented.",
        "$defs": {"A": {"description": "One.\n\nTwo."}},
        "anyOf": [{"description": "Three.\nFour."}],
    }
    assert schemas.normalise(indented) == schemas.normalise(cleaned) == cleaned
