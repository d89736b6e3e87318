"""The replay producer: publishes races on MQTT at their clocks' pace and obeys control commands.

A thin asyncio shell around ``simulator.feed.Feed`` (what goes out when) and
``simulator.outbox`` (batching, the window of publishes in flight, resend
after a reconnect). One scheduler serves every race: each race sends what it
has due at most once per ``tick_s``, on a phase of its own within the tick
(the races spread over it), with no task or wait per message: an
acknowledgement calls back into the race's outbox. Races share connections
(``races_per_connection``); each race of a shared connection keeps an idle
connection of its own for its last will. Settings: ``ProducerSettings`` (docs/OPERATIONS.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from broker.backoff import Backoff
from broker.bus import BrokerAddress, Bus, BusError, Message, Will, connect, default_client_id
from chequered import log
from chequered.contract import control, topics
from chequered.contract.control import ProducerState, Reply, Status
from chequered.contract.events import Event
from simulator.live.faults import Injector
from simulator.live.feed import Feed
from simulator.live.hostile import hostile
from simulator.live.outbox import Outbox, ProducerSettings

_log = log.get(__name__)

__all__ = ["ProducerSettings", "ReplaySpec", "run_producer"]

PHASES = 10
"""Moments within a tick that the races are spread over (race n goes at n mod 10)."""
STOP_DRAIN_S = 5.0
"""On a clean stop: how long the offline statuses may take to be acknowledged."""


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
    settings = settings or ProducerSettings()
    if settings.races_per_connection < 1:
        raise ValueError(f"races_per_connection must be 1 or more: {settings.races_per_connection}")
    stop = stop or asyncio.Event()
    now = time.time()
    races = [
        _Race(
            Feed.create(s.race, s.events, now=now, speed=s.speed, paused=s.paused),
            settings,
            on_status or _ignore,
            s.faults,
        )
        for s in replays
    ]
    scheduler = _Scheduler(settings)
    for n, race in enumerate(races):
        race.phase = (n % PHASES) * settings.tick_s / PHASES
    per = settings.races_per_connection

    def name(suffix: str) -> str:
        # Clean sessions: nothing ties a race to its id, so by default it is one
        # nobody can guess (and so cannot take over). Given a prefix, the id is stable.
        return f"{client_id}-{suffix}" if client_id else default_client_id(
            f"chequered-producer-{suffix}")  # fmt: skip

    async with asyncio.TaskGroup() as group:
        group.create_task(scheduler.run(stop))
        for n, first in enumerate(range(0, len(races), per)):
            line = _Line(races[first : first + per], scheduler, settings)
            for race in line.races:
                race.outbox.on_room = functools.partial(scheduler.poke, race)
            if len(line.races) == 1:
                group.create_task(line.run(url, name(line.races[0].feed.race), stop))
                continue
            group.create_task(line.run(url, name(f"line{n}"), stop))
            for race in line.races:
                group.create_task(_presence(race, scheduler, url, name(race.feed.race), stop))


def _ignore(status: Status) -> None:
    pass


async def _wait(event: asyncio.Event, seconds: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


@dataclass(eq=False)
class _Race:
    """One race's feed, outbox and commands; ``step`` sends what is due."""

    feed: Feed
    settings: ProducerSettings
    on_status: Callable[[Status], None]
    faults: Injector | None = None
    outbox: Outbox = field(init=False)
    bus: Bus | None = None
    """Its connection while there is one (through its hostile injector, if any)."""
    commands: deque[bytes] = field(default_factory=deque)
    last_state: ProducerState = "idle"
    next_status: float = 0.0
    phase: float = 0.0
    """Its moment within each tick (``_Scheduler.slot``)."""
    status_owed: bool = False
    """Its last will may have been published: say the live status again."""
    wake_at: float | None = None

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.feed.race, self.settings)

    def topic(self, leaf: str) -> str:
        return topics.topic(self.feed.race, leaf)

    def will(self) -> Will:
        return Will(
            self.topic(topics.STATUS), control.encode(self.feed.offline_status(time.time()))
        )

    def publish_status(
        self, bus: Bus, reply: Reply | None = None, *, offline: bool = False
    ) -> None:
        now, feed = time.time(), self.feed
        status = feed.offline_status(now) if offline else feed.status(now, reply)
        self.on_status(status)
        self.outbox.send(bus, self.topic(topics.STATUS), control.encode(status), retain=True)

    def connected(self, bus: Bus, now: float) -> None:
        """A new connection: the opening events (first time) or a resend, then the status."""
        self.bus = bus
        self.outbox.start(bus, self.feed.start(now))
        # What is due at once (a paused race's events at race time 0) goes before the
        # first status, so that the status counts it and a command's reply is not older.
        self.outbox.events(bus, self.feed.take(now, self.settings.max_batch_events))
        self.publish_status(bus)
        self.last_state, self.next_status = self.feed.state, now + self.settings.status_interval_s

    def command(self, message: Message) -> bool:
        """Queue a control message; False when it is refused unread (answered at once)."""
        refusal = self.refusal(message.payload, message.retain, len(self.commands))
        if refusal is None:
            self.commands.append(message.payload)
            return True
        reply = self.feed.reject(message.payload if message.retain else b"", refusal)
        self.log_reply(reply)
        if self.bus is not None:
            self.publish_status(self.bus, reply)
        return False

    def step(self, now: float) -> float | None:
        """Carry out waiting commands, send what is due; when to come back (None: when
        poked, by a command, an acknowledgement or a new connection)."""
        bus, feed, settings = self.bus, self.feed, self.settings
        if bus is None:
            return None
        while self.commands:
            reply, events = feed.handle(self.commands.popleft(), now)
            self.log_reply(reply)
            self.outbox.events(bus, events)
            self.publish_status(bus, reply)
            self.last_state = feed.state
        taken = 0
        if self.outbox.room():
            events = feed.take(now, settings.max_batch_events)
            taken = len(events)
            self.outbox.events(bus, events)
        running = feed.state == "running"
        if (
            self.status_owed
            or feed.state != self.last_state
            or (running and now >= self.next_status)
        ):
            self.publish_status(bus)
            self.status_owed = False
            self.last_state, self.next_status = feed.state, now + settings.status_interval_s
        if taken >= settings.max_batch_events:
            return now
        if not self.outbox.room():
            return None
        wake = feed.wake_at()
        if running:
            wake = self.next_status if wake is None else min(wake, self.next_status)
        return wake

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


