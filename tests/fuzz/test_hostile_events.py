"""Hostile and broken input on the events topic: counted, logged, dead-lettered, harmless.

The projector runs as a real process. A race is folded to a known board; then
every kind of bad message is published on the events topics: invalid JSON,
wrong types, unknown kinds, huge and deeply nested payloads, invalid UTF-8,
seqs from the past and the far future, events of unknown races and cars,
batches that mix races. Each must be counted, logged as one line naming the
reason, and published on a dead-letter topic (a routine redelivered seq is a
duplicate instead, counted but not dead-lettered); the projector must keep
running and its standings must be exactly those of the good events alone.
The gateway, likewise, shrugs off garbage on the standings topics.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from broker.bus import Bus, connect
from broker.mosquitto import Mosquitto, free_port
from chequered.contract import board, topics
from chequered.contract import events as ev
from consumers.projector import intake
from consumers.standings.fold import MAX_SEQ_JUMP, Standings, snapshot
from tests.conftest import requires_mosquitto
from tests.support.feed import tiny_race
from tests.support.gateway import running_gateway
from tests.support.procs import Service, parse_metrics, scrape, wait_subscribed
from tests.support.standings import Ticker
from tests.support.wait import until
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto]

RACE = "hostile-race"
WAIT_S = 30.0
LOG_LINE_MAX = 4096
"""No log line may carry a hostile payload whole: the longest line allowed."""


def _lap(at: int, **overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "kind": "lap",
        "race": RACE,
        "seq": at,
        "t_ms": 400_000,
        "wall": 1_700_000_000.0,
        "car": "1",
        "lap": 6,
        "lap_ms": 60_000,
        "sectors_ms": [20_000, 20_000, 20_000],
        "position": 1,
        "driver": "D1",
    }
    body.update(overrides)
    return json.dumps(body).encode()


def hostile(next_seq: int) -> list[tuple[str, str, bytes, str]]:
    """(what, race segment of the topic, payload, words the reason must contain)."""
    huge = b'{"kind":"flag","race":"%s","seq":%d,"t_ms":1,"flag":"green","pad":"%s"}' % (
        RACE.encode(),
        next_seq,
        b"x" * (intake.MAX_PAYLOAD_BYTES + 1),
    )
    foreign = ev.encode(
        ev.Batch(
            race=RACE,
            events=[
                ev.Flag(race=RACE, seq=next_seq, t_ms=1, flag="fcy"),
                ev.Flag(race="another-race", seq=next_seq + 1, t_ms=1, flag="red"),
            ],
        )
    )
    return [
        ("not JSON", RACE, b"lap 6 for car 1, trust me", "invalid payload"),
        ("empty", RACE, b"", "invalid payload"),
        ("JSON, not an event", RACE, b"[1, 2, 3]", "invalid payload"),
        ("unknown kind", RACE, _lap(next_seq, kind="teleport"), "invalid payload"),
        ("no kind", RACE, b'{"race": "%s", "seq": %d}' % (RACE.encode(), next_seq), "invalid"),
        ("seq as a string", RACE, _lap(next_seq, seq=str(next_seq)), "invalid payload"),
        ("negative lap time", RACE, _lap(next_seq, lap_ms=-5), "invalid payload"),
        ("car number with a slash", RACE, _lap(next_seq, car="1/2"), "invalid payload"),
        ("invalid UTF-8", RACE, _lap(next_seq).replace(b'"lap"', b'"l\xffp"', 1), "invalid"),
        ("deeply nested", RACE, b'{"kind":"lap","x":' + b"[" * 50_000, "invalid payload"),
        ("huge", RACE, huge, "bytes is more than"),
        ("far-future seq", RACE, _lap(next_seq + MAX_SEQ_JUMP + 1), "ahead of"),
        ("beyond 48 hours", RACE, _lap(next_seq, t_ms=49 * 3600 * 1000), "beyond"),
        ("impossibly fast lap", RACE, _lap(next_seq, lap=500, t_ms=60_000), "faster than"),
        ("unknown car", RACE, _lap(next_seq, car="999"), "not entered"),
        ("another race on this topic", RACE, _lap(next_seq, race="another-race"), "race"),
        ("batch mixing races", RACE, foreign, "race"),
        ("unknown race", "ghost-race", _lap(1, race="ghost-race"), "unknown"),
    ]


def applied(port: int) -> float:
    return parse_metrics(scrape(port))["chequered_projector_applied_total"]


async def _dead_letters(bus: Bus, got: list[tuple[str, bytes]]) -> None:
    async for message in bus.messages():
        if topics.leaf_of(message.topic) == topics.DEAD_LETTER:
            got.append((message.topic, message.payload))


async def test_hostile_events_are_dead_lettered_and_change_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    good = tiny_race(RACE, cars=3, laps=5)
    good = [e for e in good if not isinstance(e, ev.SessionClosed)]  # the race goes on
    next_seq = good[-1].seq + 1
    port = free_port()
    projector = Service(
        "projector",
        ["project", "--broker", mosquitto.url, "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--client-id", "hostile-projector", "--metrics-port", str(port)],
        tmp_path,
    )  # fmt: skip
    cases = hostile(next_seq)
    letters: list[tuple[str, bytes]] = []
    try:
        projector.start()
        wait_subscribed(port, WAIT_S)
        async with connect(mosquitto.url) as watcher, connect(mosquitto.url) as pub:
            await watcher.subscribe(topics.all_races(topics.DEAD_LETTER))
            reader = asyncio.create_task(_dead_letters(watcher, letters))

            events_topic = topics.topic(RACE, topics.EVENTS)
            for event in good:
                await pub.publish(events_topic, ev.encode(msgspec.structs.replace(event, wall=1.0)))
            await until(lambda: applied(port) == len(good), WAIT_S, "the good events")
            before = parse_metrics(scrape(port))

            for _what, segment, payload, _reason in cases:
                await pub.publish(topics.topic(segment, topics.EVENTS), payload)
            # A redelivery that differs from the original: a duplicate, never applied.
            forged_again = msgspec.structs.replace(good[-1], t_ms=good[-1].t_ms + 1, wall=1.0)
            await pub.publish(events_topic, ev.encode(forged_again))
            await until(lambda: len(letters) >= len(cases), WAIT_S, "a dead letter per case")
            # The race goes on: the next good event, with the seq no bad one could take.
            final = ev.Flag(race=RACE, seq=next_seq, t_ms=good[-1].t_ms + 1, wall=1.0, flag="fcy")
            await pub.publish(events_topic, ev.encode(final))
            await until(
                lambda: (
                    parse_metrics(scrape(port))["chequered_projector_applied_total"]
                    == len(good) + 1
                ),
                WAIT_S,
                "the next good event",
            )
            after = parse_metrics(scrape(port))
            reader.cancel()
            # The retained snapshot, read afresh.
            async with connect(mosquitto.url) as fresh:
                await fresh.subscribe(topics.topic(RACE, topics.STANDINGS))
                async with asyncio.timeout(WAIT_S):
                    async for message in fresh.messages():
                        retained = board.decode_snapshot(message.payload)
                        if retained.seq == next_seq:
                            break
        assert projector.alive, "the projector died of bad input"
        assert projector.stop() == 0
    finally:
        if projector.alive:
            projector.kill()

    # Exactly the standings of the good events.
    reference = Standings()
    for event in [*good, final]:
        reference.step(msgspec.structs.replace(event, wall=1.0))
    assert retained == snapshot(reference.races[RACE])
    assert retained.session.gaps == 0
    # Counted: every case a dead letter, the forged redelivery a duplicate.
    assert after["chequered_projector_dead_letters_total"] - before[
        "chequered_projector_dead_letters_total"] == len(cases)  # fmt: skip
    assert after["chequered_projector_duplicates_total"] - before[
        "chequered_projector_duplicates_total"] == 1  # fmt: skip
    assert after["chequered_projector_gaps_total"] == 0
    # Dead-lettered: on the race's topic (unknown races share one), each naming its reason.
    assert len(letters) == len(cases)
    for (what, segment, payload, reason), (topic, body) in zip(cases, letters, strict=True):
        expected = segment if segment == RACE else intake.UNKNOWN_RACE
        assert topic == topics.topic(expected, topics.DEAD_LETTER), what
        letter = msgspec.json.decode(body)
        assert reason in letter["reason"], (what, letter["reason"])
        assert len(body) <= 2 * intake.DEAD_LETTER_EXCERPT_BYTES + 1024, what
        if len(payload) > intake.DEAD_LETTER_EXCERPT_BYTES:
            assert letter.get("truncated") is True, what
    # Logged: one JSON line per dead letter, with the reason, and nothing huge.
    lines = projector.log_text().splitlines()
    assert all(len(line) <= LOG_LINE_MAX for line in lines)
    logged = [e for e in projector.log_events() if e.get("event") == "dead_letter"]
    assert len(logged) == len(cases)
    for (what, _segment, _payload, reason), entry in zip(cases, logged, strict=True):
        assert entry["level"] == "warning" and reason in entry["reason"], what
    assert not projector.tracebacks()


async def test_the_gateway_ignores_garbage_standings(mosquitto: Mosquitto) -> None:
    """Bad payloads on the standings topics are counted; clients keep their unbroken chain."""
    race = "hostile-standings"
    ticker = Ticker(race)
    async with connect(mosquitto.url) as pub, running_gateway(mosquitto.url) as (gw, port):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race at the gateway")
        client = Watcher(f"ws://127.0.0.1:{port}/ws", race)
        async with watching(client):
            async with asyncio.timeout(WAIT_S):
                await client.wait_connects(1)
            garbage = [
                b"not json",
                b"{}",
                b'{"type": "delta", "race": "%s", "seq": "x"}' % race.encode(),
                b"[" * 50_000,
                b'{"type":"snapshot","race":"someone-else","seq":1,"session":{},"cars":[]}',
            ]
            for payload in garbage:
                await pub.publish(topics.topic(race, topics.STANDINGS_DELTA), payload)
                await ticker.publish_step(pub)
            for payload in garbage[:3]:
                await pub.publish(topics.topic(race, topics.STATUS), payload)
                await ticker.publish_step(pub)
            async with asyncio.timeout(WAIT_S):
                await client.wait_seq(ticker.seq)
        assert gw.metrics.bad_payloads.value >= len(garbage) + 2
        assert client.gaps == 0 and client.snapshots == 1
        assert client.view is not None and client.view.cars == ticker.snapshot().cars
