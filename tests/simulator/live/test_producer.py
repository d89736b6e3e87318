"""The producer against a real Mosquitto: completeness, order, pace, retained facts, last will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from msgspec.structs import replace

from broker.bus import Bus, BusError, connect
from broker.mosquitto import Mosquitto, free_port
from chequered.cli.live import load_timeline
from chequered.contract import control, topics
from chequered.contract import events as ev
from chequered.contract.control import Status
from simulator.live.outbox import ProducerSettings, batch_payload, group_messages
from simulator.live.producer import ReplaySpec, run_producer
from tests.conftest import REPO
from tests.support.feed import Collector, collect_until, tiny_race

REAL_RACE = "imsa-2022-laguna-seca-race"


def real_timeline(race: str) -> list[ev.Event]:
    return load_timeline(REAL_RACE, seed=1, race=race)[1]


def without_producer_fields(events: list[ev.Event]) -> list[ev.Event]:
    return [replace(e, seq=1, wall=0.0) for e in events if not isinstance(e, ev.Clock)]


class Watch:
    """A subscriber's view of one race: events (deduplicated by seq), statuses, meta."""

    def __init__(self, race: str) -> None:
        self.race = race
        self.events = Collector(race)
        self.statuses: list[Status] = []
        self.meta: list[bytes] = []
        self.payloads: list[bytes] = []

    def handlers(self) -> dict[str, Callable[[bytes], None]]:
        def on_events(payload: bytes) -> None:
            self.payloads.append(payload)
            self.events.add(payload)

        return {
            topics.topic(self.race, topics.EVENTS): on_events,
            topics.topic(self.race, topics.STATUS): lambda p: self.statuses.append(
                control.decode_status(p)
            ),
            topics.topic(self.race, topics.META): self.meta.append,
        }

    @property
    def status(self) -> Status | None:
        return self.statuses[-1] if self.statuses else None

    def finished(self) -> bool:
        s = self.status
        return s is not None and s.state == "finished" and self.events.last_seq == s.last_seq

    async def until(self, bus: Bus, done: Callable[[], bool], within_s: float = 30) -> None:
        await collect_until(bus, self.handlers(), done, within_s)


@asynccontextmanager
async def producing(
    url: str, specs: list[ReplaySpec], **kwargs: object
) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_producer(url, specs, stop=stop, **kwargs))  # type: ignore[arg-type]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_every_event_arrives_once_in_order_flat_out(module_mosquitto: Mosquitto) -> None:
    race = "flat-out"
    timeline = real_timeline(race)
    settings = ProducerSettings(max_batch_events=200, max_batch_bytes=32 * 1024, window=8)
    watch = Watch(race)
    async with connect(module_mosquitto.url) as bus:
        await bus.subscribe(topics.topic(race, "#"))
        async with producing(module_mosquitto.url, [ReplaySpec(race, timeline, speed=None)],
                             settings=settings):  # fmt: skip
            await watch.until(bus, watch.finished)
    got = watch.events
    assert got.duplicates == 0
    assert [e.seq for e in got.events] == list(range(1, len(timeline) + 2))
    assert without_producer_fields(got.events) == without_producer_fields(timeline)
    # Flat out, events travel in batches within both limits, and each is one message.
    assert got.batches > 0 and got.messages < len(timeline) / 20
    for payload in watch.payloads:
        message = ev.decode(payload)
        if isinstance(message, ev.Batch):
            assert len(message.events) <= 200 and len(payload) <= 32 * 1024


async def test_a_finite_speed_keeps_its_pace(module_mosquitto: Mosquitto) -> None:
    race = "paced"
    timeline = tiny_race(race, cars=3, laps=3, lap_ms=4_000)  # about 12.5 s of racing
    watch = Watch(race)
    async with connect(module_mosquitto.url) as bus:
        await bus.subscribe(topics.topic(race, "#"))
        async with producing(module_mosquitto.url, [ReplaySpec(race, timeline, speed=10)]):
            await watch.until(bus, watch.finished)
    racing = [e for e in watch.events.events if e.t_ms > 0]
    first, last = racing[0], racing[-1]
    pace = (last.t_ms - first.t_ms) / 1000 / (last.wall - first.wall)
    assert pace == pytest.approx(10, rel=0.1)
    assert without_producer_fields(watch.events.events) == without_producer_fields(timeline)


