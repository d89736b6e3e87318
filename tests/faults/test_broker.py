"""Mosquitto stopped and restarted five times mid-race: the feed ends exact all the same.

Producer, projector and gateway run as real processes against a Mosquitto
with persistence on. At moments drawn by a seeded RNG over the events seen on
the wire, the broker is stopped and started again on the same port. The
producer must resend what the broker had not acknowledged, the projector and
the gateway must reconnect (with backoff and jitter) and resume their
persistent and retained state, and websocket clients must end on the board
the projector ends on, which must equal one uninterrupted fold of the events.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from broker.mosquitto import Mosquitto, free_port
from chequered.cli.live import load_timeline
from tests.conftest import requires_mosquitto
from tests.support.observe import Observer, observing
from tests.support.official import check_final_board
from tests.support.procs import Service, parse_metrics, scrape, wait_subscribed
from tests.support.wait import until
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto, pytest.mark.slow]

RACE = "alms-2013-monterey-race"
SPEED = "1000"
RESTARTS = 5
SEED = 20130831
WAIT_S = 120.0
"""Longest wait for one restart moment or the final standings (a loaded CI machine)."""


async def test_broker_restarted_five_times_mid_race(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    race, timeline = load_timeline(RACE, seed=1)
    broker = Mosquitto(workdir=tmp_path / "mosquitto", persistence=True).start()
    metrics_port, gateway_port = free_port(), free_port()
    logs = tmp_path / "logs"
    projector = Service(
        "projector",
        ["project", "--broker", broker.url, "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--client-id", "fault-broker-projector", "--metrics-port", str(metrics_port)],
        logs,
    )  # fmt: skip
    gateway = Service(
        "gateway", ["serve", "--broker", broker.url, "--port", str(gateway_port)], logs
    )
    producer = Service(
        "producer",
        ["replay", RACE, "--broker", broker.url, "--speed", SPEED, "--exit-at-end"],
        logs,
    )
    # Restart moments: counts of events on the wire, drawn once, spread over the race.
    moments = sorted(rng.sample(range(200, len(timeline) - 200), RESTARTS))
    witness = Observer(broker.url, race)
    browsers = [
        Watcher(f"ws://127.0.0.1:{gateway_port}/ws", race, seed=i, cls=cls)
        for i, cls in enumerate([None, None, "GT"])
    ]
    services = (projector, gateway, producer)
    try:
        async with observing(witness), watching(*browsers):
            await until(lambda: witness.connects, 10, "the witness subscribed")
            projector.start()
            gateway.start()
            wait_subscribed(metrics_port, WAIT_S)
            producer.start()
            for i, seq in enumerate(moments, start=1):
                await until(lambda seq=seq: witness.last_event_seq >= seq, WAIT_S, f"event {seq}")
                for service in services:
                    assert service.alive or service is producer, service.log_text()[-3000:]
                broker.stop()
                broker.start()
                # Every client noticed: the witness is back before the next moment.
                await until(lambda i=i: witness.connects > i, WAIT_S, f"reconnect {i}")

            def finished() -> bool:
                done = [s for s in witness.statuses if s.state == "finished"]
                return bool(done) and witness.standings_seq >= max(s.last_seq or 0 for s in done)

            await until(finished, WAIT_S, "the race finished and folded to its last seq")
            final_seq = max(s.last_seq or 0 for s in witness.statuses if s.state == "finished")
            await until(
                lambda: witness.retained is not None and witness.retained.seq == final_seq,
                WAIT_S,
                "the retained snapshot of the last seq",
            )
            for browser in browsers:
                await until(
                    lambda b=browser: b.seq == final_seq, WAIT_S, "every browser at the end"
                )
            metrics = parse_metrics(scrape(metrics_port))
            assert producer.stop() is not None
            assert projector.stop() == 0
            assert gateway.stop() == 0
    finally:
        for service in services:
            if service.alive:
                service.kill()
        broker.stop()

    final = check_final_board(witness, browsers, RACE)
    assert witness.dead_letters == []
    assert witness.view == final
    # Browsers: each reconnected by itself.
    assert all(browser.connects >= 1 for browser in browsers)
    # Each service came back by itself, and said so.
    assert metrics["chequered_projector_reconnects_total"] >= RESTARTS
    assert metrics["chequered_projector_gaps_total"] == 0
    # One projector process all along: each event applied exactly once, redeliveries dropped.
    assert metrics["chequered_projector_applied_total"] == final_seq
    assert metrics["chequered_projector_events_in_total"] == (
        final_seq + metrics["chequered_projector_duplicates_total"]
    )
    producer_log = producer.log_events()
    assert sum(1 for e in producer_log if e.get("event") == "producer.disconnected") >= RESTARTS
    for service in services:
        assert not service.tracebacks(), service.name
