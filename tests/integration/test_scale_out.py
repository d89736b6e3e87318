"""Two projectors and two gateway workers end every race on its official classification.

``chequered project --processes 2`` (each projector owns a stable-hash partition
of the races, with its own client id and checkpoint folder) and ``chequered
serve --workers 2`` (two gateways on one port) run against a private Mosquitto
while ``chequered replay --copies 4`` publishes four races, split 3 and 1
between the partitions. The projector of the one race is killed with SIGKILL
mid-race; its supervisor starts it again, it resumes from its checkpoint and
persistent session, and every race ends exact: the retained standings equal one
uninterrupted fold of the events on the wire and the official classification,
and websocket clients spread over both workers hold the same boards.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from pathlib import Path

import psutil
import pytest

from broker.mosquitto import Mosquitto, free_port
from chequered.contract.partition import owner
from consumers.projector import checkpoints
from tests.conftest import requires_mosquitto
from tests.support.observe import Observer, observing
from tests.support.official import check_against_classification
from tests.support.procs import Service, wait_subscribed
from tests.support.wait import until, wait_for
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto, pytest.mark.slow]

RECORDING = "alms-2013-monterey-race"
RACES = [f"{RECORDING}-{i}" for i in range(1, 5)]
SPEED = "1000"
"""Race seconds per wall second: the 4-hour race in about 15 s."""
CATCH_UP_S = 180.0
"""Longest wait for a moment of the race or for the final standings (a loaded machine)."""
KILL_AT_SEQ = 400
"""Standings seq of the lone race at which its projector is killed: well inside the race."""


def _port_pair() -> int:
    """A free port whose next port is free too (the second projector's metrics)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two free ports in a row")


def _listening_on(parent: int, port: int) -> psutil.Process | None:
    """The child of ``parent`` that listens on ``port``."""
    for child in psutil.Process(parent).children():
        try:
            if any(c.laddr.port == port for c in child.net_connections(kind="tcp")):
                return child
        except psutil.Error:
            continue
    return None


async def test_two_projectors_two_gateways_end_exact_after_a_kill(tmp_path: Path) -> None:
    by_partition = {race: owner(race, 2) for race in RACES}
    assert set(by_partition.values()) == {0, 1}, "the four races must fall in both halves"
    lone = next(r for r in RACES if list(by_partition.values()).count(by_partition[r]) == 1)
    lone_index = by_partition[lone]

    broker = Mosquitto(workdir=tmp_path / "mosquitto").start()
    metrics_port = _port_pair()
    ws_port = free_port()
    ckpt = tmp_path / "checkpoints"
    logs = tmp_path / "logs"
    projectors = Service(
        "projectors",
        ["project", "--broker", broker.url, "--processes", "2", "--checkpoint-dir", str(ckpt),
         "--client-id", "scale", "--metrics-port", str(metrics_port)],
        logs,
    )  # fmt: skip
    gateways = Service(
        "gateways",
        ["serve", "--broker", broker.url, "--workers", "2", "--port", str(ws_port)],
        logs,
    )
    producer = Service(
        "producer",
        ["replay", RECORDING, "--copies", "4", "--broker", broker.url, "--speed", SPEED,
         "--exit-at-end"],
        logs,
    )  # fmt: skip
    witnesses = [Observer(broker.url, race) for race in RACES]
    url = f"ws://127.0.0.1:{ws_port}/ws"
    clients = [Watcher(url, race, seed=i) for i, race in enumerate(RACES * 2)]
    try:
        projectors.start()
        gateways.start()
        for port in (metrics_port, metrics_port + 1):
            wait_subscribed(port, CATCH_UP_S)
        wait_for(
            lambda: sum(e.get("event") == "gateway_listening" for e in gateways.log_events()) == 2,
            CATCH_UP_S,
            "both gateway workers listening",
        )
        async with contextlib.AsyncExitStack() as stack:
            for witness in witnesses:
                await stack.enter_async_context(observing(witness))
            await until(lambda: all(w.connects for w in witnesses), 10, "witnesses")
            producer.start()
            async with watching(*clients):
                lone_witness = witnesses[RACES.index(lone)]
                await until(
                    lambda: lone_witness.standings_seq >= KILL_AT_SEQ,
                    CATCH_UP_S,
                    f"{lone} standings at seq {KILL_AT_SEQ}",
                )
                victim = _listening_on(projectors.pid, metrics_port + lone_index)
                assert victim is not None, projectors.log_text()[-3000:]
                victim.send_signal(signal.SIGKILL)

                def finished(w: Observer) -> bool:
                    done = [s for s in w.statuses if s.state == "finished"]
                    return (
                        bool(done)
                        and w.retained is not None
                        and (w.retained.seq == (done[-1].last_seq or 0))
                    )

                await until(
                    lambda: all(finished(w) for w in witnesses),
                    CATCH_UP_S,
                    "every race finished and its last seq retained",
                )
                finals = {w.race: w.retained for w in witnesses}
                await until(
                    lambda: all(c.view is not None and c.view == finals[c.race] for c in clients),
                    CATCH_UP_S,
                    "every websocket client on the final board",
                )
        assert projectors.stop() == 0
        assert gateways.stop() == 0
        assert producer.stop() is not None
    finally:
        for service in (producer, gateways, projectors):
            if service.alive:
                service.stop()
        broker.stop()

    for witness in witnesses:
        final = witness.retained
        assert final is not None
        assert witness.missing_seqs() == []
        # The standings are those of one uninterrupted fold of the events on the wire.
        assert final == witness.reference(), witness.race
        assert final.session.finished and final.session.gaps == 0
        check_against_classification(final, RECORDING)
        # Each race was folded by its own partition alone.
        tag = f"{by_partition[witness.race] + 1}of2"
        assert checkpoints.load(checkpoints.path_for(ckpt / tag, witness.race)).seq == final.seq
        other = f"{2 - by_partition[witness.race]}of2"
        assert not checkpoints.path_for(ckpt / other, witness.race).exists()
    events = projectors.log_events()
    # The killed projector was started again and resumed its race from the checkpoint.
    assert any(e.get("event") == "process_died" for e in events)
    assert any(e.get("event") == "checkpoint_loaded" and e.get("race") == lone for e in events), (
        "the restarted projector did not load its checkpoint"
    )
    # A projector of a set learns a race from its meta and subscribes then: a race's
    # first events may pass before it does, which the resend it asks for brings back;
    # that is no alarm (no dead letter, no gap).
    alarms = [e for e in events if e.get("event") in ("dead_letter", "seq_gap")]
    alarms += [e for e in events if e.get("event") == "race_joined" and e.get("resync")]
    assert not alarms, alarms[:3]
    assert not projectors.tracebacks() and not gateways.tracebacks()
    # Both gateway workers served clients; each client holds the final board.
    assert {c.race for c in clients} == set(RACES)
