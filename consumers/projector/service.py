"""The projector's asyncio shell: the broker, checkpoint files and metrics around its core.

``consumers.projector.core`` decides (fold, what to checkpoint, acknowledge and
publish, when); this shell carries it out: a persistent MQTT session at QoS 1
whose acknowledgements follow the checkpoint that holds the events, a retained
snapshot and a delta per race, dead letters, resend requests, Prometheus
metrics and ``/healthz``. Why it is safe to kill at any moment: STANDINGS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from broker.backoff import Backoff
from broker.bus import BrokerAddress, Bus, BusError, Message, connect
from chequered import log
from chequered.contract import topics
from chequered.contract.partition import Partition
from consumers.metrics import Registry, start_metrics_server
from consumers.projector import checkpoints
from consumers.projector.core import (
    Acknowledge,
    Action,
    ProjectorCore,
    ProjectorSettings,
    Publish,
    WriteCheckpoint,
)
from consumers.standings.fold import Standings

__all__ = ["Projector", "ProjectorMetrics", "ProjectorSettings", "run_projector"]

_log = log.get(__name__)

EVENTS_PATTERN: Final = topics.all_races(topics.EVENTS)
META_PATTERN: Final = topics.all_races(topics.META)
HEALTH_RACES_LISTED: Final = 100
"""Races whose last seq ``/healthz`` lists (first by name); its ``races`` counts them all."""


def _metrics() -> tuple[Registry, ProjectorMetrics]:
    registry = Registry("chequered_projector")
    return registry, ProjectorMetrics(registry)


class ProjectorMetrics:
    """The projector's counters (Prometheus names: ``chequered_projector_<name>_total``)."""

    def __init__(self, registry: Registry) -> None:
        c = registry.counter
        self.messages_in = c("messages_in", "MQTT messages received on events topics")
        self.events_in = c("events_in", "Events decoded from those messages")
        self.applied = c("applied", "Events folded into the standings")
        self.duplicates = c("duplicates", "Events ignored: seq already applied")
        self.gaps = c("gaps", "Seqs found missing from a race's stream")
        self.resets = c("resets", "Reset events folded")
        self.metas_in = c("metas_in", "MQTT messages received on meta topics")
        self.joins = c("joins", "Races joined midway, opened from their meta")
        self.held = c("held", "Events held until the meta of their race arrived")
        self.dead_letters = c("dead_letters", "Messages or events sent to a dead-letter topic")
        self.resends = c("resends", "Requests to a producer to send a race again after a gap")
        self.reconnects = c("reconnects", "Connections to the broker lost or refused")
        self.snapshots_out = c("snapshots_out", "Retained snapshots published")
        self.deltas_out = c("deltas_out", "Deltas published")
        self.checkpoints = c("checkpoints", "Race checkpoints written")
        self.checkpoint_errors = c("checkpoint_errors", "Race checkpoints that failed to write")
        self.races = registry.gauge("races", "Races followed")
        self.connected = registry.gauge(
            "connected", "1 while connected to the broker and subscribed to the events"
        )
        self.lag = registry.gauge(
            "lag_seconds", "Seconds from the emission of the newest event folded to its folding"
        )


class _Stop:
    """Inbox marker: stop was asked for."""


class _Tick:
    """Inbox marker: a held-back snapshot is due."""


class _Flush:
    """Inbox marker: the messages folded so far wait no longer."""


_STOP: Final = _Stop()
_TICK: Final = _Tick()
_FLUSH: Final = _Flush()
_Item = Message | _Stop | _Tick | _Flush | BaseException
"""What the serve loop's inbox holds."""


def _new_command_id() -> str:
    return f"projector-{uuid.uuid4().hex[:16]}"


