"""Our own projector against the hostile feed: the official classification, every fault counted.

The real producer replays a recorded race with every fault injected (duplicates,
drops, reorders, bursts, a stall, a backward seek, malformed payloads) through a
private Mosquitto to the real projector, in process. The projector's retained
standings end in the official classification; its counters equal what the
injector's record says a consumer that keeps the highest seq must count; the
labels on the injected topic and the producer's last status tell the same story.

First with the projector's resend on a gap turned off (where it has one): drops
are then checked against the counters, and the classification the session
closes with fills in the laps they cost. Then with it on and one message lost
(dropped, or sent too late): the projector asks for the race again, and the
replay, clean, ends on the exact board of a clean fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from broker.bus import connect
from broker.mosquitto import Mosquitto
from chequered.cli.live import load_timeline
from chequered.contract import board, control, topics
from chequered.contract.injected import Injected
from consumers.metrics import Registry
from consumers.projector.service import ProjectorSettings, run_projector
from consumers.standings.fold import Standings, snapshot
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
RESEND = "resend_on_gap" in {f.name for f in dataclasses.fields(ProjectorSettings)}
"""Whether the projector asks a producer to send a race again after a gap."""


def projector_settings(*, resend: bool) -> ProjectorSettings:
    return ProjectorSettings(resend_on_gap=resend) if RESEND else ProjectorSettings()  # type: ignore[call-arg, unused-ignore]


@dataclass
class Run:
    injector: Injector
    counters: dict[str, float]
    final: board.Snapshot
    labels: list[Injected]
    statuses: list[control.Status]
    last_status: control.Status | None
    events_seen: Observer


async def replay_to_projector(
    url: str, tmp_path: Path, rates: FaultRates, settings: ProjectorSettings
) -> Run:
    """Replay the race with ``rates`` to a projector until both are done with it."""
    race, timeline = load_timeline(RECORDING, seed=1)
    injector = Injector(race, rates)
    statuses: list[control.Status] = []
    labels: list[Injected] = []
    registry = Registry("chequered_projector")
    stop_projector, stop_producer = asyncio.Event(), asyncio.Event()
    ready = asyncio.Event()

    async def collect_labels() -> None:
        async with connect(url, client_id="label-reader") as bus:
            await bus.subscribe(topics.topic(race, topics.INJECTED), qos=1)
            async for message in bus.messages():
                labels.append(msgspec.json.decode(message.payload, type=Injected))

    witness = Observer(url, race)
    projector = asyncio.create_task(
        run_projector(url, checkpoint_dir=tmp_path / "ckpt", client_id="hostile-proj",
                      stop=stop_projector, ready=ready, registry=registry, settings=settings)
    )  # fmt: skip
    reader = asyncio.create_task(collect_labels())
    producer: asyncio.Task[None] | None = None
    try:
        async with observing(witness):
            await until(lambda: witness.connects and ready.is_set(), 10, "projector and witness")
            spec = ReplaySpec(race, timeline, speed=None, faults=injector)
            producer = asyncio.create_task(
                run_producer(url, [spec], stop=stop_producer, settings=SETTINGS,
                             on_status=statuses.append)
            )  # fmt: skip

            def done() -> bool:
                last = statuses[-1] if statuses else None
                asked = injector.counts["seek_back"] + registry.values().get("resends", 0)
                answered = sum(1 for s in statuses if s.reply and s.reply.cmd != "pause")
                e = injector.expected
                return (
                    last is not None
                    and last.state == "finished"
                    and answered == asked
                    and injector.held == 0
                    and witness.retained is not None
                    and witness.retained.seq == injector.high
                    and registry.values().get("dead_letters", 0) >= e.malformed + e.gap_events
                )

            await until(done, WAIT_S, "the race finished and folded to its last seq")
            counters = registry.values()
            final = witness.retained
            stop_producer.set()
            await producer
            await until(lambda: len(labels) == len(injector.record), 10, "every label")
            last_status = witness.status
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
    assert final is not None
    return Run(injector, counters, final, labels, statuses, last_status, witness)


def check_counted(run: Run) -> None:
    """The projector's counters are what the record says a seq-keeping consumer counts."""
    expected, counters = run.injector.expected, run.counters
    assert counters["gaps"] == expected.gaps
    assert counters["duplicates"] == expected.duplicates
    assert counters["resets"] == expected.resets
    # Our projector dead-letters each malformed payload and the first event after a gap.
    assert counters["dead_letters"] == expected.malformed + expected.gap_events
    # Its board shows the seqs missed since the race last opened (a reset reopens it).
    assert run.final.session.gaps == expected.session_gaps
    # The side topic carried the record as it happened; the last status has the counts.
    assert run.labels == run.injector.record
    assert run.last_status is not None
    assert run.last_status.injected == {k: v for k, v in run.injector.counts.items() if v}


async def test_the_projector_ends_official_with_every_injected_fault_counted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    run = await replay_to_projector(
        mosquitto.url, tmp_path, RATES, projector_settings(resend=False)
    )
    injector, expected = run.injector, run.injector.expected
    # Every kind of fault happened, and the seek replayed the race from its start.
    assert all(injector.counts[k] > 0 for k in injector.counts), injector.counts
    assert expected.resets == injector.counts["seek_back"] == 1
    assert expected.gaps > 0 and expected.duplicates > 0 and expected.malformed > 0
    # The projector ends in the official classification ...
    assert run.final.session.finished
    check_against_classification(run.final, RECORDING)
    # ... having counted every fault as the record says it must.
    check_counted(run)
    malformed = [label for label in run.labels if label.fault == "malformed"]
    assert len(malformed) == expected.malformed and all(label.payload for label in malformed)


@pytest.mark.skipif(not RESEND, reason="the projector has no resend on a gap")
@pytest.mark.parametrize("fault", ["drop", "reorder"])
async def test_the_projector_recovers_a_lost_message_by_asking_for_the_race_again(
    mosquitto: Mosquitto, tmp_path: Path, fault: str
) -> None:
    # One fault: the replay the projector asks for then comes through clean.
    rates = FaultRates(seed=7, max_faults=1, **{fault: 0.05})  # type: ignore[arg-type]
    run = await replay_to_projector(mosquitto.url, tmp_path, rates, projector_settings(resend=True))
    injector = run.injector
    assert injector.counts[fault] == 1 and len(injector.record) == 1
    assert run.counters["resends"] == injector.expected.resets == 1
    check_counted(run)
    # The board is exactly a clean fold's: nothing missing since the replay.
    assert run.final.session.gaps == 0
    race, timeline = load_timeline(RECORDING, seed=1)
    clean = Standings()
    for event in timeline:
        clean.step(event)
    reference = snapshot(clean.races[race])
    assert [(c.car, c.laps, c.position) for c in run.final.cars] == [
        (c.car, c.laps, c.position) for c in reference.cars
    ]
    check_against_classification(run.final, RECORDING)
