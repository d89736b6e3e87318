"""Replay control from the terminal screen: commands on MQTT, replies from the status.

One broker connection for the screen's lifetime, subscribed to the race's
status: a key press publishes a command with a fresh id, and the status that
answers it (``reply.id``) is reported back as one line. Commands wait for a
live (not ``offline``) status before they go out, as ``chequered control`` does:
they are not retained, so one published before the producer listens is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from broker.bus import BrokerAddress, Bus, BusError, connect
from chequered.contract import control, topics
from chequered.contract.control import Command, Status

log = structlog.get_logger("chequered.watch")

SPEEDS = (0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1000.0)
"""The speeds ``+`` and ``-`` step through (the producer takes 0.1 to 1000)."""


def step_speed(current: float | None, up: bool) -> float:
    """The next speed up or down from ``current`` (``None``, as fast as possible, is top)."""
    if current is None:
        return SPEEDS[-1] if up else SPEEDS[-2]
    if up:
        return next((s for s in SPEEDS if s > current + 1e-9), SPEEDS[-1])
    return next((s for s in reversed(SPEEDS) if s < current - 1e-9), SPEEDS[0])


def describe(command: Command) -> str:
    if isinstance(command, control.SetSpeed):
        return "speed max" if command.speed is None else f"speed {command.speed:g}x"
    if isinstance(command, control.Seek):
        return f"seek to lap {command.lap}" if command.lap else f"seek to {command.t_ms} ms"
    return "pause" if isinstance(command, control.Pause) else "resume"


@dataclass
class Controller:
    """Sends the screen's commands for one race and reports each reply through ``say``."""

    address: BrokerAddress | str
    race: str
    say: Callable[[str], None]
    reply_timeout_s: float = 5.0
    """How long a command waits for the producer's answer before the screen says so."""
    reconnect_s: float = 2.0
    """Wait before connecting to the broker again after losing it."""
    _queue: asyncio.Queue[Command] = field(default_factory=asyncio.Queue)
    _pending: dict[str, tuple[Command, asyncio.TimerHandle]] = field(default_factory=dict)
    _live: asyncio.Event = field(default_factory=asyncio.Event)

    def send(self, command: Command) -> None:
        """Queue ``command``; it goes out once the producer is known to listen."""
        cid = uuid.uuid4().hex[:12]
        command = _with_id(command, cid)
        timer = asyncio.get_running_loop().call_later(self.reply_timeout_s, self._timed_out, cid)
        self._pending[cid] = (command, timer)
        self._queue.put_nowait(command)
        if not self._live.is_set():
            self.say(f"{describe(command)}: waiting for the producer of {self.race}…")

    def _timed_out(self, cid: str) -> None:
        pending = self._pending.pop(cid, None)
        if pending is not None:
            self.say(
                f"{describe(pending[0])}: no reply within {self.reply_timeout_s:g} s;"
                f" is a producer replaying {self.race}?"
            )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                cid = f"chequered-watch-{uuid.uuid4().hex[:12]}"
                async with connect(self.address, client_id=cid) as bus:
                    await bus.subscribe(topics.topic(self.race, topics.STATUS), qos=1)
                    await _until_first_ends(self._write(bus), self._read(bus), stop.wait())
            except (OSError, BusError) as exc:
                self._live.clear()
                self.say(f"broker: {exc}; control keys wait for it")
                log.info("watch.broker_lost", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.reconnect_s)

    async def _read(self, bus: Bus) -> None:
        async for message in bus.messages():
            try:
                status = control.decode_status(message.payload)
            except ValueError:
                continue
            self._on_status(status)

    def _on_status(self, status: Status) -> None:
        if status.state == "offline":
            self._live.clear()
        else:
            self._live.set()
        reply = status.reply
        if reply is None or reply.id is None:
            return
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            return
        command, timer = pending
        timer.cancel()
        if reply.ok:
            self.say(f"{describe(command)}: ok")
        else:
            self.say(f"{describe(command)}: refused: {reply.error}")

    async def _write(self, bus: Bus) -> None:
        while True:
            command = await self._queue.get()
            await self._live.wait()
            await bus.publish(
                topics.topic(self.race, topics.CONTROL), control.encode(command), qos=1
            )


def _with_id(command: Command, cid: str) -> Command:
    return msgspec.structs.replace(command, id=cid)


async def _until_first_ends(*work: Coroutine[Any, Any, object]) -> None:
    """Run ``work`` until one ends; cancel the rest; raise what that one raised."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()
