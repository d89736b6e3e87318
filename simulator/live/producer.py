"""The replay producer: publishes races on MQTT at their clocks' pace and obeys control commands.

A thin asyncio shell around ``simulator.feed.Feed`` (what goes out when) and
``simulator.outbox`` (batching, the window of publishes in flight, resend
after a reconnect). One connection per race, so that each race has its own
last will and its own order. Settings: ``ProducerSettings`` (docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from broker.backoff import Backoff
from broker.bus import BrokerAddress, Bus, BusError, Will, connect, default_client_id
from chequered import log
from chequered.contract import control, topics
from chequered.contract.control import Reply, Status
from chequered.contract.events import Event
from simulator.live.faults import Injector
from simulator.live.feed import Feed
from simulator.live.hostile import hostile
from simulator.live.outbox import Outbox, ProducerSettings

_log = log.get(__name__)

__all__ = ["ProducerSettings", "ReplaySpec", "run_producer"]


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """One race to replay: its id on the wire, its timeline, and how its clock starts."""

    race: str
    events: Sequence[Event]
    speed: float | None = 1.0
    """Race seconds per wall second (0.1 to 1000); None runs as fast as possible."""
    paused: bool = False
    faults: Injector | None = None
    """A hostile feed: the race's messages pass through this injector (simulator.live.faults)."""


async def run_producer(
    url: str | BrokerAddress,
    replays: list[ReplaySpec],
    *,
    stop: asyncio.Event | None = None,
    client_id: str | None = None,
    settings: ProducerSettings | None = None,
    on_status: Callable[[Status], None] | None = None,
) -> None:
    """Replay every race until ``stop`` is set; a race keeps serving commands after its end."""
    if len({spec.race for spec in replays}) != len(replays):
        raise ValueError(f"race ids must be distinct: {[spec.race for spec in replays]}")
    stop = stop or asyncio.Event()
    settings = settings or ProducerSettings()
    feeds = [
        Feed.create(s.race, s.events, now=time.time(), speed=s.speed, paused=s.paused)
        for s in replays
    ]
    async with asyncio.TaskGroup() as group:
        for feed, spec in zip(feeds, replays, strict=True):
            # Clean sessions: nothing ties a race to its id, so by default it is one
            # nobody can guess (and so cannot take over). Given a prefix, the id is stable.
            name = f"{client_id}-{feed.race}" if client_id else default_client_id(
                f"chequered-producer-{feed.race}")  # fmt: skip
            race = _Race(feed, Outbox(feed.race, settings), settings, on_status or _ignore,
                         spec.faults)  # fmt: skip
            group.create_task(race.run(url, name, stop))


def _ignore(status: Status) -> None:
    pass


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


@dataclass
class _Race:
    feed: Feed
    outbox: Outbox
    settings: ProducerSettings
    on_status: Callable[[Status], None]
    faults: Injector | None = None

    def topic(self, leaf: str) -> str:
        return topics.topic(self.feed.race, leaf)

    async def run(self, url: str | BrokerAddress, client_id: str, stop: asyncio.Event) -> None:
        """Serve the race until ``stop``, reconnecting with backoff and jitter on a lost broker."""
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        while not stop.is_set():
            error: BaseException | None = None
            will = Will(self.topic(topics.STATUS), self.status_payload(offline=True))
            try:
                async with (
                    connect(
                        url, client_id=client_id, will=will, keepalive=self.settings.keepalive_s
                    ) as bus,
                    hostile(bus, self.faults) as bus,
                ):
                    backoff.reset()
                    await self.serve(bus, stop)
            except* BusError as group:
                error = group.exceptions[0]
            if error is None:
                break
            delay = backoff.next()
            _log.warning(
                "producer.disconnected", race=self.feed.race, error=str(error),
                retry_in_s=round(delay, 3), acked_seq=self.outbox.acked_seq,
            )  # fmt: skip
            await _wait(stop, delay)
        _log.info("producer.stopped", race=self.feed.race, **self.outbox.counts)

    def status_payload(self, reply: Reply | None = None, *, offline: bool = False) -> bytes:
        now, feed = time.time(), self.feed
        status = feed.offline_status(now) if offline else feed.status(now, reply)
        self.on_status(status)
        return control.encode(status)

    async def serve(self, bus: Bus, stop: asyncio.Event) -> None:
        feed, out, commands, wakeup = self.feed, self.outbox, deque[bytes](), asyncio.Event()
        async with asyncio.TaskGroup() as group:

            async def status(reply: Reply | None = None, *, offline: bool = False) -> None:
                await out.send(bus, group, self.topic(topics.STATUS), self.status_payload(
                    reply, offline=offline), retain=True)  # fmt: skip

            async def read_commands() -> None:
                async for message in bus.messages():
                    if not message.payload:
                        continue  # clears a retained command: nothing to do
                    refusal = self.refusal(message.payload, message.retain, len(commands))
                    if refusal is not None:
                        reply = feed.reject(message.payload if message.retain else b"", refusal)
                        self.log_reply(reply)
                        await status(reply)
                    else:
                        commands.append(message.payload)
                        wakeup.set()

            async def watch_stop() -> None:
                await stop.wait()
                wakeup.set()

            await bus.subscribe(self.topic(topics.CONTROL), qos=1)
            await out.start(bus, group, feed.start(time.time()))  # resends after a reconnect
            await status()
            tasks = [group.create_task(read_commands()), group.create_task(watch_stop())]
            last_state, next_status = feed.state, time.time() + self.settings.status_interval_s
            while not stop.is_set():
                while commands:
                    reply, events = feed.handle(commands.popleft(), time.time())
                    self.log_reply(reply)
                    await out.events(bus, group, events)
                    await status(reply)
                    last_state = feed.state
                events = feed.take(time.time(), self.settings.max_batch_events)
                await out.events(bus, group, events)
                now = time.time()
                if feed.state != last_state or (feed.state == "running" and now >= next_status):
                    await status()
                    last_state, next_status = feed.state, now + self.settings.status_interval_s
                if events:
                    await asyncio.sleep(0)  # let acknowledgements and commands in
                    continue
                wake = feed.wake_at()
                if feed.state == "running":
                    wake = next_status if wake is None else min(wake, next_status)
                wakeup.clear()
                if not commands and not stop.is_set():
                    await _wait(wakeup, None if wake is None else max(0.0, wake - time.time()))
            for task in tasks:
                task.cancel()
            await status(offline=True)

    def refusal(self, payload: bytes, retained: bool, waiting: int) -> str | None:
        """Why a control message is refused unread, or None to handle it."""
        if retained:  # a stale retained command would run again on every reconnect
            return "a retained command is ignored: clear it with an empty retained message"
        if len(payload) > self.settings.max_command_bytes:
            return f"command of {len(payload)} bytes exceeds {self.settings.max_command_bytes}"
        if waiting >= self.settings.max_pending_commands:
            return f"{waiting} commands are already waiting"
        return None

    def log_reply(self, reply: Reply) -> None:
        fields = {"race": self.feed.race, "cmd": reply.cmd, "id": reply.id}
        if reply.ok:
            _log.info("producer.command", **fields)
        else:
            _log.warning("producer.command_rejected", **fields, error=reply.error,
                         rejected=self.feed.rejected)  # fmt: skip
