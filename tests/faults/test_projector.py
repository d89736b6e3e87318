"""The projector killed with SIGKILL twenty times during a fast replay loses nothing.

The producer and the projector run as real processes (``chequered replay``,
``chequered project``) against a private Mosquitto. A witness on the broker
records every event on the wire. The projector is killed at moments drawn by a
seeded RNG over the seqs it has published, and restarted each time with the
same client id and checkpoint folder. At the end its retained standings must
equal one uninterrupted fold of the same events and the official
classification; no seq may be missing, no dead letter published, and a reader
following its deltas must end on the same board.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from broker.mosquitto import Mosquitto, free_port
from chequered.cli.live import load_timeline
from consumers.projector import checkpoints
from tests.conftest import requires_mosquitto
from tests.support.observe import Observer, observing
from tests.support.official import check_against_classification
from tests.support.procs import Service, parse_metrics, scrape, wait_subscribed
from tests.support.wait import until

pytestmark = [requires_mosquitto, pytest.mark.slow]

RACE = "alms-2013-monterey-race"
SPEED = "1000"
"""Race seconds per wall second: the 4-hour race in about 15 s."""
KILLS = 20
SEED = 20130511
CATCH_UP_S = 120.0
"""Longest wait for one kill moment or for the final standings (a loaded CI machine)."""
CLIENT_ID = "fault-projector"


async def test_projector_killed_twenty_times_ends_exact(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    race, timeline = load_timeline(RACE, seed=1)
    broker = Mosquitto(workdir=tmp_path / "mosquitto", persistence=True).start()
    metrics_port = free_port()
    ckpt = tmp_path / "checkpoints"
    projector = Service(
        "projector",
        ["project", "--broker", broker.url, "--checkpoint-dir", str(ckpt),
         "--client-id", CLIENT_ID, "--metrics-port", str(metrics_port)],
        tmp_path / "logs",
    )  # fmt: skip
    producer = Service(
        "producer",
        ["replay", RACE, "--broker", broker.url, "--speed", SPEED, "--exit-at-end"],
        tmp_path / "logs",
    )
    # Kill moments: seqs the published standings must have reached, drawn once.
    moments = sorted(rng.sample(range(1, len(timeline)), KILLS))
    witness = Observer(broker.url, race)
    try:
        async with observing(witness):
            await until(lambda: witness.connects, 10, "the witness subscribed")
            projector.start()
            wait_subscribed(metrics_port, CATCH_UP_S)
            producer.start()
            for i, seq in enumerate(moments, start=1):
                await until(
                    lambda seq=seq: witness.standings_seq >= seq or not projector.alive,
                    CATCH_UP_S,
                    f"standings at seq {seq} (kill {i})",
                )
                assert projector.alive, projector.log_text()[-3000:]
                projector.kill()
                projector.start()

            def finished() -> bool:
                status = witness.status
                return any(s.state == "finished" for s in witness.statuses) and (
                    status is not None and witness.standings_seq >= (status.last_seq or 0)
                )

            await until(finished, CATCH_UP_S, "the race finished and folded to its last seq")
            final_seq = max(s.last_seq or 0 for s in witness.statuses if s.state == "finished")
            await until(
                lambda: witness.retained is not None and witness.retained.seq == final_seq,
                CATCH_UP_S,
                "the retained snapshot of the last seq",
            )
            metrics = parse_metrics(scrape(metrics_port))
            assert projector.stop() == 0
            assert producer.stop() is not None
    finally:
        for service in (projector, producer):
            if service.alive:
                service.kill()
        broker.stop()

    assert projector.kills == KILLS
    # The witness saw the whole stream: every seq from 1, each once in the reference.
    assert witness.missing_seqs() == []
    assert witness.last_event_seq == final_seq
    reference = witness.reference()
    final = witness.retained
    assert final is not None
    # The retained standings are exactly those of one uninterrupted fold.
    assert final == reference
    assert final.session.finished and final.session.gaps == 0
    check_against_classification(final, RACE)
    # Nothing was rejected or found missing along the way.
    assert witness.dead_letters == []
    # A reader that followed snapshots and deltas holds the same board; each restart
    # may cost it at most one wait for a snapshot.
    assert witness.view == final
    assert witness.chain_breaks <= KILLS
    # The checkpoint on disk is at the last seq too.
    assert checkpoints.load(checkpoints.path_for(ckpt, race)).seq == final_seq
    # Restarts resumed from checkpoints, and the last run saw no gap.
    logs = projector.log_events()
    assert sum(1 for e in logs if e.get("event") == "checkpoint_loaded") >= KILLS // 2
    assert not projector.tracebacks()
    assert metrics["chequered_projector_gaps_total"] == 0
    assert metrics["chequered_projector_dead_letters_total"] == 0