class Projector:
    """The core with its checkpoint files and its log; ``serve`` adds the broker."""

    def __init__(
        self,
        *,
        checkpoint_dir: Path | None = None,
        settings: ProjectorSettings | None = None,
        metrics: ProjectorMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        partition: Partition | None = None,
    ) -> None:
        self.settings = settings or ProjectorSettings()
        self.metrics = metrics or _metrics()[1]
        self.checkpoint_dir = checkpoint_dir
        races = checkpoints.load_all(checkpoint_dir) if checkpoint_dir is not None else {}
        self.files = (
            checkpoints.Files(checkpoint_dir, fsync=self.settings.checkpoint_fsync)
            if checkpoint_dir is not None
            else None
        )
        self.core = ProjectorCore(
            races, settings=self.settings, metrics=self.metrics, clock=clock, wall=time.time,
            new_id=_new_command_id, partition=partition,
        )  # fmt: skip
        self._log_notes()

    @property
    def standings(self) -> Standings:
        return self.core.standings

    @property
    def held(self) -> dict[str, object]:
        """Races waiting for their meta, with the events held for each."""
        return dict(self.core.held)

    @property
    def dirty(self) -> set[str]:
        """Races folded since their board was last published."""
        return self.core.boards.dirty

    def expire_held(self, *, everything: bool = False) -> bool:
        """Release the races whose meta did not come in time (all with ``everything``)."""
        released = self.core.expire(stopping=everything)
        self._log_notes()
        return released

    @property
    def outbox(self) -> list[tuple[str, bytes]]:
        """Dead letters and resend requests waiting for the next flush."""
        return [(p.topic, p.payload) for p in self.core.outbox]

    def _log_notes(self) -> None:
        for note in self.core.take_notes():
            getattr(_log, note.level)(note.event, **note.fields)

    def handle(self, message: Message) -> None:
        """Fold one MQTT message; its acknowledgement and any dead letters wait for a flush."""
        self.core.handle(message.topic, message.payload, message.ack)
        self._log_notes()

    def publications(self, *, everything: bool = False) -> list[tuple[str, bytes, bool]]:
        """(topic, payload, retain) of the boards changed since the last call (all races'
        snapshots with ``everything``)."""
        out = self.core.boards.publications(
            self.core.standings.races, self.core.clock(), everything=everything
        )
        return [(p.topic, p.payload, p.retain) for p in out]

    def next_due(self) -> float | None:
        return self.core.next_deadline()

    def save_checkpoints(self) -> None:
        """Write the checkpoint of every race changed since its last one."""
        self._write(self.core.checkpoints_due())

    def _write(self, actions: Sequence[WriteCheckpoint]) -> None:
        if self.files is None:
            self.core.forget_unsaved()
            return
        for action in actions:
            try:
                self.files.save(action.state, action.cars)
            except OSError as exc:
                # Not acknowledging is what keeps the events safe: stop here and
                # let the broker redeliver them to the next attempt.
                self.metrics.checkpoint_errors.inc()
                _log.error("checkpoint_failed", race=action.race, error=str(exc))
                raise
            self.metrics.checkpoints.inc()
            self.core.checkpoint_written(action)

    async def _perform(self, actions: list[Action], sender: _Sender) -> None:
        """The core's actions, in their order: checkpoints, acknowledgements, publications."""
        self._write([a for a in actions if isinstance(a, WriteCheckpoint)])
        for action in actions:
            if isinstance(action, Acknowledge):
                for ack in action.tokens:
                    ack()  # type: ignore[operator]  # Message.ack, handed to the core
        await sender.send([a for a in actions if isinstance(a, Publish)])
        self._log_notes()

    async def subscribe_events(self, bus: Bus, *, again: bool = False) -> None:
        """Subscribe to the events topics wanted (``again``: every one, after a reconnect)."""
        core = self.core
        wanted = sorted(core.events_topics) if again else core.events_wanted
        core.events_wanted = []
        if wanted:
            await asyncio.gather(*(bus.subscribe(topic, qos=1) for topic in wanted))
            _log.info("projector_subscribed_races", topics=len(wanted))

    async def subscribe(self, bus: Bus, client_id: str) -> None:
        """Subscribe on a new connection; ``connected`` from then on."""
        partition = self.core.partition
        pattern = EVENTS_PATTERN if partition is None else None
        # Meta first: its retained messages then come before the events that arrive on
        # the new subscription, and a race already running is joined without waiting.
        # Both at once (the client sends them in call order): one round trip, not two.
        patterns = [META_PATTERN] if pattern is None else [META_PATTERN, pattern]
        await asyncio.gather(*(bus.subscribe(p, qos=1) for p in patterns))
        await self.subscribe_events(bus, again=True)
        self.metrics.connected.set(1)
        _log.info(
            "projector_subscribed",
            pattern=pattern or "own races",
            partition=partition.label() if partition else None,
            client_id=client_id,
        )

    async def publish_all(self, bus: Bus) -> None:
        """A retained snapshot of every race, on every (re)connection (checkpoints first)."""
        sender = _Sender(bus, self.settings.publish_inflight)
        try:
            await self._perform(self.core.everything(), sender)
            # Nothing reads the connection yet to see it lost: the wait is bounded instead,
            # as a client's publish is (10 s).
            try:
                await asyncio.wait_for(sender.drain(), PUBLISH_TIMEOUT_S)
            except TimeoutError:
                raise BusError(
                    f"snapshots not acknowledged within {PUBLISH_TIMEOUT_S:g} s"
                ) from None
        finally:
            sender.cancel()

    async def serve(self, bus: Bus, stop: asyncio.Event) -> None:
        """Fold and publish until ``stop`` is set; raises when the connection is lost."""
        inbox: asyncio.Queue[_Item] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in bus.messages():
                    inbox.put_nowait(message)
            except Exception as exc:
                sender.fail(exc)
                inbox.put_nowait(exc)
            else:
                closed = ConnectionError("the broker closed the message stream")
                sender.fail(closed)
                inbox.put_nowait(closed)

        def on_stop(_: object) -> None:
            inbox.put_nowait(_STOP)

        sender = _Sender(bus, self.settings.publish_inflight)
        pump_task = asyncio.create_task(pump(), name="projector-pump")
        stop_task = asyncio.create_task(stop.wait(), name="projector-stop")
        stop_task.add_done_callback(on_stop)
        turns = _Turns(self, inbox, sender)
        try:
            while not await turns.one(await inbox.get(), bus):
                pass
        finally:
            turns.cancel()
            stop_task.remove_done_callback(on_stop)
            stop_task.cancel()
            pump_task.cancel()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump_task

    def close(self) -> None:
        """Save what was folded; safe while being cancelled (no awaits)."""
        # A failure is already logged; the broker redelivers whatever was not acknowledged.
        with contextlib.suppress(OSError):
            self.save_checkpoints()
        if self.files is not None:
            self.files.close()