class _Scheduler:
    """One timer for every race. Each race goes out at most once per ``tick_s``, on a
    phase of its own within the tick (``PHASES`` of them), so that the races' messages
    reach the broker and the consumers spread over the tick rather than as one burst;
    a poke (a command, an acknowledgement, a connection) steps a race at once."""

    def __init__(self, settings: ProducerSettings) -> None:
        self.tick_s = settings.tick_s
        self.timers: list[tuple[float, int, _Race]] = []
        self.ready: dict[_Race, None] = {}
        """Races to step at the next wake-up, in the order they were poked."""
        self.order = itertools.count()
        self.alarm: asyncio.Future[None] | None = None
        self.lost: dict[_Race, Callable[[BusError], None]] = {}
        """Per race, what to call when its connection refuses a publish."""

    def poke(self, race: _Race) -> None:
        self.ready[race] = None
        self.wake()

    def wake(self) -> None:
        if self.alarm is not None and not self.alarm.done():
            self.alarm.set_result(None)

    def slot(self, race: _Race, when: float) -> float:
        """The first moment at or after ``when`` on ``race``'s phase of the tick."""
        tick = self.tick_s
        if tick <= 0:
            return when
        return math.ceil((when - race.phase) / tick) * tick + race.phase

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        watcher = loop.create_task(stop.wait())
        watcher.add_done_callback(lambda _: self.wake())
        try:
            while not stop.is_set():
                self.step(time.time())
                if self.ready:
                    await asyncio.sleep(0)
                    continue
                self.alarm = loop.create_future()
                timer = None
                if self.timers:
                    timer = loop.call_later(max(0.0, self.timers[0][0] - time.time()), self.wake)
                await self.alarm
                if timer is not None:
                    timer.cancel()
        finally:
            watcher.cancel()

    def step(self, now: float) -> None:
        timers, ready = self.timers, self.ready
        while timers and timers[0][0] <= now:
            when, _, race = heapq.heappop(timers)
            if race.wake_at == when:
                race.wake_at = None
                ready[race] = None
        if not ready:
            return
        due = list(ready)
        ready.clear()
        for race in due:
            try:
                wake = race.step(now)
            except BusError as error:
                lost = self.lost.get(race)
                if lost is not None:
                    lost(error)
                continue
            if wake is None:
                continue
            if wake <= now:
                # More is due at once (a batch was full: a race as fast as possible, a
                # seek): its next batch goes on the next turn of the loop, not the tick.
                ready[race] = None
                continue
            wake = self.slot(race, wake)
            if wake != race.wake_at:
                race.wake_at = wake
                heapq.heappush(timers, (wake, next(self.order), race))


