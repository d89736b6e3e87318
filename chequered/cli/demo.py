"""``chequered demo``: a broker, the producer, the projector and the gateway in one process.

With no broker given it starts a private Mosquitto on a free loopback port,
or, where Mosquitto is not installed, uses the in-process bus. It prints the
widget's URL and a progress line (race clock, leader's lap, speed) until the
race ends and the standings have caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO, TypeVar

from broker import mosquitto
from broker.bus import BrokerAddress, Bus, connect, redacted
from chequered.contract import control, topics
from chequered.contract.board import Snapshot, apply_delta, decode_delta, decode_snapshot
from chequered.contract.control import Status
from chequered.contract.events import Event as RaceEvent
from chequered.contract.events import Lap, PayloadError, Reset, decode, unbatch
from simulator.live.producer import ReplaySpec, run_producer

T = TypeVar("T")

MEMORY_URL = "memory://demo"
BAR_WIDTH = 24
REDRAW_S = 0.1
"""Least time between two redraws of the progress line on a terminal."""
CATCH_UP_TIMEOUT_S = 30.0
"""How long the demo waits, once the race has ended, for the standings to show the last event."""


@dataclass
class Progress:
    """What the progress line shows, folded from the race's status, events and standings."""

    status: Status | None = None
    leader_lap: int = 0
    board: Snapshot | None = None
    """The standings as the projector publishes them: retained snapshot plus deltas."""
    lines_printed: int = 0
    last_line: str = ""
    spoilers: bool = True
    """False: the line leaves out the race's end (the time of its last event, which tells a
    race stopped early) and the bar measured against it."""

    def on_message(self, leaf: str, payload: bytes) -> None:
        if leaf == topics.STATUS:
            self.status = control.decode_status(payload)
        elif leaf == topics.EVENTS:
            for event in unbatch(decode(payload)):
                if isinstance(event, Reset):
                    self.leader_lap = 0
                elif isinstance(event, Lap):
                    self.leader_lap = max(self.leader_lap, event.lap)
        elif leaf == topics.STANDINGS:
            snapshot = decode_snapshot(payload)
            if self.board is None or snapshot.seq >= self.board.seq:
                self.board = snapshot
        elif leaf == topics.STANDINGS_DELTA:
            delta = decode_delta(payload)
            if self.board is not None and delta.prev_seq == self.board.seq:
                self.board = apply_delta(self.board, delta)

    @property
    def standings_seq(self) -> int:
        return self.board.seq if self.board is not None else 0

    @property
    def winner(self) -> str | None:
        if self.board is None or not self.board.cars:
            return None
        car = self.board.cars[0]
        return f"#{car.car} {car.team} ({car.cls}), {car.laps} laps"

    @property
    def ended(self) -> bool:
        return self.status is not None and self.status.state == "finished"

    @property
    def caught_up(self) -> bool:
        last = self.status.last_seq if self.status else None
        return self.ended and last is not None and self.standings_seq >= last

    def line(self) -> str:
        status = self.status
        if status is None:
            return "waiting for the producer"
        end = status.end_ms or 1
        done = min(1.0, status.t_ms / end)
        bar = "#" * round(done * BAR_WIDTH)
        speed = "max" if status.speed is None else f"{status.speed:g}x"
        if not self.spoilers:
            return f"{_clock(status.t_ms)}  lap {self.leader_lap}  {speed}  {status.state}"
        return (
            f"[{bar:<{BAR_WIDTH}}] {_clock(status.t_ms)} / {_clock(end)}"
            f"  lap {self.leader_lap}  {speed}  {status.state}"
        )