class _Turns:
    """One item of the inbox at a time: fold, flush when the window is full or its
    delay has passed, and wake up for what the core says is due next."""

    def __init__(self, projector: Projector, inbox: asyncio.Queue[_Item], sender: _Sender) -> None:
        self.projector = projector
        self.core = projector.core
        self.inbox = inbox
        self.sender = sender
        self.loop = asyncio.get_running_loop()
        self.window = projector.settings.ack_window
        self.delay = projector.settings.flush_delay_s
        self.idle = projector.settings.flush_idle_s
        self.folded = 0
        self.first_at = self.last_at = 0.0
        """Loop times of the first and the latest message folded since the last flush."""
        self.timer: asyncio.TimerHandle | None = None
        self.flush_timer: asyncio.TimerHandle | None = None

    async def one(self, item: _Item, bus: Bus) -> bool:
        """Handle one inbox item; True once stopped."""
        flush = stopping = False
        if isinstance(item, Message):
            self.projector.handle(item)
            if self.core.events_wanted:
                await self.projector.subscribe_events(bus)
            self.folded += 1
            self.last_at = now = self.loop.time()
            if self.folded == 1:
                self.first_at = now
            if self.folded >= self.window or self.delay <= 0:
                flush = True
            elif self.flush_timer is None:
                # Wait a little for the rest of a burst still on its way, so that a
                # flush covers it all: until the input goes quiet, or the delay ends.
                self.flush_timer = self.loop.call_at(
                    self._flush_at(), self.inbox.put_nowait, _FLUSH
                )
        elif isinstance(item, _Flush):
            self.flush_timer = None
            when = self._flush_at()
            if self.folded and self.loop.time() < when:
                self.flush_timer = self.loop.call_at(when, self.inbox.put_nowait, _FLUSH)
            else:
                flush = True
        elif isinstance(item, _Stop):
            flush = stopping = True
        elif isinstance(item, BaseException):
            raise item
        released = not isinstance(item, Message) and self.core.expire(stopping=stopping)
        if (flush and (self.folded or stopping)) or released:
            if self.flush_timer is not None:
                self.flush_timer.cancel()
                self.flush_timer = None
            self.folded = 0
            await self.projector._perform(self.core.flush(), self.sender)
        if not isinstance(item, Message):
            # Stopping: the deltas held by their window go now, after the last flush.
            await self.sender.send(self.core.due(stopping=stopping))
        if stopping:
            await self.sender.drain()
            return True
        self._wake_at(self.core.next_deadline())
        return False

    def _flush_at(self) -> float:
        """When what is folded must be flushed: once no message came for ``flush_idle_s``
        (a broker whose in-flight window is full sends nothing more until acknowledged),
        and at the latest ``flush_delay_s`` after the first of them."""
        return min(self.first_at + self.delay, self.last_at + self.idle)

    def _wake_at(self, due: float | None) -> None:
        if due is None or self.timer is not None:
            return

        def tick() -> None:
            self.timer = None
            self.inbox.put_nowait(_TICK)

        self.timer = self.loop.call_at(due, tick)

    def cancel(self) -> None:
        for handle in (self.timer, self.flush_timer):
            if handle is not None:
                handle.cancel()


PUBLISH_TIMEOUT_S = 10.0
"""Longest wait for the snapshots published on connecting to be acknowledged."""


