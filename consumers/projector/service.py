"""The projector: folds every race's events from MQTT into standings and publishes them.

A thin asyncio shell around ``consumers.standings``: a persistent MQTT session
at QoS 1 whose acknowledgements follow the checkpoint that holds the events,
a retained snapshot and a delta per race, and dead letters for whatever
cannot be folded. A race already running is joined from its retained meta.
Why it is safe to kill at any moment: STANDINGS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from broker.backoff import Backoff
from broker.bus import BrokerAddress, Bus, BusError, Message, connect
from chequered import log
from chequered.contract import board, control, topics
from chequered.contract.control import Resend
from chequered.contract.events import Clock, Event, Flag, Reset, SessionOpened
from chequered.contract.partition import Partition
from consumers.metrics import Registry, start_metrics_server
from consumers.projector import checkpoints, intake
from consumers.standings.fold import (
    APPLIED,
    DUPLICATE,
    GAP,
    JOINED,
    RESET,
    Board,
    RaceState,
    Rejected,
    Standings,
    delta,
)

_log = log.get(__name__)

EVENTS_PATTERN: Final = topics.all_races(topics.EVENTS)
META_PATTERN: Final = topics.all_races(topics.META)
_META_SUFFIX: Final = "/" + topics.META
HEALTH_RACES_LISTED: Final = 100
"""Races whose last seq ``/healthz`` lists (first by name); its ``races`` counts them all."""


@dataclass(frozen=True, slots=True)
class ProjectorSettings:
    """Every limit of the projector, with its default."""

    ack_window: int = 16
    """Messages folded before a flush (checkpoint, publish, acknowledge). Keep it under
    the broker's in-flight window (Mosquitto's default max_inflight_messages is 20):
    the broker sends no more until these are acknowledged."""
    snapshot_max_hz: float = 5.0
    """Retained snapshots per second per race at most; deltas carry what lies between."""
    reconnect_min_s: float = 0.2
    """Longest wait before the first reconnect to a lost broker; doubles up to
    ``reconnect_max_s``, each wait drawn from zero to that (``broker.backoff``)."""
    reconnect_max_s: float = 5.0
    keepalive_s: int = 10
    flush_delay_s: float = 0.002
    """Longest wait, after a message, for more to fold with it before a flush (0: none).
    Folding a burst together amortises the checkpoint and the board over it."""
    publish_inflight: int = 8
    """Publications awaiting the broker's acknowledgement before folding waits for them
    (aiomqtt warns above 10)."""
    checkpoint_fsync: bool = checkpoints.FSYNC
    max_payload_bytes: int = intake.MAX_PAYLOAD_BYTES
    join_wait_s: float = 1.0
    """Longest wait for the meta of a race whose events come before it (no state, no
    meta yet); then its held events are dead-lettered as of an unknown race."""
    join_wait_events: int = 1000
    """Events held per race while its meta is awaited; beyond, the oldest are dead-lettered."""
    join_wait_races: int = 16
    """Races whose meta is awaited at once; events of one more are dead-lettered at once."""
    resend_on_gap: bool = True
    """On seqs found missing from a race, ask its producer to send the race again (control
    ``resend``): its reset and replay bring the exact standings back. Off: the board stays
    counted short (``gaps``) until someone seeks the replay back."""
    resend_interval_s: float = 5.0
    """Least time between two resend requests for one race: the replay they start takes a
    moment, and a gap found during it must not start another."""


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


_SESSION_ONLY: Final = (Flag, Clock)
"""Events that change no car's row, only the session."""

_STOP: Final = _Stop()
_TICK: Final = _Tick()
_FLUSH: Final = _Flush()


@dataclass(slots=True)
class _Held:
    """Events of a race with no state, waiting for the race's meta until ``deadline``."""

    deadline: float
    events: deque[Event] = field(default_factory=deque)