async def test_meta_and_status_are_retained_for_a_late_subscriber(
    module_mosquitto: Mosquitto,
) -> None:
    race = "late-reader"
    timeline = tiny_race(race)
    early = Watch(race)
    async with connect(module_mosquitto.url) as bus:
        await bus.subscribe(topics.topic(race, "#"))
        async with producing(module_mosquitto.url, [ReplaySpec(race, timeline, speed=None)]):
            await early.until(bus, early.finished)
            late = Watch(race)
            async with connect(module_mosquitto.url) as late_bus:
                await late_bus.subscribe(topics.topic(race, "#"))
                await late.until(late_bus, lambda: bool(late.meta and late.statuses), 10)
    opened = ev.decode(late.meta[0])
    assert isinstance(opened, ev.SessionOpened) and opened.race == race and opened.seq == 1
    assert opened.entries == timeline[0].entries  # type: ignore[union-attr]
    status = late.statuses[0]
    assert (status.state, status.last_seq, status.t_ms, status.end_ms) == (
        "finished",
        len(timeline) + 1,
        timeline[-1].t_ms,
        timeline[-1].t_ms,
    )
    assert late.events.events == []  # the events themselves are not retained
    # A clean stop says the race is no longer served.
    after = Watch(race)
    async with connect(module_mosquitto.url) as bus:
        await bus.subscribe(topics.topic(race, topics.STATUS))
        await after.until(bus, lambda: bool(after.statuses), 10)
    assert after.statuses[0].state == "offline"
    assert after.statuses[0].last_seq == len(timeline) + 1


@pytest.mark.parametrize("per_connection", [1, 2, 25])
async def test_several_races_from_one_process_each_keep_their_own_sequence(
    module_mosquitto: Mosquitto, per_connection: int
) -> None:
    """Each race on a connection of its own, two on one, or all on one: the same streams."""
    timeline = tiny_race("copy", cars=4, laps=6)
    races = ["copy-1", "copy-2", "copy-3"]
    watches = {race: Watch(race) for race in races}
    handlers = {k: v for w in watches.values() for k, v in w.handlers().items()}
    async with connect(module_mosquitto.url) as bus:
        await bus.subscribe(topics.all_races("#"))
        specs = [ReplaySpec(race, timeline, speed=None) for race in races]
        settings = ProducerSettings(races_per_connection=per_connection)
        async with producing(module_mosquitto.url, specs, settings=settings):
            await collect_until(
                bus, handlers, lambda: all(w.finished() for w in watches.values()), 30
            )
    for race, watch in watches.items():
        assert {e.race for e in watch.events.events} == {race}
        assert without_producer_fields(watch.events.events) == without_producer_fields(
            [replace(e, race=race) for e in timeline]
        )
    with pytest.raises(ValueError, match="distinct"):
        await run_producer(module_mosquitto.url, [specs[0], specs[0]])