class _Sender:
    """Publishes at each publication's QoS without a task or a wait per message, up to a bound.

    The bus writes packets in the order ``publish_nowait`` is called, so what
    is sent keeps its order; folding only waits when ``limit`` publications are
    still unacknowledged. A lost connection (``fail``) is raised by the next
    ``send`` or by a wait for room.
    """

    def __init__(self, bus: Bus, limit: int) -> None:
        self.bus = bus
        self.limit = max(1, limit)
        self.inflight = 0
        self.failed: BaseException | None = None
        self.room: asyncio.Future[None] | None = None

    async def send(self, out: Sequence[Publish]) -> None:
        for publish in out:
            while self.inflight >= self.limit:
                await self._wait()
            if self.failed is not None:
                raise self.failed
            self.inflight += 1
            try:
                self.bus.publish_nowait(
                    publish.topic, publish.payload, self._acked, qos=publish.qos,
                    retain=publish.retain,
                )  # fmt: skip
            except BaseException:
                self.inflight -= 1
                raise

    async def _wait(self) -> None:
        if self.failed is not None:
            raise self.failed
        self.room = asyncio.get_running_loop().create_future()
        await self.room

    def _acked(self) -> None:
        self.inflight -= 1
        if self.room is not None and not self.room.done():
            self.room.set_result(None)

    def fail(self, error: BaseException) -> None:
        """The connection is lost: whatever waits for room raises ``error``."""
        self.failed = error
        if self.room is not None and not self.room.done():
            self.room.set_exception(error)

    async def drain(self) -> None:
        while self.inflight:
            await self._wait()

    def cancel(self) -> None:
        if self.room is not None and not self.room.done():
            self.room.cancel()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _health(projector: Projector) -> tuple[bool, dict[str, object]]:
    """Ready when it holds its subscription: events published from then on reach it."""
    connected = projector.metrics.connected.value == 1
    races = projector.standings.races
    listed = sorted(races)[:HEALTH_RACES_LISTED]
    return connected, {
        "connected": connected,
        "races": len(races),
        "seq": {race: races[race].seq for race in listed},
    }


async def run_projector(
    url: BrokerAddress | str,
    *,
    checkpoint_dir: Path | None = None,
    client_id: str = "chequered-projector",
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    metrics_port: int | None = None,
    settings: ProjectorSettings | None = None,
    registry: Registry | None = None,
    partition: Partition | None = None,
) -> None:
    """Fold ``chequered/v2/+/events`` into standings until ``stop`` is set.

    With ``partition`` it is one of a set of projectors: it reads every race's meta
    but subscribes only to the events of the races the partition owns
    (``chequered.contract.partition``), each once its meta (or checkpoint) names it.

    ``ready`` is set once subscribed (on the first connection). The broker
    session is persistent (``client_id``, clean_session off); with
    ``checkpoint_dir`` a restart resumes from the checkpoints. ``metrics_port``
    serves Prometheus metrics on 127.0.0.1 (0: any free port), and ``/healthz``:
    200 once connected and subscribed, 503 before and while the broker is lost.
    ``url`` is a broker URL, or a ``BrokerAddress`` that carries TLS files.
    """
    settings = settings or ProjectorSettings()
    stop = stop or asyncio.Event()
    if registry is None:
        registry, metrics = _metrics()
    else:
        metrics = ProjectorMetrics(registry)
    projector = Projector(
        checkpoint_dir=checkpoint_dir, settings=settings, metrics=metrics, partition=partition
    )
    server = None
    if metrics_port is not None:
        server = await start_metrics_server(
            registry, port=metrics_port, health=lambda: _health(projector)
        )
    backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
    try:
        while not stop.is_set():
            try:
                async with connect(
                    url,
                    client_id=client_id,
                    clean_session=False,
                    manual_ack=True,
                    keepalive=settings.keepalive_s,
                ) as bus:
                    await projector.subscribe(bus, client_id)
                    await projector.publish_all(bus)
                    backoff.reset()
                    if ready is not None:
                        ready.set()
                    await projector.serve(bus, stop)
                    return
            except (BusError, OSError) as exc:
                # OSError: a checkpoint that could not be written (see save_checkpoints).
                metrics.connected.set(0)
                metrics.reconnects.inc()
                projector.core.connection_lost()
                wait = backoff.next()
                _log.warning("broker_lost", error=str(exc) or type(exc).__name__, retry_s=wait)
                await _sleep_or_stop(stop, wait)
    finally:
        metrics.connected.set(0)
        projector.close()
        if server is not None:
            server.close()
            await server.wait_closed()