class Projector:
    """The state and the decisions of the shell; ``serve`` adds the broker."""

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
        self.partition = partition
        """The races this projector owns, of a set of projectors; None: every race."""
        self.events_wanted: list[str] = []
        """With a partition: events topics of races owned and not yet subscribed to."""
        self.events_topics: set[str] = set()
        """With a partition: every events topic subscribed to (again after a reconnect)."""
        self.metrics = metrics or _metrics()[1]
        self.checkpoint_dir = checkpoint_dir
        self.clock = clock
        races = checkpoints.load_all(checkpoint_dir) if checkpoint_dir is not None else {}
        for state in races.values():
            _log.info("checkpoint_loaded", race=state.race, seq=state.seq)
        self.standings = Standings(races)
        self.metrics.races.set(len(races))
        for race in races:
            self._want_events(race)
        self.published: dict[str, board.Snapshot] = {}
        """Per race, the board as of the last snapshot or delta published."""
        self.next_snapshot_at: dict[str, float] = {}
        self.owed: set[str] = set()
        """Races whose retained snapshot is behind their last delta."""
        self.dirty: set[str] = set()
        self.boards: dict[str, Board] = {}
        """Per race, its rows as last built: only the rows that can have changed are rebuilt."""
        self.touched: dict[str, set[str] | None] = {}
        """Per race, the cars whose state the events folded since its last board may have
        changed (None: any car may have: session opened or closed, reset, joined)."""
        self.unsaved: dict[str, set[str] | None] = {}
        """Per race changed since its last checkpoint record, the cars changed (None: any
        may have), as ``touched`` is kept for its board."""
        self.saved: dict[str, RaceState] = dict(races)
        """Per race, the state object its last checkpoint record was taken from: a race
        whose state was replaced since (a reset) gets a whole record."""
        self.pending_acks: list[Callable[[], object]] = []
        self.outbox: list[tuple[str, bytes]] = []
        """Dead letters to publish at the next flush."""
        self.held: dict[str, _Held] = {}
        """Per race with no state and no meta yet, its events waiting for the meta."""
        self.resend_asked: dict[str, float] = {}
        """Per race, when (``clock``) its producer was last asked to send it again."""
        self.resend_owed: dict[str, int] = {}
        """Per race with seqs found missing too soon after its last request, the first
        missing: asked for once ``resend_interval_s`` has passed (``owed_resends``)."""

    # -- folding (no awaits) ----------------------------------------------------

    def handle(self, message: Message) -> None:
        """Fold one MQTT message; queue its acknowledgement and any dead letters."""
        if message.ack is not None:
            self.pending_acks.append(message.ack)
        if message.topic.endswith(_META_SUFFIX):
            self.meta(message)
            return
        m = self.metrics
        m.messages_in.inc()
        try:
            events = intake.parse(
                message.topic, message.payload, max_bytes=self.settings.max_payload_bytes
            )
        except intake.BadPayload as exc:
            self._dead(
                exc.reason,
                message.topic,
                intake.dead_letter(
                    exc.reason, message.topic, message.payload, race=exc.race, wall=time.time()
                ),
                race=exc.race,
            )
            return
        self.fold(events, message.topic)

    def meta(self, message: Message) -> None:
        """Keep a race's meta (its retained session_open); fold the events held for it."""
        self.metrics.metas_in.inc()
        topic, payload = message.topic, message.payload
        race = topics.race_of(topic)
        if race is not None and self.partition is not None and not self.partition.owns(race):
            return  # another projector's race: not even decoded
        try:
            meta = intake.parse_meta(topic, payload, max_bytes=self.settings.max_payload_bytes)
            if meta is not None:
                self.standings.remember(meta)
        except (intake.BadPayload, Rejected) as exc:
            reason = str(exc)
            letter = intake.dead_letter(reason, topic, payload, race=race, wall=time.time())
            self._dead(reason, topic, letter, race=race)
            return
        if race is None:
            return
        if meta is None:
            self.standings.forget(race)  # the retained meta was cleared
            return
        self._want_events(race)
        self._release(race)

    def _want_events(self, race: str) -> None:
        """With a partition, subscribe (at the next turn of ``serve``) to an owned race's
        events: a projector of a set reads its own races only, never every race."""
        if self.partition is None or not self.partition.owns(race):
            return
        topic = topics.topic(race, topics.EVENTS)
        if topic not in self.events_topics:
            self.events_topics.add(topic)
            self.events_wanted.append(topic)

    async def subscribe_events(self, bus: Bus, *, again: bool = False) -> None:
        """Subscribe to the events topics wanted (``again``: every one, after a reconnect)."""
        wanted = sorted(self.events_topics) if again else self.events_wanted
        self.events_wanted = []
        if wanted:
            await asyncio.gather(*(bus.subscribe(topic, qos=1) for topic in wanted))
            _log.info("projector_subscribed_races", topics=len(wanted))

    def fold(self, events: list[Event], topic: str) -> None:
        """Fold the events of one message (all of one race: ``intake.parse`` checked)."""
        self.metrics.events_in.inc(len(events))
        race = events[0].race
        standings = self.standings
        if race not in standings.races and race not in standings.metas:
            events = self._hold(race, events)
            if not events:
                return
        self._fold(race, events, topic)

    def _hold(self, race: str, events: list[Event]) -> list[Event]:
        """Hold the events of a race with no state until its meta arrives; return those
        to fold now: all of them from a race that opens itself, or one too many to wait for."""
        settings = self.settings
        held = self.held.get(race)
        if any(isinstance(event, SessionOpened | Reset) for event in events):
            # The stream opens the race itself; what was held came before it.
            self._release(race)
            return events
        if held is None:
            if len(self.held) >= settings.join_wait_races or settings.join_wait_events <= 0:
                return events
            held = self.held[race] = _Held(self.clock() + settings.join_wait_s)
            _log.info(
                "race_meta_awaited", race=race, seq=events[0].seq, wait_s=settings.join_wait_s
            )
        queue = held.events
        topic = topics.topic(race, topics.EVENTS)
        for event in events:
            if len(queue) >= settings.join_wait_events:
                old = queue.popleft()
                reason = (
                    f"race {race} is unknown: more than {settings.join_wait_events} events"
                    " held waiting for its meta"
                )
                letter = intake.dead_event(reason, topic, old, wall=time.time())
                self._dead(reason, topic, letter, race=race)
            queue.append(event)
        self.metrics.held.inc(len(events))
        return []

    def _release(self, race: str) -> None:
        """Fold the events held for a race: joined from its meta if it came, else rejected."""
        held = self.held.pop(race, None)
        if held is not None and held.events:
            self._fold(race, list(held.events), topics.topic(race, topics.EVENTS))

    def expire_held(self, *, everything: bool = False) -> bool:
        """Release the races whose meta did not come in time (all with ``everything``)."""
        now = self.clock()
        due = [r for r, held in self.held.items() if everything or held.deadline <= now]
        for race in due:
            self._release(race)
        return bool(due)

    def _fold(self, race: str, events: list[Event], topic: str) -> None:
        m = self.metrics
        races = self.standings.races
        known = race in races
        step = self.standings.step
        applied = 0
        touched = self.touched.get(race, set())
        unsaved = self.unsaved.get(race, set())
        for event in events:
            state = races.get(race)
            last = state.seq if state is not None else 0
            try:
                outcome = step(event)
            except Rejected as exc:
                reason = str(exc)
                self._dead(
                    reason,
                    topic,
                    intake.dead_event(reason, topic, event, wall=time.time()),
                    race=race,
                )
                continue
            if outcome != DUPLICATE:
                # What the event may have changed (a rejected one changed nothing).
                car = getattr(event, "car", None)
                if isinstance(car, str):
                    if touched is not None:
                        touched.add(car)
                    if unsaved is not None:
                        unsaved.add(car)
                elif not isinstance(event, _SESSION_ONLY):
                    touched = unsaved = None
            if outcome is APPLIED:  # the common case first, and cheap
                applied += 1
            elif outcome == DUPLICATE:
                m.duplicates.inc()
            elif outcome == GAP:
                applied += 1
                self._gap(event, last, topic)
            elif outcome == JOINED:
                applied += 1
                self._joined(event, state.gaps if state is not None else 0, topic)
            else:
                applied += 1
                if outcome == RESET:
                    m.resets.inc()
                    _log.info("race_reset", race=race, seq=event.seq)
                    # The race starts again from its start: nothing before is missing now.
                    self.resend_owed.pop(race, None)
        self.touched[race] = touched
        if applied:
            m.applied.inc(applied)
            self.dirty.add(race)
            self.unsaved[race] = unsaved
            if not known:
                m.races.set(len(races))
            wall = events[-1].wall
            if wall:  # how far behind the live race the standings are (0 until emitted)
                m.lag.set(max(0.0, time.time() - wall))

    def _gap(self, event: Event, last: int, topic: str) -> None:
        race = event.race
        missing = event.seq - last - 1
        self.metrics.gaps.inc(missing)
        reason = f"seqs {last + 1}..{event.seq - 1} missing; event {event.seq} applied"
        _log.warning("seq_gap", race=race, first=last + 1, last=event.seq - 1, count=missing)
        self.metrics.dead_letters.inc()
        self.outbox.append(
            (
                intake.dead_letter_topic(race, self.standings.races),
                intake.dead_event(reason, topic, event, wall=time.time()),
            )
        )
        self._ask_resend(race, last + 1)

    def _ask_resend(self, race: str, from_seq: int) -> None:
        """Queue a ``resend`` command for the race's producer, at most one per interval."""
        settings = self.settings
        if not settings.resend_on_gap:
            return
        now = self.clock()
        asked = self.resend_asked.get(race)
        if asked is not None and now - asked < settings.resend_interval_s:
            owed = self.resend_owed.get(race, from_seq)
            self.resend_owed[race] = min(owed, from_seq)
            return
        self.resend_owed.pop(race, None)
        self.resend_asked[race] = now
        command = Resend(id=f"projector-{uuid.uuid4().hex[:16]}", from_seq=from_seq)
        self.metrics.resends.inc()
        _log.info("resend_asked", race=race, from_seq=from_seq, id=command.id)
        self.outbox.append((topics.topic(race, topics.CONTROL), control.encode(command)))

    def _joined(self, event: Event, gaps_before: int, topic: str) -> None:
        race = event.race
        races = self.standings.races
        missing = races[race].gaps - gaps_before
        self.metrics.joins.inc()
        if missing <= 0:
            _log.info("race_joined", race=race, seq=event.seq, missing=0)
            return
        self.metrics.gaps.inc(missing)
        # What brings the exact board back: a backward seek replays the race from its
        # session_open. Any race time before the current one will do; this one is just
        # before the join, so the replay moves back the least.
        resync = f"chequered control {race} seek --time {_before(event.t_ms)}"
        _log.warning("race_joined", race=race, seq=event.seq, missing=missing, resync=resync)
        reason = (
            f"race joined midway from its meta: {missing} earlier seqs not folded;"
            f" event {event.seq} applied"
        )
        self.metrics.dead_letters.inc()
        self.outbox.append(
            (
                intake.dead_letter_topic(race, races),
                intake.dead_event(reason, topic, event, wall=time.time()),
            )
        )
        if self.partition is not None:
            # A projector of a set subscribes to a race's events once its meta arrives:
            # the first events can pass before that. Its producer sends the race again.
            self._ask_resend(race, 1)

    def _dead(self, reason: str, topic: str, payload: bytes, *, race: str | None) -> None:
        self.metrics.dead_letters.inc()
        _log.warning("dead_letter", reason=reason, topic=topic, race=race)
        self.outbox.append((intake.dead_letter_topic(race, self.standings.races), payload))

    def save_checkpoints(self) -> None:
        """Write the checkpoint of every race changed since its last one."""
        if self.checkpoint_dir is None:
            self.unsaved.clear()
            return
        for race, changed in sorted(self.unsaved.items()):
            state = self.standings.races.get(race)
            if state is None:
                continue
            cars = changed if self.saved.get(race) is state else None
            try:
                checkpoints.save(
                    self.checkpoint_dir, state, fsync=self.settings.checkpoint_fsync, cars=cars
                )
            except OSError as exc:
                # Not acknowledging is what keeps the events safe: stop here and
                # let the broker redeliver them to the next attempt.
                self.metrics.checkpoint_errors.inc()
                _log.error("checkpoint_failed", race=race, error=str(exc))
                raise
            self.metrics.checkpoints.inc()
            self.saved[race] = state
        self.unsaved.clear()

    def publications(self, *, everything: bool = False) -> list[tuple[str, bytes, bool]]:
        """(topic, payload, retain) to publish for the races changed since the last flush.

        A delta for every race whose board changed, then a retained snapshot too
        when the rate allows (else it is owed); a snapshot alone when no delta
        can chain (first publication, reset), or for every race when ``everything``.
        """
        out: list[tuple[str, bytes, bool]] = []
        now = self.clock()
        races = sorted(self.standings.races) if everything else sorted(self.dirty)
        self.dirty.clear()
        for race in races:
            state = self.standings.races.get(race)
            if state is None:
                continue
            touched = self.touched.pop(race, None)
            board_ = self.boards.get(race)
            if board_ is None:
                board_ = self.boards[race] = Board()
            current = board_.snapshot(state, None if everything else touched)
            previous = self.published.get(race)
            change = delta(previous, current) if previous is not None else None
            if change is not None and not change.cars and change.session is None:
                change = None
                if not everything:
                    continue  # nothing a reader could see changed
            if change is None or everything:
                out.append(self._snapshot(state, current, now))
                continue
            # The delta first: deltas chain on each other, and a snapshot that goes
            # with one repeats the board at the delta's seq.
            self.published[race] = current
            out.append((topics.topic(race, topics.STANDINGS_DELTA), board.encode(change), False))
            self.metrics.deltas_out.inc()
            if now >= self.next_snapshot_at.get(race, 0.0):
                out.append(self._snapshot(state, current, now))
            else:
                self.owed.add(race)
        return out

    def _snapshot(
        self, state: RaceState, current: board.Snapshot, now: float
    ) -> tuple[str, bytes, bool]:
        race = state.race
        self.published[race] = current
        self.owed.discard(race)
        self.next_snapshot_at[race] = now + 1.0 / self.settings.snapshot_max_hz
        self.metrics.snapshots_out.inc()
        return (topics.topic(race, topics.STANDINGS), board.encode(current), True)

    def owed_snapshots(self) -> list[tuple[str, bytes, bool]]:
        """Retained snapshots held back by the rate limit and now due."""
        now = self.clock()
        out: list[tuple[str, bytes, bool]] = []
        for race in sorted(self.owed):
            if now >= self.next_snapshot_at.get(race, 0.0):
                current = self.published[race]
                state = self.standings.races[race]
                out.append(self._snapshot(state, current, now))
        return out

    def owed_resends(self) -> list[tuple[str, bytes, bool]]:
        """Resend requests held back by ``resend_interval_s`` and now due."""
        first = len(self.outbox)  # dead letters before it wait for their flush
        for race, from_seq in sorted(self.resend_owed.items()):
            self._ask_resend(race, from_seq)
        out = [(topic, payload, False) for topic, payload in self.outbox[first:]]
        del self.outbox[first:]
        return out

    def next_due(self) -> float | None:
        """Monotonic time at which the next owed snapshot may go out, a wait for a
        race's meta ends, or a held-back resend request may go."""
        due = [self.next_snapshot_at.get(race, 0.0) for race in self.owed]
        due.extend(held.deadline for held in self.held.values())
        interval = self.settings.resend_interval_s
        due.extend(self.resend_asked[race] + interval for race in self.resend_owed)
        return min(due, default=None)

    # -- the broker ---------------------------------------------------------

    async def flush(self, sender: _Sender) -> None:
        """Checkpoint, acknowledge what was folded, then publish (in that order).

        Acknowledging needs the checkpoint only: a board lost with a crash is
        published again on start (every race's snapshot). A dead letter can be
        lost that way; its log line is not.
        """
        self.save_checkpoints()
        acks, self.pending_acks = self.pending_acks, []
        for ack in acks:
            ack()
        out = [(topic, payload, False) for topic, payload in self.outbox]
        self.outbox.clear()
        out.extend(self.publications())
        await sender.send(out)

    async def publish_all(self, bus: Bus) -> None:
        """A retained snapshot of every race, on every (re)connection: the broker may have
        restarted without its retained messages."""
        # Checkpoint first: a published seq must never be ahead of the checkpoint,
        # or a restart would move the retained snapshot backwards.
        self.save_checkpoints()
        out = self.publications(everything=True)
        await _publish(bus, out)

    async def serve(self, bus: Bus, stop: asyncio.Event) -> None:
        """Fold and publish until ``stop`` is set; raises when the connection is lost."""
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Message | _Stop | _Tick | _Flush | BaseException] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for message in bus.messages():
                    inbox.put_nowait(message)
            except Exception as exc:
                inbox.put_nowait(exc)
            else:
                inbox.put_nowait(ConnectionError("the broker closed the message stream"))

        def on_stop(_: object) -> None:
            inbox.put_nowait(_STOP)

        pump_task = asyncio.create_task(pump(), name="projector-pump")
        stop_task = asyncio.create_task(stop.wait(), name="projector-stop")
        stop_task.add_done_callback(on_stop)
        timer: asyncio.TimerHandle | None = None
        flush_timer: asyncio.TimerHandle | None = None
        window = self.settings.ack_window
        delay = self.settings.flush_delay_s
        sender = _Sender(bus, self.settings.publish_inflight)
        folded = 0
        try:
            while True:
                item = await inbox.get()
                flush = stopping = False
                if isinstance(item, Message):
                    self.handle(item)
                    if self.events_wanted:
                        await self.subscribe_events(bus)
                    folded += 1
                    if folded >= window or delay <= 0:
                        flush = True
                    elif flush_timer is None:
                        # Wait a little for the rest of a burst still on its way, so
                        # that a flush covers it all.
                        flush_timer = loop.call_later(delay, inbox.put_nowait, _FLUSH)
                elif isinstance(item, _Flush):
                    flush_timer = None
                    flush = True
                elif isinstance(item, _Stop):
                    flush = stopping = True
                elif isinstance(item, BaseException):
                    raise item
                released = not isinstance(item, Message) and self.expire_held(everything=stopping)
                if (flush and (folded or stopping)) or released:
                    if flush_timer is not None:
                        flush_timer.cancel()
                        flush_timer = None
                    folded = 0
                    await self.flush(sender)
                if not isinstance(item, Message):
                    await sender.send(self.owed_snapshots() + self.owed_resends())
                if stopping:
                    await sender.drain()
                    return
                due = self.next_due()
                if due is not None and timer is None:

                    def tick() -> None:
                        nonlocal timer
                        timer = None
                        inbox.put_nowait(_TICK)

                    timer = loop.call_at(due, tick)
        finally:
            for handle in (timer, flush_timer):
                if handle is not None:
                    handle.cancel()
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