async def test_a_killed_producer_is_shown_offline_by_its_last_will(mosquitto: Mosquitto) -> None:
    race = REAL_RACE
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    watch = Watch(race)
    async with connect(mosquitto.url) as bus:
        await bus.subscribe(topics.topic(race, topics.STATUS))
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on here)
            [sys.executable, "-m", "chequered", "replay", race, "--broker", mosquitto.url,
             "--speed", "1"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            await watch.until(bus, lambda: watch.status is not None
                              and watch.status.state == "running", 30)  # fmt: skip
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await watch.until(bus, lambda: watch.status is not None
                              and watch.status.state == "offline", 30)  # fmt: skip
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
    assert watch.statuses[-1].race == race
    # The will was set at connect time, so it is the one and only offline status.
    assert [s.state for s in watch.statuses].count("offline") == 1


SHARED_PRODUCER = """
import asyncio, sys
from simulator.live.outbox import ProducerSettings
from simulator.live.producer import ReplaySpec, run_producer
from tests.support.feed import tiny_race

races = sys.argv[2:]
timeline = tiny_race("shared", cars=4, laps=200, lap_ms=60_000)
specs = [ReplaySpec(race, timeline, speed=1) for race in races]
asyncio.run(run_producer(sys.argv[1], specs, settings=ProducerSettings(races_per_connection=3)))
"""


async def test_races_sharing_a_connection_each_have_their_last_will(mosquitto: Mosquitto) -> None:
    """Three races on one connection: killed, each race is shown offline by its own will."""
    races = ["shared-1", "shared-2", "shared-3"]
    watches = {race: Watch(race) for race in races}
    handlers = {k: v for w in watches.values() for k, v in w.handlers().items()}

    def all_in(state: str) -> Callable[[], bool]:
        return lambda: all(w.status is not None and w.status.state == state
                           for w in watches.values())  # fmt: skip

    async with connect(mosquitto.url) as bus:
        await bus.subscribe(topics.all_races("status"))
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, never waited on here)
            [sys.executable, "-c", SHARED_PRODUCER, mosquitto.url, *races],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await collect_until(bus, handlers, all_in("running"), 30)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            await collect_until(bus, handlers, all_in("offline"), 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for race, watch in watches.items():
        assert [s.state for s in watch.statuses].count("offline") == 1, race


@pytest.mark.parametrize("races", [1, 3])
async def test_resends_what_the_broker_had_not_acknowledged_after_a_restart(
    tmp_path: Path, races: int
) -> None:
    """The broker stops mid-race and comes back on the same port: nothing is missing,
    whether the connection carried one race or several."""
    broker = Mosquitto(workdir=tmp_path / "m", persistence=True).start()
    names = [f"restart-{n}" for n in range(races)]
    timeline = tiny_race("restart", cars=5, laps=4, lap_ms=3_000)  # 5 cars: a dense stream
    watches = {race: Watch(race) for race in names}
    handlers = {k: v for w in watches.values() for k, v in w.handlers().items()}
    restarted = False
    a_third_in = asyncio.Event()

    def done() -> bool:
        if all(w.events.last_seq >= len(timeline) // 3 for w in watches.values()):
            a_third_in.set()
        return restarted and all(w.finished() for w in watches.values())

    try:

        async def reader() -> None:
            # A persistent session: what is published while this reader is away waits for it.
            while True:
                try:
                    async with connect(
                        broker.url, client_id="restart-reader", clean_session=False
                    ) as bus:
                        for race in names:
                            await bus.subscribe(topics.topic(race, "#"), qos=1)
                        await collect_until(bus, handlers, done, 60)
                        return
                except BusError:
                    await asyncio.sleep(0.05)  # retry pace of this test's reader only

        specs = [ReplaySpec(race, timeline, speed=8) for race in names]
        async with producing(broker.url, specs):
            task = asyncio.create_task(reader())
            await asyncio.wait_for(a_third_in.wait(), 30)
            broker.stop()  # clean stop: the broker saves the reader's session
            broker.start()
            restarted = True
            await asyncio.wait_for(task, 60)
    finally:
        broker.stop()
    for race, watch in watches.items():
        assert [e.seq for e in watch.events.events] == list(range(1, len(timeline) + 2)), race
        assert without_producer_fields(watch.events.events) == without_producer_fields(
            [replace(e, race=race) for e in timeline]
        )


def test_batches_are_what_msgspec_would_encode_and_respect_both_limits() -> None:
    timeline = tiny_race("b")
    parts = [ev.encode(e) for e in timeline]
    payload = batch_payload("b", parts[:5])
    assert payload == ev.encode(ev.Batch(race="b", events=list(timeline[:5])))
    assert ev.unbatch(ev.decode(payload)) == list(timeline[:5])
    groups = group_messages(parts, 7, 1000, overhead=len(batch_payload("b", ())))
    assert [i for first, last in groups for i in range(first, last + 1)] == list(range(len(parts)))
    for first, last in groups:
        assert last - first < 7
        assert first == last or len(batch_payload("b", parts[first : last + 1])) <= 1000
    assert group_messages([b"x" * 5000, b"y"], 10, 1000) == [(0, 0), (1, 1)]


async def test_replay_and_status_commands_speak_tls_with_a_ca_file(tmp_path: Path) -> None:
    """``chequered replay`` and ``chequered status`` over mqtts:// with --ca-file."""
    from tests.support.certs import make_certs, openssl

    if openssl() is None:
        pytest.skip("openssl is not installed")
    certs = make_certs(tmp_path / "certs")
    tls_port = free_port()
    broker = Mosquitto(
        workdir=tmp_path / "m",
        extra_config=f"listener {tls_port} 127.0.0.1\ncafile {certs.ca}\n"
        f"certfile {certs.cert}\nkeyfile {certs.key}\n",
    ).start()
    tls = ["--broker", f"mqtts://127.0.0.1:{tls_port}", "--ca-file", str(certs.ca)]
    try:
        race = REAL_RACE
        watch = Watch(race)
        async with connect(broker.url) as bus:
            await bus.subscribe(topics.topic(race, "#"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "chequered", "replay", race, "--speed", "max",
                "--exit-at-end", *tls, cwd=REPO,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            await watch.until(bus, lambda: bool(watch.statuses)
                              and watch.statuses[-1].state == "offline")  # fmt: skip
        assert watch.events.last_seq == len(real_timeline(race)) + 1
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chequered", "status", race, *tls, cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(status.communicate(), 30)
        # The replay has ended and its producer is gone: offline, exit status 1.
        assert status.returncode == 1
        assert out.decode().startswith(f"{race}: offline at 2:42:")
    finally:
        broker.stop()


def test_every_producer_setting_is_documented_with_its_default() -> None:
    import dataclasses

    text = (REPO / "docs" / "OPERATIONS.md").read_text(encoding="utf-8")
    for setting in dataclasses.fields(ProducerSettings):
        row = f"| `{setting.name}` | {setting.default} |"
        assert row in text, f"docs/OPERATIONS.md lacks the row {row}"


IDLE_PRODUCER = """
import asyncio, signal
from chequered import log
from simulator.live.outbox import ProducerSettings
from simulator.live.producer import ReplaySpec, run_producer
from tests.support.feed import tiny_race

async def main(url: str, race: str) -> None:
    log.configure("info", json=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    spec = ReplaySpec(race, tiny_race(race), speed=None)
    await run_producer(url, [spec], stop=stop, settings=ProducerSettings(keepalive_s={keepalive}))

import sys
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_a_finished_replay_stays_connected_while_idle(mosquitto: Mosquitto) -> None:
    """Nothing to publish after the end: the keepalive alone holds the connection, and
    nothing but log lines reaches stderr (no asyncio traceback of a lost connection)."""
    race = "idle-after-end"
    keepalive = 2
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", IDLE_PRODUCER.format(keepalive=keepalive), mosquitto.url, race,
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    watch = Watch(race)
    try:
        async with connect(mosquitto.url) as bus:
            await bus.subscribe(topics.topic(race, topics.STATUS))
            await watch.until(bus, lambda: watch.status is not None
                              and watch.status.state == "finished")  # fmt: skip
            # The condition is time itself: idle for 2.5 keepalive periods, long past the
            # broker's limit of 1.5 (Mosquitto drops a silent client and sends its will).
            # Any status in that time would be the will, a reconnect's, or a stop's.
            seen = len(watch.statuses)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(watch.until(bus, lambda: len(watch.statuses) > seen, 60),
                                       2.5 * keepalive)  # fmt: skip
        assert [s.state for s in watch.statuses[seen - 1 :]] == ["finished"], "connection lost"
        assert proc.returncode is None
        log = mosquitto.log()
        assert "exceeded timeout" not in log and "disconnecting" not in log.lower(), log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = err.decode().splitlines()
    events = [json.loads(line)["event"] for line in lines]  # every line a structlog JSON line
    assert events == ["producer.stopped"], lines
    assert proc.returncode == 0
