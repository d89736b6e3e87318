"""The projector's decisions, without I/O: messages in, ordered actions out.

``ProjectorCore`` folds what the broker delivers (``handle``) and says what to
do about it as values, in the order they must be done: write these checkpoint
records, then acknowledge these messages, then publish these snapshots,
deltas, dead letters and resend requests (``flush``); what has come due
(``tick``, at ``next_deadline``); everything again on a new connection
(``everything``). Clocks and ids are handed in; log lines come out as
``Note``s. ``consumers.projector.service`` is the asyncio shell that carries
the actions out. Why the order is safe: STANDINGS.md.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Final, Protocol

from chequered.contract import board, control, topics
from chequered.contract.control import Resend
from chequered.contract.events import Event, Reset, SessionOpened
from chequered.contract.partition import Partition
from consumers.projector import intake
from consumers.standings.fold import (
    APPLIED,
    DUPLICATE,
    GAP,
    JOINED,
    RESET,
    SESSION_ONLY,
    Board,
    RaceState,
    Rejected,
    Standings,
    delta,
)

_META_SUFFIX: Final = "/" + topics.META


@dataclass(frozen=True, slots=True)
class ProjectorSettings:
    """Every limit of the projector, with its default."""

    ack_window: int = 512
    """Most messages folded before a flush (checkpoint, publish, acknowledge). A broker
    whose in-flight window is smaller (Mosquitto's default is 20) sends no more until
    they are acknowledged: the input goes quiet and ``flush_idle_s`` flushes them."""
    snapshot_max_hz: float = 1.0
    """Retained snapshots per second per race at most; deltas carry what lies between.
    A snapshot is for a reader that joins or lost a delta: once a second is enough, and
    each is a whole board for the broker and every gateway to carry (PERFORMANCE.md)."""
    delta_window_s: float = 0.025
    """Least time between two deltas of one race (the coalescing window): what is folded
    in between goes out as one delta, as timing screens coalesce. Each delta is a board
    built and a frame to every client of the race. Keep it under the producer's
    ``tick_s`` (100 ms), which already sends each race's events together: a window as
    long as the tick made every other delta wait for it (p50 67 ms against 12 ms at
    100 races, PERFORMANCE.md). 0: a delta per flush."""
    delta_qos: int = 0
    """QoS of the deltas. A reader repairs a lost delta by seq from the next retained
    snapshot (its ``prev_seq`` no longer matches), so they need no acknowledgement:
    at 0 neither the projector nor the gateway reads or writes a PUBACK per delta.
    Snapshots, dead letters and commands stay at 1."""
    reconnect_min_s: float = 0.2
    """Longest wait before the first reconnect to a lost broker; doubles up to
    ``reconnect_max_s``, each wait drawn from zero to that (``broker.backoff``)."""
    reconnect_max_s: float = 5.0
    keepalive_s: int = 10
    flush_delay_s: float = 0.025
    """Longest wait, after a message, for more to fold with it before a flush (0: none).
    Folding a burst together amortises the checkpoint, the boards and the
    acknowledgements over it (PERFORMANCE.md)."""
    flush_idle_s: float = 0.002
    """Flush as soon as no message has come for this long: the end of a burst, or a
    broker that waits for acknowledgements before it sends more."""
    publish_inflight: int = 64
    """Publications awaiting the broker's acknowledgement before folding waits for them
    (under the client's in-flight limit of 100)."""
    checkpoint_fsync: bool = False
    """fsync each checkpoint record (``checkpoints.FSYNC``): survives a power cut too."""
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


# -- actions, in the order the shell must carry them out ------------------------------


@dataclass(frozen=True, slots=True)
class WriteCheckpoint:
    """Write this race's record (only ``cars`` changed; None: the whole state), then
    tell the core (``checkpoint_written``). A failure must stop the actions after it."""

    race: str
    state: RaceState
    cars: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Acknowledge these messages (the tokens ``handle`` was given), in order."""

    tokens: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = False
    qos: int = 1


Action = WriteCheckpoint | Acknowledge | Publish


@dataclass(frozen=True, slots=True)
class Note:
    """A log line for the shell to write: level, event name, fields."""

    level: str
    event: str
    fields: dict[str, object]


class _Count(Protocol):
    def inc(self, n: int = 1) -> None: ...


class _Level(Protocol):
    def set(self, value: float) -> None: ...


class CoreMetrics(Protocol):
    """What the core counts; the shell's Prometheus metrics have these names."""

    @property
    def messages_in(self) -> _Count: ...
    @property
    def events_in(self) -> _Count: ...
    @property
    def applied(self) -> _Count: ...
    @property
    def duplicates(self) -> _Count: ...
    @property
    def gaps(self) -> _Count: ...
    @property
    def resets(self) -> _Count: ...
    @property
    def metas_in(self) -> _Count: ...
    @property
    def joins(self) -> _Count: ...
    @property
    def held(self) -> _Count: ...
    @property
    def dead_letters(self) -> _Count: ...
    @property
    def resends(self) -> _Count: ...
    @property
    def snapshots_out(self) -> _Count: ...
    @property
    def deltas_out(self) -> _Count: ...
    @property
    def races(self) -> _Level: ...
    @property
    def lag(self) -> _Level: ...


@dataclass(slots=True)
class _Held:
    """Events of a race with no state, waiting for the race's meta until ``deadline``."""

    deadline: float
    events: deque[Event] = field(default_factory=deque)


def resync_time(t_ms: int) -> str:
    """A race time as ``chequered control ... seek --time`` reads it: ``H:MM:SS``, one
    second or more before ``t_ms`` (a seek to the very time might not go backward)."""
    seconds = max(0, t_ms // 1000 - 1)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- what the readers see: snapshots and deltas -------------------------------------


class Boards:
    """Per race, the board last published and the decisions of what to publish next."""

    def __init__(self, settings: ProjectorSettings, metrics: CoreMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.published: dict[str, board.Snapshot] = {}
        """Per race, the board as of the last snapshot or delta published."""
        self.next_snapshot_at: dict[str, float] = {}
        self.owed: dict[str, float] = {}
        """Races whose retained snapshot is behind their last delta (the rate limit holds
        it back), and when it is due."""
        self.next_delta_at: dict[str, float] = {}
        """Per race, when its coalescing window lets the next delta go."""
        self.dirty: set[str] = set()
        """Races changed since their last publication (those held by their window too)."""
        self.windowed: set[str] = set()
        """Races whose delta waits for its window (``next_delta_at``) and nothing else."""
        self.built: dict[str, Board] = {}
        """Per race, its rows as last built: only the rows that can have changed are rebuilt."""
        self.touched: dict[str, set[str] | None] = {}
        """Per race, the cars whose state the events folded since its last board may have
        changed (None: any car may have: session opened or closed, reset, joined)."""

    def publications(
        self,
        races: dict[str, RaceState],
        now: float,
        *,
        everything: bool = False,
        held_back: Collection[str] = (),
        windowless: bool = False,
    ) -> list[Publish]:
        """For the races changed since the last call: a delta for every race whose board
        changed and whose coalescing window has passed (else it stays changed, for
        ``due``), then a retained snapshot too when the rate allows (else it is owed); a
        snapshot alone when no delta can chain (first publication, reset), or for every
        race when ``everything``. ``held_back``: races not to publish yet at all;
        ``windowless``: the windows end now (the projector is stopping)."""
        out: list[Publish] = []
        waiting: set[str] = set()
        windowed: set[str] = set()
        for race in sorted(races) if everything else sorted(self.dirty):
            state = races.get(race)
            if state is None:
                continue
            if not everything and race in held_back:
                waiting.add(race)  # the next flush takes it, after its checkpoint
                continue
            held = (
                not windowless
                and race in self.published
                and now < self.next_delta_at.get(race, 0.0)
            )
            if held and not everything:
                waiting.add(race)  # its rows to rebuild keep adding up (``touched``)
                windowed.add(race)
                continue
            touched = self.touched.pop(race, None)
            rows = self.built.get(race)
            if rows is None:
                rows = self.built[race] = Board()
            current = rows.snapshot(state, None if everything else touched)
            previous = self.published.get(race)
            change = delta(previous, current) if previous is not None else None
            if change is not None and not change.cars and change.session is None:
                change = None
                if not everything:
                    continue  # nothing a reader could see changed
            if change is None or everything:
                out.append(self.snapshot(current, now))
                continue
            # The delta first: deltas chain on each other, and a snapshot that goes
            # with one repeats the board at the delta's seq.
            self.published[race] = current
            out.append(Publish(topics.topic(race, topics.STANDINGS_DELTA), board.encode(change),
                               qos=self.settings.delta_qos))  # fmt: skip
            self.metrics.deltas_out.inc()
            if self.settings.delta_window_s > 0:
                self.next_delta_at[race] = now + self.settings.delta_window_s
            due_at = self.next_snapshot_at.get(race, 0.0)
            if now >= due_at:
                out.append(self.snapshot(current, now))
            else:
                self.owed[race] = due_at
        self.dirty = waiting
        self.windowed = windowed
        return out

    def snapshot(self, current: board.Snapshot, now: float) -> Publish:
        race = current.race
        self.published[race] = current
        self.owed.pop(race, None)
        self.next_snapshot_at[race] = now + 1.0 / self.settings.snapshot_max_hz
        self.metrics.snapshots_out.inc()
        return Publish(topics.topic(race, topics.STANDINGS), board.encode(current), True)

    def owed_snapshots(self, now: float) -> list[Publish]:
        """Retained snapshots held back by the rate limit and now due."""
        due = sorted(race for race, at in self.owed.items() if now >= at)
        return [self.snapshot(self.published[race], now) for race in due]

    def deadlines(self) -> list[float]:
        # At the target's load most races owe a snapshot: this runs at every turn of the
        # loop, so the earliest is found in C, not with a lookup per race.
        due = [min(self.owed.values())] if self.owed else []
        due.extend(self.next_delta_at[race] for race in self.windowed)
        return due


# -- asking a producer to send a race again ------------------------------------------


class Resends:
    """Per race, when its producer was last asked for a resend, and a request held back."""

    def __init__(self, settings: ProjectorSettings, new_id: Callable[[], str]) -> None:
        self.settings = settings
        self.new_id = new_id
        self.asked: dict[str, float] = {}
        self.owed: dict[str, int] = {}
        """Per race with seqs missing and no reset yet to answer for them, the first
        missing: asked for (again) once ``resend_interval_s`` has passed."""

    def ask(self, race: str, from_seq: int, now: float) -> Publish | None:
        """The request to publish now, or None (off, or held back by the interval)."""
        if not self.settings.resend_on_gap:
            return None
        asked = self.asked.get(race)
        if asked is not None and now - asked < self.settings.resend_interval_s:
            self.owed[race] = min(self.owed.get(race, from_seq), from_seq)
            return None
        self.asked[race] = now
        # Owed again until the producer answers with a reset: a request published
        # while the producer was away (its broker node lost, say) is asked once more
        # after the interval instead of leaving the board short for good.
        self.owed[race] = from_seq
        command = Resend(id=self.new_id(), from_seq=from_seq)
        return Publish(topics.topic(race, topics.CONTROL), control.encode(command))

    def forget(self, race: str) -> None:
        """The race starts again from its start (a reset): nothing before it is missing."""
        self.owed.pop(race, None)

    def deadlines(self) -> list[float]:
        interval = self.settings.resend_interval_s
        return [self.asked[race] + interval for race in self.owed]


# -- checkpoint bookkeeping -----------------------------------------------------------


class Saves:
    """Which races changed since their last checkpoint record, and which cars in them."""

    def __init__(self, races: dict[str, RaceState]) -> None:
        self.unsaved: dict[str, set[str] | None] = {}
        """Per race changed since its last checkpoint record, the cars changed (None: any
        may have), as ``Boards.touched`` is kept for its board."""
        self.saved: dict[str, RaceState] = dict(races)
        """Per race, the state object its last checkpoint record was taken from: a race
        whose state was replaced since (a reset) gets a whole record."""

    def due(self, races: dict[str, RaceState]) -> list[WriteCheckpoint]:
        """A record for every race changed since its last one (the whole state after a
        reset: its state object is new)."""
        out = []
        for race, changed in sorted(self.unsaved.items()):
            state = races.get(race)
            if state is None:
                continue
            same = self.saved.get(race) is state
            cars = frozenset(changed) if same and changed is not None else None
            out.append(WriteCheckpoint(race, state, cars))
        return out

    def written(self, action: WriteCheckpoint) -> None:
        self.saved[action.race] = action.state
        self.unsaved.pop(action.race, None)


# -- races whose meta has not come yet -----------------------------------------------


class MetaWait:
    """Events of races with no state and no meta yet, held until the meta comes."""

    def __init__(self, settings: ProjectorSettings) -> None:
        self.settings = settings
        self.held: dict[str, _Held] = {}

    def hold(self, race: str, events: list[Event], now: float) -> tuple[bool, list[Event]]:
        """Hold ``events``: (held, the older events pushed out to make room). Not held
        (False): too many races wait already; fold them now."""
        settings = self.settings
        held = self.held.get(race)
        if held is None:
            if len(self.held) >= settings.join_wait_races or settings.join_wait_events <= 0:
                return False, []
            held = self.held[race] = _Held(now + settings.join_wait_s)
        queue, dropped = held.events, []
        for event in events:
            if len(queue) >= settings.join_wait_events:
                dropped.append(queue.popleft())
            queue.append(event)
        return True, dropped

    def release(self, race: str) -> list[Event]:
        held = self.held.pop(race, None)
        return list(held.events) if held is not None else []

    def expired(self, now: float, *, everything: bool = False) -> list[str]:
        return [r for r, held in self.held.items() if everything or held.deadline <= now]

    def deadlines(self) -> list[float]:
        return [held.deadline for held in self.held.values()]


# -- the core ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Short:
    """What a race joined midway missed: seqs before ``seq`` (the first folded, at race
    time ``t_ms``), and the dead letter that reports it."""

    missing: int
    seq: int
    t_ms: int
    letter: bytes


class Folding:
    """The folding half of the core: messages in, standings, dead letters and resend
    requests queued, log lines noted. ``ProjectorCore`` adds the actions out."""

    def __init__(
        self,
        races: dict[str, RaceState],
        *,
        settings: ProjectorSettings,
        metrics: CoreMetrics,
        clock: Callable[[], float],
        wall: Callable[[], float],
        new_id: Callable[[], str],
        partition: Partition | None = None,
    ) -> None:
        """``races``: as the checkpoints left them. ``clock``: monotonic seconds (waits);
        ``wall``: Unix seconds (dead letters, lag); ``new_id``: a fresh command id."""
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.wall = wall
        self.partition = partition
        """The races this projector owns, of a set of projectors; None: every race."""
        self.events_wanted: list[str] = []
        """With a partition: events topics of races owned and not yet subscribed to."""
        self.events_topics: set[str] = set()
        """With a partition: every events topic subscribed to (again after a reconnect)."""
        self.standings = Standings(races)
        self.boards = Boards(settings, metrics)
        self.resends = Resends(settings, new_id)
        self.saves = Saves(races)
        self.waiting = MetaWait(settings)
        self.joining: dict[str, Short] = {}
        """Races joined short by a projector of a set, waiting for the resend asked for:
        no alarm while it is on its way; the usual one if it has not come within
        ``resend_interval_s`` (``due``)."""
        self.pending_acks: list[object] = []
        self.outbox: list[Publish] = []
        """Dead letters and resend requests to publish at the next flush."""
        self.notes: list[Note] = []
        """Log lines for the shell, oldest first (``take_notes``)."""
        metrics.races.set(len(races))
        for state in races.values():
            self._note("info", "checkpoint_loaded", race=state.race, seq=state.seq)
            self._want_events(state.race)

    def _note(self, level: str, event: str, **fields: object) -> None:
        self.notes.append(Note(level, event, fields))

    def take_notes(self) -> list[Note]:
        notes, self.notes = self.notes, []
        return notes

    # -- messages in ------------------------------------------------------------------

    def handle(self, topic: str, payload: bytes, ack: object | None = None) -> None:
        """Fold one message; its acknowledgement (``ack``) waits for the next flush."""
        if ack is not None:
            self.pending_acks.append(ack)
        if topic.endswith(_META_SUFFIX):
            self._meta(topic, payload)
            return
        self.metrics.messages_in.inc()
        try:
            events = intake.parse(topic, payload, max_bytes=self.settings.max_payload_bytes)
        except intake.BadPayload as exc:
            letter = intake.dead_letter(exc.reason, topic, payload, race=exc.race, wall=self.wall())
            self._dead(exc.reason, topic, letter, race=exc.race)
            return
        self.metrics.events_in.inc(len(events))
        race = events[0].race  # all of one race: intake.parse checked
        standings = self.standings
        if race not in standings.races and race not in standings.metas:
            events = self._hold(race, events)
            if not events:
                return
        self._fold(race, events, topic)

    def _meta(self, topic: str, payload: bytes) -> None:
        """Keep a race's meta (its retained session_open); fold the events held for it."""
        self.metrics.metas_in.inc()
        race = topics.race_of(topic)
        if race is not None and self.partition is not None and not self.partition.owns(race):
            return  # another projector's race: not even decoded
        try:
            meta = intake.parse_meta(topic, payload, max_bytes=self.settings.max_payload_bytes)
            if meta is not None:
                self.standings.remember(meta)
        except (intake.BadPayload, Rejected) as exc:
            letter = intake.dead_letter(str(exc), topic, payload, race=race, wall=self.wall())
            self._dead(str(exc), topic, letter, race=race)
            return
        if race is None:
            return
        if meta is None:
            self.standings.forget(race)  # the retained meta was cleared
            return
        self._want_events(race)
        self._release(race)

    def _want_events(self, race: str) -> None:
        """With a partition, subscribe (at the shell's next turn) to an owned race's
        events: a projector of a set reads its own races only, never every race."""
        if self.partition is None or not self.partition.owns(race):
            return
        topic = topics.topic(race, topics.EVENTS)
        if topic not in self.events_topics:
            self.events_topics.add(topic)
            self.events_wanted.append(topic)

    @property
    def held(self) -> dict[str, _Held]:
        return self.waiting.held

    def _hold(self, race: str, events: list[Event]) -> list[Event]:
        """Hold the events of a race with no state until its meta arrives; return those
        to fold now: all of them from a race that opens itself, or one too many to wait for."""
        if any(isinstance(event, SessionOpened | Reset) for event in events):
            # The stream opens the race itself; what was held came before it.
            self._release(race)
            return events
        waiting = race in self.waiting.held
        held, dropped = self.waiting.hold(race, events, self.clock())
        if not held:
            return events
        if not waiting:
            self._note("info", "race_meta_awaited", race=race, seq=events[0].seq,
                       wait_s=self.settings.join_wait_s)  # fmt: skip
        topic = topics.topic(race, topics.EVENTS)
        reason = (
            f"race {race} is unknown: more than {self.settings.join_wait_events} events"
            " held waiting for its meta"
        )
        for old in dropped:
            self._dead(reason, topic, intake.dead_event(reason, topic, old, wall=self.wall()),
                       race=race)  # fmt: skip
        self.metrics.held.inc(len(events))
        return []

    def _release(self, race: str) -> None:
        """Fold the events held for a race: joined from its meta if it came, else rejected."""
        events = self.waiting.release(race)
        if events:
            self._fold(race, events, topics.topic(race, topics.EVENTS))

    def _fold(self, race: str, events: list[Event], topic: str) -> None:
        m = self.metrics
        races = self.standings.races
        known = race in races
        step = self.standings.step
        applied = 0
        touched = self.boards.touched.get(race, set())
        unsaved = self.saves.unsaved.get(race, set())
        for event in events:
            state = races.get(race)
            last = state.seq if state is not None else 0
            try:
                outcome = step(event)
            except Rejected as exc:
                letter = intake.dead_event(str(exc), topic, event, wall=self.wall())
                self._dead(str(exc), topic, letter, race=race)
                continue
            if outcome != DUPLICATE:
                # What the event may have changed (a rejected one changed nothing).
                car = getattr(event, "car", None)
                if isinstance(car, str):
                    if touched is not None:
                        touched.add(car)
                    if unsaved is not None:
                        unsaved.add(car)
                elif not isinstance(event, SESSION_ONLY):
                    touched = unsaved = None
            if outcome is APPLIED:  # the common case first, and cheap
                applied += 1
                continue
            if outcome == DUPLICATE:
                m.duplicates.inc()
                continue
            applied += 1
            if outcome == GAP:
                self._gap(event, last, topic)
            elif outcome == JOINED:
                self._joined(event, state.gaps if state is not None else 0, topic)
            elif outcome == RESET:
                m.resets.inc()
                self._note("info", "race_reset", race=race, seq=event.seq)
                self.resends.forget(race)
                self.joining.pop(race, None)
        self.boards.touched[race] = touched
        if applied:
            m.applied.inc(applied)
            self.boards.dirty.add(race)
            self.saves.unsaved[race] = unsaved
            if not known:
                m.races.set(len(races))
            wall = events[-1].wall
            if wall:  # how far behind the live race the standings are (0 until emitted)
                m.lag.set(max(0.0, self.wall() - wall))

    def _gap(self, event: Event, last: int, topic: str) -> None:
        race, missing = event.race, event.seq - last - 1
        self.metrics.gaps.inc(missing)
        self._note("warning", "seq_gap", race=race, first=last + 1, last=event.seq - 1,
                   count=missing)  # fmt: skip
        reason = f"seqs {last + 1}..{event.seq - 1} missing; event {event.seq} applied"
        self._letter(race, intake.dead_event(reason, topic, event, wall=self.wall()))
        self._ask_resend(race, last + 1)

    def _joined(self, event: Event, gaps_before: int, topic: str) -> None:
        race = event.race
        missing = self.standings.races[race].gaps - gaps_before
        self.metrics.joins.inc()
        if missing <= 0:
            self._note("info", "race_joined", race=race, seq=event.seq, missing=0)
            return
        reason = (
            f"race joined midway from its meta: {missing} earlier seqs not folded;"
            f" event {event.seq} applied"
        )
        letter = intake.dead_event(reason, topic, event, wall=self.wall())
        short = Short(missing, event.seq, event.t_ms, letter)
        if self.partition is not None and self.settings.resend_on_gap:
            # A projector of a set subscribes to a race's events once its meta arrives:
            # the first events of a race that starts can pass before that. Its producer
            # sends the race again (a reset, then the race from its start): expected, and
            # no alarm unless the resend does not come (``due``).
            self._note("info", "race_joined", race=race, seq=event.seq, missing=missing,
                       resend=True)  # fmt: skip
            self.joining[race] = short
            self._ask_resend(race, 1)
            return
        self._short(race, short)

    def _short(self, race: str, short: Short) -> None:
        """A race joined with seqs missing that no resend brought back: counted as a gap,
        a warning with the operator's remedy, and a dead letter."""
        self.metrics.gaps.inc(short.missing)
        # What brings the exact board back: a backward seek replays the race from its
        # session_open. Any race time before the current one will do; this one is just
        # before the join, so the replay moves back the least.
        resync = f"chequered control {race} seek --time {resync_time(short.t_ms)}"
        self._note("warning", "race_joined", race=race, seq=short.seq, missing=short.missing,
                   resync=resync)  # fmt: skip
        self._letter(race, short.letter)

    def _ask_resend(self, race: str, from_seq: int) -> None:
        request = self.resends.ask(race, from_seq, self.clock())
        if request is not None:
            self.metrics.resends.inc()
            self._note("info", "resend_asked", race=race, from_seq=from_seq)
            self.outbox.append(request)

    def _letter(self, race: str | None, payload: bytes) -> None:
        self.metrics.dead_letters.inc()
        self.outbox.append(Publish(intake.dead_letter_topic(race, self.standings.races), payload))

    def _dead(self, reason: str, topic: str, payload: bytes, *, race: str | None) -> None:
        self._note("warning", "dead_letter", reason=reason, topic=topic, race=race)
        self._letter(race, payload)


class ProjectorCore(Folding):
    """Folds messages into standings and says what to checkpoint, acknowledge and publish,
    in that order, and when to come back (``next_deadline``)."""

    def checkpoints_due(self) -> list[WriteCheckpoint]:
        return self.saves.due(self.standings.races)

    def checkpoint_written(self, action: WriteCheckpoint) -> None:
        """The shell wrote ``action``'s record: the race is saved as of that state."""
        self.saves.written(action)

    def forget_unsaved(self) -> None:
        """No checkpoints are kept: nothing waits to be written."""
        self.saves.unsaved.clear()

    def flush(self) -> list[Action]:
        """Checkpoint, acknowledge what was folded, then publish (in that order).

        Acknowledging needs the checkpoint only: a board lost with a crash is
        published again on start (every race's snapshot). A dead letter can be
        lost that way; its log line is not.
        """
        actions: list[Action] = list(self.checkpoints_due())
        if self.pending_acks:
            actions.append(Acknowledge(tuple(self.pending_acks)))
            self.pending_acks = []
        actions += self.outbox
        self.outbox = []
        actions += self.boards.publications(self.standings.races, self.clock())
        return actions

    def everything(self) -> list[Action]:
        """On every (re)connection: a retained snapshot of every race (the broker may have
        restarted without its retained messages), after the checkpoints: a published seq
        must never be ahead of the checkpoint, or a restart would move it backwards."""
        actions: list[Action] = list(self.checkpoints_due())
        actions += self.boards.publications(self.standings.races, self.clock(), everything=True)
        return actions

    def expire(self, *, stopping: bool = False) -> bool:
        """Release the races whose meta did not come in time (all when ``stopping``);
        True if any was: a flush is due."""
        due = self.waiting.expired(self.clock(), everything=stopping)
        for race in due:
            self._release(race)
        return bool(due)

    def due(self, *, stopping: bool = False) -> list[Publish]:
        """What waited for its time and may go now: snapshots held back by the rate
        limit, resend requests held back by their interval."""
        first = len(self.outbox)  # dead letters before it wait for their flush
        for race, from_seq in sorted(self.resends.owed.items()):
            asked = len(self.outbox)
            self._ask_resend(race, from_seq)
            if len(self.outbox) > asked and race in self.joining:
                # The resend asked for at the join has not come: the hole is real.
                self._short(race, self.joining.pop(race))
        resends = self.outbox[first:]
        del self.outbox[first:]
        now = self.clock()
        # Deltas held by their window, of races whose checkpoint holds all that was
        # folded: a published seq must never be ahead of the checkpoint. The others go
        # with the next flush, which writes their checkpoint first.
        deltas = self.boards.publications(
            self.standings.races, now, held_back=self.saves.unsaved.keys(), windowless=stopping
        )
        return deltas + self.boards.owed_snapshots(now) + resends

    def next_deadline(self) -> float | None:
        """Monotonic time of the next thing ``tick`` does: an owed snapshot, the end of a
        wait for a race's meta, a held-back resend request."""
        due = self.boards.deadlines()
        due.extend(self.waiting.deadlines())
        due.extend(self.resends.deadlines())
        return min(due, default=None)

    def connection_lost(self) -> None:
        """Acknowledgements belong to the lost connection; the broker redelivers those
        messages and the fold drops them by seq."""
        self.pending_acks.clear()