class _Sender:
    """Publishes at QoS 1 without waiting for each acknowledgement, up to a bound.

    The client writes packets in the order ``publish`` is called, so what is
    sent keeps its order; folding only waits when ``limit`` publications are
    still unacknowledged. A failed publication (connection lost) is raised by
    the next ``send``.
    """

    def __init__(self, bus: Bus, limit: int) -> None:
        self.bus = bus
        self.limit = max(1, limit)
        self.inflight: set[asyncio.Task[None]] = set()

    async def send(self, out: list[tuple[str, bytes, bool]]) -> None:
        for topic, payload, retain in out:
            self._raise_failed()
            while len(self.inflight) >= self.limit:
                await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
                self._raise_failed()
            task = asyncio.create_task(self.bus.publish(topic, payload, qos=1, retain=retain))
            self.inflight.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            self.inflight.discard(task)

    def _raise_failed(self) -> None:
        for task in list(self.inflight):
            if task.done():
                self.inflight.discard(task)
                exc = task.exception()
                if exc is not None:
                    raise exc

    async def drain(self) -> None:
        while self.inflight:
            await asyncio.wait(self.inflight)
            self._raise_failed()

    def cancel(self) -> None:
        for task in self.inflight:
            task.cancel()
        self.inflight.clear()


async def _publish(bus: Bus, out: list[tuple[str, bytes, bool]]) -> None:
    # Concurrently: the client writes the packets in call order, then awaits the acks.
    if out:
        await asyncio.gather(*(bus.publish(t, p, qos=1, retain=r) for t, p, r in out))


