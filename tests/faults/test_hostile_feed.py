"""Our own projector against the hostile feed: the official classification, every fault counted.

The real producer replays a recorded race with every fault injected (duplicates,
drops, reorders, bursts, a stall, a backward seek, malformed payloads) through a
private Mosquitto to the real projector, in process. The projector's retained
standings end in the official classification; its counters equal what the
injector's record says a consumer that keeps the highest seq must count; the
labels on the injected topic and the producer's last status tell the same story.

Drops are checked against the counters only: the projector has no resend path,
and the classification the session closes with fills in the laps it lost.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
import pytest

from broker.bus import connect
from broker.mosquitto import Mosquitto
from chequered.cli.live import load_timeline
from chequered.contract import control, topics
from chequered.contract.injected import Injected
from consumers.metrics import Registry
from consumers.projector.service import run_projector
from simulator.live.faults import FaultRates, Injector
from simulator.live.outbox import ProducerSettings
from simulator.live.producer import ReplaySpec, run_producer
from tests.support.observe import Observer, observing
from tests.support.official import check_against_classification
from tests.support.wait import until

pytestmark = [pytest.mark.slow]

RECORDING = "alms-2013-monterey-race"
RATES = FaultRates(
    seed=2013, duplicate=0.04, drop=0.03, reorder=0.04, reorder_window=4, burst=0.01,
    burst_s=0.1, stall=0.004, stall_s=0.5, seek_back=0.01, max_seeks=1, malformed=0.03,
)  # fmt: skip
SETTINGS = ProducerSettings(max_batch_events=10)
"""Small messages, flat out: some hundreds of messages for the faults to fall on."""
WAIT_S = 120.0


async def test_the_projector_ends_official_with_every_injected_fault_counted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    race, timeline = load_timeline(RECORDING, seed=1)
    injector = Injector(race, RATES)
    statuses: list[control.Status] = []
    labels: list[Injected] = []
    registry = Registry("chequered_projector")
    stop_projector, stop_producer = asyncio.Event(), asyncio.Event()
    ready = asyncio.Event()

    async def collect_labels() -> None:
        async with connect(mosquitto.url, client_id="label-reader") as bus:
            await bus.subscribe(topics.topic(race, topics.INJECTED), qos=1)
            async for message in bus.messages():
                labels.append(msgspec.json.decode(message.payload, type=Injected))

    witness = Observer(mosquitto.url, race)
    projector = asyncio.create_task(
        run_projector(mosquitto.url, checkpoint_dir=tmp_path / "ckpt", client_id="hostile-proj",
                      stop=stop_projector, ready=ready, registry=registry)
    )  # fmt: skip
    reader = asyncio.create_task(collect_labels())
    producer: asyncio.Task[None] | None = None
    try:
        async with observing(witness):
            await until(lambda: witness.connects and ready.is_set(), 10, "projector and witness")
            spec = ReplaySpec(race, timeline, speed=None, faults=injector)
            producer = asyncio.create_task(
                run_producer(mosquitto.url, [spec], stop=stop_producer, settings=SETTINGS,
                             on_status=statuses.append)
            )  # fmt: skip

            def done() -> bool:
                last = statuses[-1] if statuses else None
                seeks = injector.counts["seek_back"]
                answered = sum(1 for s in statuses if s.reply and s.reply.cmd == "seek")
                return (
                    last is not None
                    and last.state == "finished"
                    and answered == seeks
                    and injector.held == 0
                    and witness.retained is not None
                    and witness.retained.seq == injector.high
                    and registry.values().get("dead_letters", 0)
                    >= injector.expected.malformed + injector.expected.gap_events
                )

            await until(done, WAIT_S, "the race finished and folded to its last seq")
            counters = registry.values()
            final = witness.retained
            stop_producer.set()
            await producer
            await until(lambda: len(labels) == len(injector.record), 10, "every label")
    finally:
        stop_projector.set()
        stop_producer.set()
        reader.cancel()
        for task in (projector, producer):
            if task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(task, 10)
        with contextlib.suppress(asyncio.CancelledError):
            await reader

    # Every kind of fault happened, and the seek replayed the race from its start.
    assert all(injector.counts[k] > 0 for k in injector.counts), injector.counts
    expected = injector.expected
    assert expected.resets == injector.counts["seek_back"] == 1
    assert expected.gaps > 0 and expected.duplicates > 0 and expected.malformed > 0
    # The projector ends in the official classification ...
    assert final is not None and final.session.finished
    check_against_classification(final, RECORDING)
    # ... having counted every fault as the record says it must.
    assert counters["gaps"] == expected.gaps
    assert counters["duplicates"] == expected.duplicates
    assert counters["resets"] == expected.resets
    # Our projector dead-letters each malformed payload and the first event after a gap.
    assert counters["dead_letters"] == expected.malformed + expected.gap_events
    # The side topic carried the record as it happened; the last status has the counts.
    assert labels == injector.record
    malformed = [label for label in labels if label.fault == "malformed"]
    assert len(malformed) == expected.malformed and all(label.payload for label in malformed)
    live = [s for s in statuses if s.state != "offline"]
    assert witness.status is not None and witness.status.injected == {
        k: v for k, v in injector.counts.items() if v
    }
    assert live
