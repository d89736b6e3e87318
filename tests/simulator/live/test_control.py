"""Replay control over MQTT against a real Mosquitto: commands take effect, bad ones are refused.

Pace is measured as race time over wall time from the events' own ``t_ms``
and ``wall`` fields; no assertion depends on how long anything took.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from broker.bus import Bus, connect
from broker.mosquitto import Mosquitto
from chequered.cli.live import send_command
from chequered.contract import control, topics
from chequered.contract import events as ev
from chequered.contract.control import Command, Pause, Resume, Seek, SetSpeed, Status
from simulator.live.feed import lap_starts
from simulator.live.producer import ReplaySpec, run_producer
from tests.conftest import REPO
from tests.support.feed import Collector, reference_fold, timeline_fold, tiny_race


@dataclass
class Live:
    """A running producer of one race and a subscriber following its events and status."""

    race: str
    url: str
    timeline: list[ev.Event]
    bus: Bus
    stream: Collector
    statuses: asyncio.Queue[Status]
    progress: asyncio.Event

    async def command(self, command: Command) -> Status:
        return await send_command(self.url, self.race, command, within_s=10)

    async def raw(self, payload: bytes) -> control.Reply:
        """Publish a raw control payload; the next reply on the status topic answers it."""
        await self.bus.publish(topics.topic(self.race, topics.CONTROL), payload)
        return await self.next_reply()

    async def next_reply(self) -> control.Reply:
        while True:
            status = await asyncio.wait_for(self.statuses.get(), 10)
            if status.reply is not None:
                return status.reply

    async def until(self, done: object, within_s: float = 20) -> None:
        async def wait() -> None:
            while not done():  # type: ignore[operator]
                self.progress.clear()
                await self.progress.wait()

        await asyncio.wait_for(wait(), within_s)

    def clocks(self) -> list[ev.Clock]:
        return [e for e in self.stream.events if isinstance(e, ev.Clock)]


@asynccontextmanager
async def live(
    url: str, race: str, timeline: list[ev.Event], *, speed: float | None
) -> AsyncIterator[Live]:
    async with connect(url) as bus:
        await bus.subscribe(topics.topic(race, topics.EVENTS))
        await bus.subscribe(topics.topic(race, topics.STATUS))
        state = Live(race, url, timeline, bus, Collector(race), asyncio.Queue(), asyncio.Event())

        async def read() -> None:
            async for message in bus.messages():
                if message.topic.endswith("/events"):
                    state.stream.add(message.payload)
                elif message.topic.endswith("/status"):
                    state.statuses.put_nowait(control.decode_status(message.payload))
                state.progress.set()

        reader = asyncio.create_task(read())
        stop = asyncio.Event()
        producer = asyncio.create_task(
            run_producer(url, [ReplaySpec(race, timeline, speed=speed)], stop=stop)
        )
        try:
            yield state
        finally:
            stop.set()
            await asyncio.wait_for(producer, 10)
            reader.cancel()


def dense_race(race: str) -> list[ev.Event]:
    """Eight cars, three lines, 6 s laps: four crossings per race second."""
    return tiny_race(race, cars=8, laps=40, lap_ms=6_000)


def pace(events: list[ev.Event]) -> float:
    """Race seconds per wall second, robust to a busy machine.

    The median of the slopes between each event and the one half the sample
    later: every pair spans half the measurement, and a minority of late
    emissions (a starved producer catching up) cannot move the median.
    """
    racing = [e for e in events if not isinstance(e, ev.Clock | ev.Reset)]
    half = len(racing) // 2
    slopes = sorted(
        (b.t_ms - a.t_ms) / 1000 / (b.wall - a.wall)
        for a, b in zip(racing[:half], racing[half : 2 * half], strict=True)
        if b.wall > a.wall
    )
    return slopes[len(slopes) // 2]


def after(stream: list[ev.Event], marker: ev.Event) -> list[ev.Event]:
    return [e for e in stream if e.seq > marker.seq]


def timeline_events_since_reset(stream: list[ev.Event]) -> int:
    resets = [i for i, e in enumerate(stream) if isinstance(e, ev.Reset)]
    since = stream[resets[-1] + 1 :] if resets else stream
    return sum(1 for e in since if not isinstance(e, ev.Clock))


def upto(timeline: list[ev.Event], t_ms: int) -> int:
    return sum(1 for e in timeline if e.t_ms <= t_ms)


async def test_speed_change_pause_and_resume_take_effect(module_mosquitto: Mosquitto) -> None:
    race = "ctl-pace"
    timeline = dense_race(race)
    async with live(module_mosquitto.url, race, timeline, speed=20) as feed:
        await feed.until(lambda: feed.stream.last_seq >= 80)
        status = await feed.command(SetSpeed(id="fast", speed=60))
        assert status.reply == control.Reply(cmd="speed", ok=True, id="fast")
        assert status.speed == 60 and status.state == "running"
        speed_event = feed.clocks()[-1]
        assert (speed_event.action, speed_event.speed) == ("speed", 60)
        await feed.until(lambda: len(after(feed.stream.events, speed_event)) >= 200)
        before = [e for e in feed.stream.events[2:] if e.seq < speed_event.seq]
        assert pace(before) == pytest.approx(20, rel=0.15)
        assert pace(after(feed.stream.events, speed_event)) == pytest.approx(60, rel=0.15)

        paused = await feed.command(Pause(id="p"))
        assert paused.state == "paused"
        pause_event = feed.clocks()[-1]
        # Change speed while paused: accepted, and the clock stays put.
        assert (await feed.command(SetSpeed(id="s2", speed=40))).state == "paused"
        resumed = await feed.command(Resume(id="r"))
        assert resumed.state == "running"
        await feed.until(lambda: feed.clocks()[-1].action == "resume")
        resume_event = feed.clocks()[-1]
        assert resume_event.t_ms == pause_event.t_ms  # no race time passed while paused
        assert resume_event.wall > pause_event.wall  # though wall time did
        between = [e for e in feed.stream.events if pause_event.seq < e.seq < resume_event.seq]
        assert all(e.t_ms <= pause_event.t_ms for e in between)
        await feed.until(lambda: len(after(feed.stream.events, resume_event)) >= 160)
        assert pace(after(feed.stream.events, resume_event)) == pytest.approx(40, rel=0.15)


async def test_seek_forward_and_back_give_the_fold_of_the_timeline(
    module_mosquitto: Mosquitto,
) -> None:
    race = "ctl-seek"
    timeline = dense_race(race)
    laps = lap_starts(timeline)
    async with live(module_mosquitto.url, race, timeline, speed=5) as feed:
        await feed.until(lambda: feed.stream.last_seq >= 10)
        await feed.command(Pause(id="p"))
        # Forward: to the start of lap 30, caught up while paused.
        status = await feed.command(Seek(id="fwd", lap=30))
        assert status.reply is not None and status.reply.ok
        assert status.t_ms == laps[30] and status.state == "paused"
        want = upto(timeline, laps[30])
        await feed.until(lambda: timeline_events_since_reset(feed.stream.events) == want)
        assert reference_fold(feed.stream.events).key() == timeline_fold(timeline, laps[30]).key()
        seek_event = feed.clocks()[-1]
        assert (seek_event.action, seek_event.target_ms) == ("seek", laps[30])

        # Backward: a reset, then the race again from the start up to 0:40 of race time.
        target = 40_000
        status = await feed.command(Seek(id="back", t_ms=target))
        assert status.reply is not None and status.reply.ok and status.t_ms == target
        want = upto(timeline, target)
        await feed.until(lambda: any(isinstance(e, ev.Reset) for e in feed.stream.events)
                         and timeline_events_since_reset(feed.stream.events) == want)  # fmt: skip
        assert reference_fold(feed.stream.events).key() == timeline_fold(timeline, target).key()
        reset = next(e for e in feed.stream.events if isinstance(e, ev.Reset))
        assert reset.target_ms == target
        assert isinstance(after(feed.stream.events, reset)[0], ev.SessionOpened)

        # Then the race runs on at pace from the target, to the end, as if watched throughout.
        await feed.command(SetSpeed(id="max", speed=None))
        await feed.command(Resume(id="go"))
        await feed.until(lambda: any(isinstance(e, ev.SessionClosed)
                                     for e in after(feed.stream.events, reset)))  # fmt: skip
        assert reference_fold(feed.stream.events).key() == timeline_fold(timeline, 10**9).key()
        assert [e.seq for e in feed.stream.events] == list(range(1, feed.stream.last_seq + 1))


BAD = [
    (b"{not json", "invalid", "JSON is malformed"),
    (b'{"cmd":"rewind"}', "rewind", "Invalid value 'rewind'"),
    (b'{"cmd":"speed","speed":0}', "speed", ">= 0.1"),
    (b'{"cmd":"speed","speed":-3}', "speed", ">= 0.1"),
    (b'{"cmd":"speed","speed":100000}', "speed", "<= 1000.0"),
    (b'{"cmd":"speed","speed":"quick"}', "speed", "got `str`"),
    (b'{"cmd":"seek","lap":"two"}', "seek", "got `str`"),
    (b'{"cmd":"seek","t_ms":99999999}', "seek", "seek past the end"),
    (b'{"cmd":"seek","lap":41}', "seek", "lap 41 never starts"),
    (b'{"cmd":"seek"}', "seek", "exactly one of"),
    (b'{"cmd":"pause","please":true}', "pause", "unknown field `please`"),
    (b'"pause"', "invalid", "Expected `object`"),
    (b"x" * 5000, "invalid", "exceeds 4096"),
]


async def test_bad_commands_are_rejected_on_the_status_topic_and_change_nothing(
    module_mosquitto: Mosquitto,
) -> None:
    race = "ctl-bad"
    timeline = dense_race(race)
    # A retained command would run again on every reconnect of the producer: it is refused.
    control_topic = topics.topic(race, topics.CONTROL)
    async with connect(module_mosquitto.url) as bus:
        await bus.publish(control_topic, b'{"cmd":"pause","id":"stale"}', retain=True)
    async with live(module_mosquitto.url, race, timeline, speed=2) as feed:
        reply = await feed.next_reply()
        assert (reply.ok, reply.cmd, reply.id) == (False, "pause", "stale")
        assert "retained" in (reply.error or "")
        await feed.bus.publish(control_topic, b"", retain=True)  # cleared
        await feed.until(lambda: feed.stream.last_seq >= 3)
        clocks = len(feed.clocks())
        for payload, cmd, error in BAD:
            reply = await feed.raw(payload)
            assert (reply.cmd, reply.ok) == (cmd, False), payload
            assert reply.error is not None and error in reply.error, (payload, reply.error)
        status = await feed.command(SetSpeed(id="ok", speed=2))  # unchanged: says nothing new
        assert status.reply == control.Reply(cmd="speed", ok=True, id="ok")
        assert (status.state, status.speed, status.rejected) == ("running", 2, len(BAD) + 1)
        assert len(feed.clocks()) == clocks  # the clock never moved
        assert [e.seq for e in feed.stream.events] == list(range(1, feed.stream.last_seq + 1))


async def test_the_control_command_line_prints_the_reply(module_mosquitto: Mosquitto) -> None:
    race = "ctl-cli"
    timeline = dense_race(race)

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chequered", "control", race, *args,
            "--broker", module_mosquitto.url,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async with live(module_mosquitto.url, race, timeline, speed=1) as feed:
        await feed.until(lambda: feed.stream.last_seq >= 2)
        code, out, _ = await cli("speed", "25")
        assert code == 0 and "speed: ok; running at" in out and "speed 25x" in out
        code, out, _ = await cli("seek", "--time", "1:10")
        assert code == 0 and "seek: ok; running at 0:01:10" in out
        code, _, err = await cli("seek", "--lap", "99")
        assert code == 1 and "rejected: seek past the end: lap 99 never starts" in err
        code, _, err = await cli("speed", "0")
        assert code == 2 and "speed 0.0 is outside 0.1..1000" in err  # refused before sending
    code, _, err = await cli("pause", "--timeout", "0.5")
    assert code == 2 and "no reply within 0.5 s (its status says offline)" in err, err