def _before(t_ms: int) -> str:
    """A race time as ``chequered control ... seek --time`` reads it: ``H:MM:SS``, one
    second or more before ``t_ms`` (a seek to the very time might not go backward)."""
    seconds = max(0, t_ms // 1000 - 1)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
    """Fold ``chequered/v1/+/events`` into standings until ``stop`` is set.

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
    events_pattern = EVENTS_PATTERN if partition is None else None
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
                    # Meta first: its retained messages then come before the events that
                    # arrive on the new subscription, and a race already running is
                    # joined without waiting. Both at once (the client sends them in call
                    # order): one round trip before the events flow, not two.
                    patterns = [META_PATTERN] if events_pattern is None else [
                        META_PATTERN, events_pattern
                    ]  # fmt: skip
                    await asyncio.gather(*(bus.subscribe(p, qos=1) for p in patterns))
                    await projector.subscribe_events(bus, again=True)
                    metrics.connected.set(1)
                    _log.info(
                        "projector_subscribed",
                        pattern=events_pattern or "own races",
                        partition=partition.label() if partition else None,
                        client_id=client_id,
                    )
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
                # Acknowledgements belong to the lost connection; the broker
                # redelivers those messages and the fold drops them by seq.
                projector.pending_acks.clear()
                wait = backoff.next()
                _log.warning("broker_lost", error=str(exc) or type(exc).__name__, retry_s=wait)
                await _sleep_or_stop(stop, wait)
    finally:
        metrics.connected.set(0)
        projector.close()
        if server is not None:
            server.close()
            await server.wait_closed()
