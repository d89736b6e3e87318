"""Malformed and hostile commands on the control topic change nothing in a running replay.

The producer runs as a real process (``chequered replay --paused``). Every
bad command gets a reply on the status topic that refuses it and names the
fault; the status (state, speed, race time, last seq) stays as it was, no
event goes out, each refusal is logged in one line, and a flood of commands
leaves the producer serving. A good command afterwards still works.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.bus import connect
from broker.mosquitto import Mosquitto
from chequered.contract import control, topics
from simulator.live.outbox import ProducerSettings
from tests.conftest import requires_mosquitto
from tests.support.observe import Observer, observing
from tests.support.procs import Service
from tests.support.wait import until

pytestmark = [requires_mosquitto, pytest.mark.slow]

RACE = "imsa-2021-lime-rock-race"
WAIT_S = 30.0
FLOOD = 300
LIMITS = ProducerSettings()

BAD: list[tuple[bytes, str]] = [
    (b"pause now please", "bad command"),
    (b"", ""),  # an empty payload clears a retained command: ignored, no reply
    (b'{"cmd": "stop", "id": "b1"}', "bad command"),
    (b'{"cmd": "speed", "speed": 0, "id": "b2"}', ">= 0.1"),
    (b'{"cmd": "speed", "speed": 1e9, "id": "b3"}', "<= 1000"),
    (b'{"cmd": "speed", "speed": "fast", "id": "b4"}', "Expected `float | null`"),
    (b'{"cmd": "speed", "id": "b5"}', "missing required field `speed`"),
    (b'{"cmd": "seek", "id": "b6"}', "exactly one of"),
    (b'{"cmd": "seek", "t_ms": 1, "lap": 2, "id": "b7"}', "exactly one of"),
    (b'{"cmd": "seek", "lap": 0, "id": "b8"}', ">= 1"),
    (b'{"cmd": "seek", "lap": 100000, "id": "b9"}', "lap"),
    (b'{"cmd": "seek", "t_ms": -1, "id": "b10"}', ">= 0"),
    (b'{"cmd": "pause", "id": "b11", "sudo": true}', "unknown field"),
    (b'{"cmd": "pause", "id": "' + b"i" * 65 + b'"}', "length"),
    (b'{"cmd": "pa\xffse", "id": "b13"}', "UTF-8"),
    (b'{"cmd": "pause", "id": "b14", "x": ' + b"[" * 3000 + b"}", "bad command"),
    (b'{"cmd": "pause", "id": "b15", "pad": "' + b"x" * 5000 + b'"}', "exceeds"),
]


async def test_bad_commands_change_nothing(mosquitto: Mosquitto, tmp_path: Path) -> None:
    producer = Service(
        "producer",
        ["replay", RACE, "--broker", mosquitto.url, "--paused", "--speed", "10"],
        tmp_path,
    )
    witness = Observer(mosquitto.url, "imsa-2021-lime-rock-race")
    control_topic = topics.topic(witness.race, topics.CONTROL)
    try:
        async with observing(witness), connect(mosquitto.url) as ctl:
            await until(lambda: witness.connects, 10, "the witness subscribed")
            producer.start()
            await until(
                lambda: witness.status is not None and witness.status.state == "paused",
                WAIT_S,
                "the paused replay",
            )

            def replies() -> list[control.Reply]:
                return [s.reply for s in witness.statuses if s.reply is not None]

            # A harmless command first: its answer is the baseline (the replay settled).
            await ctl.publish(control_topic, b'{"cmd": "pause", "id": "baseline"}')
            await until(lambda: any(r.id == "baseline" for r in replies()), WAIT_S, "baseline")
            before = next(s for s in witness.statuses if s.reply and s.reply.id == "baseline")
            assert before.reply is not None and before.reply.ok
            events_before = len(witness.events)
            assert witness.last_event_seq == before.last_seq
            base = len(replies())

            expected = [(p, words) for p, words in BAD if p]
            for payload, words in BAD:
                # One at a time: commands handled in one turn share one status message,
                # so only a reply awaited before the next command is sure to be its own.
                seen = len(replies())
                await ctl.publish(control_topic, payload)
                if not payload:
                    continue  # an empty payload clears a retained message: no command
                await until(lambda seen=seen: len(replies()) > seen, WAIT_S, "its reply")
                reply = replies()[-1]
                assert not reply.ok, payload
                assert reply.error and words in reply.error, (payload[:60], reply.error)
            assert len(replies()) == base + len(expected)

            # A flood: each command is answered or refused; the producer keeps serving.
            flood = [
                json.dumps({"cmd": "speed", "speed": 2000, "id": f"f{i}"}) for i in range(FLOOD)
            ]
            for payload in flood:
                await ctl.publish(control_topic, payload.encode())
            # Status is a latest-value topic: under a flood, replies may be superseded
            # by later ones, but the count of refusals covers every command.
            await until(
                lambda: (
                    witness.status is not None and witness.status.rejected == len(expected) + FLOOD
                ),
                WAIT_S,
                "the flood answered",
            )
            assert producer.alive

            # Nothing moved.
            after = [s for s in witness.statuses if s.reply is not None][-1]
            assert (after.state, after.speed, after.t_ms, after.last_seq) == (
                before.state,
                before.speed,
                before.t_ms,
                before.last_seq,
            )
            assert len(witness.events) == events_before
            assert after.rejected == len(expected) + FLOOD

            # And a good command still works.
            await ctl.publish(control_topic, b'{"cmd": "resume", "id": "go"}')
            await until(
                lambda: witness.status is not None and witness.status.state == "running",
                WAIT_S,
                "the replay resumed",
            )
            await until(lambda: len(witness.events) > events_before, WAIT_S, "events again")
        assert producer.stop() is not None
    finally:
        if producer.alive:
            producer.kill()
    refusals = [e for e in producer.log_events() if e.get("event") == "producer.command_rejected"]
    assert len(refusals) == len(expected) + FLOOD
    assert all(e.get("error") and e.get("level") == "warning" for e in refusals)
    assert all(len(line) < 4096 for line in producer.log_text().splitlines())
    assert not producer.tracebacks()
    assert LIMITS.max_command_bytes < 5000 < 2 * LIMITS.max_command_bytes