def _clock(t_ms: float) -> str:
    seconds = int(t_ms // 1000)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class Demo:
    race: str
    events: list[RaceEvent]
    speed: float | None
    address: BrokerAddress | None = None
    """A broker to use; None for a private one (or the in-process bus)."""
    url: str | None = None
    """The broker URL as given (with credentials) for the consumers."""
    host: str = "127.0.0.1"
    port: int = 0
    exit_at_end: bool = False
    spoilers: bool = True
    """False (``--no-spoilers``): the widget's URL asks for spoiler-safe mode, and nothing
    printed tells the race's length as run, its result or its winner."""
    out: TextIO = field(default=sys.stdout)
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        self.progress.spoilers = self.spoilers

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    async def run(self, stop: asyncio.Event) -> int:
        broker: mosquitto.Mosquitto | None = None
        if self.address is not None:
            url = self.url or self.address.url()
            self.say(f"broker: {self.address.url()}")
        elif mosquitto.binary() is not None:
            broker = mosquitto.Mosquitto().start()
            url = broker.url
            self.say(f"broker: private Mosquitto on 127.0.0.1:{broker.port}")
        else:
            url = MEMORY_URL
            self.say(f"broker: Mosquitto is not installed; using the in-process bus ({url})")
        try:
            return await self._run(url, self.address or url, stop)
        finally:
            if broker is not None:
                broker.stop()

    async def _run(self, url: str, producer_url: BrokerAddress | str, stop: asyncio.Event) -> int:
        from consumers.gateway.server import run_gateway
        from consumers.projector.service import run_projector

        tag = uuid.uuid4().hex[:8]
        halt = asyncio.Event()
        projector_ready = asyncio.Event()
        gateway_ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        result = 0
        async with asyncio.TaskGroup() as group:
            group.create_task(run_projector(
                url, client_id=f"chequered-demo-projector-{tag}", stop=halt, ready=projector_ready
            ))  # fmt: skip
            group.create_task(
                run_gateway(url, host=self.host, port=self.port, stop=halt, ready=gateway_ready)
            )
            ready = await _unless_stopped(_both(gateway_ready, projector_ready), stop)
            if ready is not None:
                safe = "" if self.spoilers else "&spoilers=off"
                self.say(f"widget: http://{self.host}:{ready}/?race={self.race}{safe}")
                if not url.startswith("memory:"):
                    # The terminal screen needs the broker for its replay keys.
                    self.say(
                        f"terminal: chequered watch {self.race} --gateway"
                        f" ws://{self.host}:{ready}/ws --broker {redacted(url)}"
                        + ("" if self.spoilers else " --no-spoilers")
                    )
                async with connect(url, client_id=f"chequered-demo-watch-{tag}") as bus:
                    for leaf in (topics.STATUS, topics.EVENTS, topics.STANDINGS,
                                 topics.STANDINGS_DELTA):  # fmt: skip
                        await bus.subscribe(topics.topic(self.race, leaf), qos=1)
                    spec = ReplaySpec(self.race, self.events, speed=self.speed)
                    group.create_task(run_producer(
                        producer_url, [spec], stop=halt, client_id=f"chequered-demo-{tag}"
                    ))  # fmt: skip
                    result = await self._watch(bus, stop)
            halt.set()
        return result

    async def _watch(self, bus: Bus, stop: asyncio.Event) -> int:
        """Show progress until the race ends and the standings have caught up."""
        progress = self.progress
        if await _unless_stopped(self._follow(bus, lambda: progress.ended), stop) is None:
            return 0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self._follow(bus, lambda: progress.caught_up), CATCH_UP_TIMEOUT_S
            )
        self._draw(final=True)
        if not progress.caught_up:
            last = progress.status.last_seq if progress.status else None
            self.say(
                f"race finished; the standings stopped at seq {progress.standings_seq} of {last}"
            )
            return 1
        if self.spoilers:
            self.say(f"race finished; winner: {progress.winner or 'unknown'}")
        else:
            self.say("race finished (result not shown: --no-spoilers)")
        if not self.exit_at_end:
            self.say("serving until Ctrl-C")
            await stop.wait()
        return 0

    async def _follow(self, bus: Bus, until: Callable[[], bool]) -> bool:
        progress = self.progress
        loop = asyncio.get_running_loop()
        last_draw = 0.0
        if until():
            return True
        async for message in bus.messages():
            try:
                progress.on_message(topics.leaf_of(message.topic) or "", message.payload)
            except (PayloadError, ValueError):
                continue  # the projector's dead letters say more; the progress line skips it
            if loop.time() - last_draw >= REDRAW_S:
                self._draw()
                last_draw = loop.time()
            if until():
                return True
        return False

    def _draw(self, *, final: bool = False) -> None:
        progress = self.progress
        if self.out.isatty():
            end = "\n" if final else ""
            print(f"\r{progress.line()}\x1b[K", end=end, file=self.out, flush=True)
            return
        # Not a terminal: one line per tenth of the race, and the last one.
        status = progress.status
        if status is None:
            return
        tenth = int(10 * status.t_ms / (status.end_ms or 1))
        line = progress.line()
        if (final or tenth >= progress.lines_printed) and line != progress.last_line:
            progress.lines_printed = tenth + 1
            progress.last_line = line
            self.say(line)


async def _both(port: asyncio.Future[int], projector: asyncio.Event) -> int:
    await projector.wait()
    return await port


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T | None:
    """The result of ``work``, or None if ``stop`` is set first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    return None