@dataclass(eq=False)
class _Line:
    """One connection and the races it carries."""

    races: list[_Race]
    scheduler: _Scheduler
    settings: ProducerSettings
    lost: asyncio.Future[None] | None = None

    @property
    def label(self) -> str:
        names = [race.feed.race for race in self.races]
        return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more"

    async def run(self, url: str | BrokerAddress, client_id: str, stop: asyncio.Event) -> None:
        """Serve the races until ``stop``, reconnecting with backoff and jitter on a lost broker."""
        settings = self.settings
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        for race in self.races:
            self.scheduler.lost[race] = self.fail
        # A connection of one race carries its last will; shared ones have a will each
        # on a connection of their own (``_presence``).
        will = self.races[0].will if len(self.races) == 1 else None
        inflight = max(100, min(len(self.races) * settings.window, 65535))
        while not stop.is_set():
            error: BaseException | None = None
            try:
                async with (
                    connect(url, client_id=client_id, will=will() if will else None,
                            keepalive=settings.keepalive_s, max_inflight=inflight) as bus,
                    contextlib.AsyncExitStack() as stack,
                ):  # fmt: skip
                    backoff.reset()
                    await self.serve(bus, stack, stop)
            except* BusError as group:
                error = group.exceptions[0]
            finally:
                for race in self.races:
                    race.bus = None
            if error is None:
                break
            delay = backoff.next()
            _log.warning(
                "producer.disconnected", race=self.label, error=str(error),
                retry_in_s=round(delay, 3), acked_seq=self.races[0].outbox.acked_seq,
            )  # fmt: skip
            await _wait(stop, delay)
        for race in self.races:
            _log.info("producer.stopped", race=race.feed.race, **race.outbox.counts)

    def fail(self, error: BusError) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_exception(error)

    async def serve(self, bus: Bus, stack: contextlib.AsyncExitStack, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        self.lost = lost = loop.create_future()
        for race in self.races:
            await bus.subscribe(race.topic(topics.CONTROL), qos=1)
        now = time.time()
        for race in self.races:
            race_bus = await stack.enter_async_context(hostile(bus, race.faults))
            race.connected(race_bus, now)
            self.scheduler.poke(race)
        reader = loop.create_task(self.read_commands(bus))
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait((reader, stopping, lost), return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            stopping.cancel()
        if lost.done():
            lost.result()  # raises the connection's error
        if reader.done() and not reader.cancelled() and (raised := reader.exception()) is not None:
            raise raised
        await self.say_offline()

    async def read_commands(self, bus: Bus) -> None:
        by_topic = {race.topic(topics.CONTROL): race for race in self.races}
        async for message in bus.messages():
            race = by_topic.get(message.topic)
            if race is None or not message.payload:
                continue  # an empty message clears a retained command: nothing to do
            if race.command(message):
                self.scheduler.poke(race)

    async def say_offline(self) -> None:
        """A clean stop: every race says it is offline, acknowledged before the line closes."""
        loop = asyncio.get_running_loop()
        drained = loop.create_future()

        def check() -> None:
            if not drained.done() and all(r.outbox.in_flight == 0 for r in self.races):
                drained.set_result(None)

        for race in self.races:
            bus, race.bus = race.bus, None
            if bus is not None:
                race.publish_status(bus, offline=True)
            race.outbox.on_idle = check
        check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained, STOP_DRAIN_S)


async def _presence(
    race: _Race,
    scheduler: _Scheduler,
    url: str | BrokerAddress,
    client_id: str,
    stop: asyncio.Event,
) -> None:
    """An idle connection that holds one race's last will, for as long as the producer runs."""
    settings = race.settings
    backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
    first = True
    while not stop.is_set():
        error: BaseException | None = None
        try:
            async with connect(
                url, client_id=client_id, will=race.will(), keepalive=settings.keepalive_s
            ) as bus:
                backoff.reset()
                if not first:  # the broker may have published the will meanwhile
                    race.status_owed = True
                    scheduler.poke(race)
                first = False
                await _until_lost(bus, stop)
        except* BusError as group:
            error = group.exceptions[0]
        if error is None:
            break
        delay = backoff.next()
        _log.warning("producer.presence_lost", race=race.feed.race, error=str(error),
                     retry_in_s=round(delay, 3))  # fmt: skip
        await _wait(stop, delay)


async def _until_lost(bus: Bus, stop: asyncio.Event) -> None:
    """Return at ``stop``; raise when the connection is lost first."""

    async def read() -> None:
        async for _ in bus.messages():
            pass

    loop = asyncio.get_running_loop()
    reader, stopping = loop.create_task(read()), loop.create_task(stop.wait())
    try:
        await asyncio.wait((reader, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        reader.cancel()
        stopping.cancel()
    if reader.done() and not reader.cancelled() and (raised := reader.exception()) is not None:
        raise raised
