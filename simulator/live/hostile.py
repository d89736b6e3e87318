"""The hostile feed's shell: a ``Bus`` that passes one race's publishes through its
``faults.Injector`` and publishes what comes out, in order.

Events messages go through the injector; status messages carry its counts
(``Status.injected``) and wait behind the events like everything else, so that
a stall silences the whole race. One sender task keeps the wire's order: it
starts each publish and lets it write before starting the next, without
waiting for the acknowledgements, so the producer's window still bounds what
is in flight. Part of the producer's asyncio shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import msgspec

from broker.bus import Bus, Message
from chequered import log
from chequered.contract import control, topics
from simulator.live.faults import Injector, Outgoing

_log = log.get(__name__)


@dataclass(slots=True)
class _Item:
    outgoing: list[Outgoing]
    done: asyncio.Future[None]
    qos: int
    retain: bool


class HostileBus:
    """A ``Bus`` whose publishes for its race pass through an injector."""

    def __init__(self, inner: Bus, injector: Injector) -> None:
        self.inner = inner
        self.injector = injector
        race = injector.race
        self._events = topics.topic(race, topics.EVENTS)
        self._status = topics.topic(race, topics.STATUS)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._sender: asyncio.Task[None] | None = None
        self._publishes: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        """Set by the producer's offline status (a clean stop): a hold ends at once."""

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        if topic == self._events:
            outgoing = self.injector.message(payload, time.time())
        elif topic == self._status:
            outgoing = [Outgoing(topics.STATUS, self._with_counts(payload), original=True)]
            if b'"state":"offline"' in outgoing[0].payload:
                self._stopping.set()  # a stopping producer is not kept waiting by a stall
        else:
            await self.inner.publish(topic, payload, qos=qos, retain=retain)
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(outgoing, done, qos, retain))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send())
        await done

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        done: Callable[[], object],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        """``publish`` in a task of its own (tasks start in the order they are made, so the
        order holds); ``done`` once it completes. A hostile feed is a test of the
        consumers, not of the producer's speed."""  # fmt: skip
        task = asyncio.ensure_future(self.publish(topic, payload, qos=qos, retain=retain))
        self._publishes.add(task)

        def finished(task: asyncio.Task[None]) -> None:
            self._forget(task)
            if not task.cancelled() and task.exception() is None:
                done()

        task.add_done_callback(finished)

    async def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        await self.inner.subscribe(pattern, qos=qos)

    def messages(self) -> AsyncIterator[Message]:
        return self.inner.messages()

    async def close(self) -> None:
        """Publish what the injector still holds back, then stop the sender."""
        held = self.injector.flush(time.time())
        if held and self._sender is not None:
            done = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(_Item(held, done, 1, False))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(done, 10.0)
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender

    def _with_counts(self, payload: bytes) -> bytes:
        try:
            status = control.decode_status(payload)
        except (ValueError, msgspec.DecodeError):
            return payload
        counts = {k: v for k, v in self.injector.counts.items() if v}
        return control.encode(msgspec.structs.replace(status, injected=counts))

    async def _send(self) -> None:
        race = self.injector.race
        while True:
            item = await self._queue.get()
            original: asyncio.Task[None] | None = None
            for out in item.outgoing:
                if out.pause_s and not self._stopping.is_set():
                    _log.info("hostile.hold", race=race, seconds=out.pause_s)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), out.pause_s)
                if not out.payload:
                    continue  # the original was dropped or is held back: nothing to publish
                retain = item.retain if out.original else False
                topic = topics.topic(race, out.leaf)
                publish = self.inner.publish(topic, out.payload, qos=item.qos, retain=retain)
                task = asyncio.create_task(publish)
                self._publishes.add(task)
                task.add_done_callback(self._forget)
                if out.original:
                    original = task
                # The task writes its message before its first wait: one turn of the loop
                # puts it on the wire ahead of the next one.
                await asyncio.sleep(0)
            _settle(item.done, original)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._publishes.discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            # The producer sees a lost connection through its own message's publish.
            _log.debug("hostile.publish_failed", race=self.injector.race, error=str(error))


def _settle(done: asyncio.Future[None], publish: asyncio.Task[None] | None) -> None:
    """Resolve the producer's publish as the original message's own publish ends."""
    if publish is None:
        if not done.done():
            done.set_result(None)
        return

    def copy(task: asyncio.Task[None]) -> None:
        if done.done():
            return
        if task.cancelled():
            done.cancel()
        elif (error := task.exception()) is not None:
            done.set_exception(error)
        else:
            done.set_result(None)

    publish.add_done_callback(copy)


@contextlib.asynccontextmanager
async def hostile(bus: Bus, injector: Injector | None) -> AsyncIterator[Bus]:
    """``bus`` itself without an injector; else a ``HostileBus`` over it, closed on exit."""
    if injector is None:
        yield bus
        return
    wrapped = HostileBus(bus, injector)
    try:
        yield wrapped
    finally:
        await wrapped.close()
