"""The race cache: what the broker retains per race, kept current by the deltas, fanned out.

``Races.on_message`` takes one MQTT message (topic leaf, payload, whether it was
retained, the wall clock) and hands the frames it implies to the subscribed
sessions: a delta to those in step, a snapshot to the others. A live snapshot
ahead of the cache is held for its delta (``Timers.later``); a delta that does
not chain marks the race stale and asks for a re-read (``Timers.resync``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from chequered.contract import board, control, topics
from consumers.gateway.core.session import Counts, Frame, Session
from consumers.gateway.core.settings import GatewaySettings

_json = msgspec.json.Encoder()


class Cancel(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """What the cache asks of the event loop."""

    def later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        """Call ``callback`` after ``delay_s`` seconds unless cancelled."""
        ...

    def resync(self) -> None:
        """Re-read the retained snapshots (the broker resends them on a new subscribe)."""
        ...


Note = tuple[str, dict[str, object]]
"""Something the shell should log: an event name and its fields."""


UNAPPLIED_MAX = 64
"""Deltas kept unapplied on a race's snapshot at most (the next live snapshot replaces
them, about once a second; past this they are applied, to bound the memory)."""


@dataclass(eq=False)
class RaceCache:
    """What the gateway knows of one race. Its standings are a snapshot and the deltas
    that followed it, applied only when a whole board is wanted (a client joins or falls
    out of step): a delta in step is forwarded as received, and about once a second the
    projector's live snapshot of the same seq takes the place of all of them."""

    race: str
    base: board.Snapshot | None = None
    unapplied: list[board.Delta] = field(default_factory=list)
    """Deltas chained on ``base``, in order, not yet applied."""
    meta: Any = None
    status: control.Status | None = None
    stale: bool = False
    backlog: deque[tuple[int, int, bytes]] = field(default_factory=deque)
    """Recent deltas as (seq, prev_seq, payload): bytes and ints, which the garbage
    collector does not walk (as Delta objects, 100 races' backlogs made each of its full
    collections take a quarter of a second)."""
    encoded: dict[str | None, bytes] = field(default_factory=dict)
    """Encoded snapshot per class filter (None: all cars), until the next change."""
    subscribers: set[Session] = field(default_factory=set)
    pending: tuple[board.Snapshot, bytes] | None = None
    """A live snapshot ahead of the cache, held for the delta that follows it."""
    pending_timer: Cancel | None = None
    _cars: tuple[board.Snapshot | None, frozenset[str]] = (None, frozenset())
    """The cars of ``base`` (``follow`` checks each patch against them)."""

    @property
    def snapshot(self) -> board.Snapshot | None:
        """The race's standings as of the last delta (None: none received yet)."""
        if self.unapplied:
            snapshot = self.base
            assert snapshot is not None
            for delta in self.unapplied:
                snapshot = board.apply_delta(snapshot, delta)
            self.base = snapshot
            self.unapplied.clear()
        return self.base

    @snapshot.setter
    def snapshot(self, value: board.Snapshot | None) -> None:
        self.base = value
        self.unapplied.clear()

    @property
    def seq(self) -> int | None:
        """The seq of the standings, without applying anything."""
        if self.unapplied:
            return self.unapplied[-1].seq
        return None if self.base is None else self.base.seq

    def follow(self, delta: board.Delta) -> None:
        """``delta`` chains on the standings: they now end with it. ``SeqMismatch`` (as
        ``apply_delta`` would raise it, now rather than when the board is wanted) for a
        patch of a car the board does not have: a delta never adds or removes a car."""
        assert self.base is not None
        if self._cars[0] is not self.base:
            self._cars = (self.base, frozenset(row.car for row in self.base.cars))
        on_board = self._cars[1]
        for patch in delta.cars:
            if patch.car not in on_board:
                raise board.SeqMismatch(
                    f"{delta.race}: delta {delta.seq} changes car {patch.car!r},"
                    f" which the snapshot at seq {self.base.seq} does not have"
                )
        self.unapplied.append(delta)
        if len(self.unapplied) > UNAPPLIED_MAX:
            _ = self.snapshot

    def wall(self) -> float:
        """The wall time of the standings, as ``apply_delta`` keeps it."""
        for delta in reversed(self.unapplied):
            if delta.wall:
                return delta.wall
        return 0.0 if self.base is None else self.base.wall

    def known(self) -> bool:
        return self.base is not None or self.meta is not None or self.status is not None

    def classes(self) -> list[str]:
        if self.base is None:
            return []
        # A class changes only with a snapshot (a delta cannot carry it): the base has them.
        seen = list(self.base.session.classes)
        for row in self.base.cars:
            if row.cls not in seen:
                seen.append(row.cls)
        return seen


def meta_name(meta: Any) -> str | None:
    """The race's display name in a retained meta document, wherever it keeps it."""
    if not isinstance(meta, dict):
        return None
    for holder in (meta, meta.get("session"), meta.get("facts")):
        if isinstance(holder, dict) and isinstance(holder.get("name"), str):
            name: str = holder["name"]
            return name
    return None


def status_frame(status: control.Status) -> bytes:
    # Every field spelled out: a null speed (as fast as possible) must reach the client.
    return _json.encode(
        {
            "type": "status",
            "race": status.race,
            "state": status.state,
            "speed": status.speed,
            "t_ms": status.t_ms,
            "end_ms": status.end_ms,
            "last_seq": status.last_seq,
            "wall": status.wall,
        }
    )


class Races:
    """Every race the broker retains something for, and the sessions that follow each."""

    def __init__(self, settings: GatewaySettings, counts: Counts, timers: Timers) -> None:
        self.settings = settings
        self.counts = counts
        self.timers = timers
        self.races: dict[str, RaceCache] = {}
        self.held: set[str] = set()
        """Races in the cache only because a subscribe waits for them (startup grace): they
        do not count against ``max_races``, which is for the races the broker names."""
        self.lag_s = 0.0
        """Seconds from the emission of the newest delta's event to its arrival here."""

    def __len__(self) -> int:
        return len(self.races) - len(self.held)

    def get(self, race: str) -> RaceCache | None:
        return self.races.get(race)

    def on_message(self, topic: str, payload: bytes, *, retained: bool, now: float) -> Note | None:
        """Take one MQTT message; ``now`` is the wall clock (for the lag)."""
        race = topics.race_of(topic)
        leaf = topics.leaf_of(topic)
        if race is None or leaf is None:
            return None
        self.counts.broker_messages.inc()
        cache = self.races.get(race)
        if cache is None or race in self.held:
            if not payload:
                return None
            if len(self) >= self.settings.max_races:
                self.counts.rejected["max_races"] += 1
                return None
            if cache is None:
                cache = self.races[race] = RaceCache(race)
        note: Note | None = None
        try:
            if leaf == topics.STANDINGS:
                self._on_snapshot(cache, payload, retained=retained)
            elif leaf == topics.STANDINGS_DELTA:
                note = self._on_delta(cache, payload, now)
            elif leaf == topics.META:
                cache.meta = msgspec.json.decode(payload) if payload else None
            elif leaf == topics.STATUS:
                self._on_status(cache, payload)
        except (msgspec.DecodeError, msgspec.ValidationError, board.SeqMismatch) as exc:
            self.counts.bad_payloads.inc()
            note = ("bad_payload", {"topic": topic, "error": str(exc)})
        if cache.known():
            self.held.discard(race)
        elif not cache.subscribers:
            self.held.discard(race)
            del self.races[race]
        return note

    def _on_snapshot(self, cache: RaceCache, payload: bytes, *, retained: bool) -> None:
        if not payload:
            self._drop_pending(cache)
            cache.snapshot = None
            cache.encoded.clear()
            return
        snapshot = board.decode_snapshot(payload)
        if snapshot.race != cache.race:
            raise board.SeqMismatch(f"snapshot of race {snapshot.race!r} on {cache.race!r}")
        seq = cache.seq
        if seq is not None:
            if snapshot.seq == seq:
                if cache.unapplied:
                    # The projector's board at the last delta's seq (it publishes the
                    # delta, then this): it replaces the deltas unapplied.
                    cache.snapshot = snapshot
                    cache.encoded = {None: payload}
                return
            if snapshot.seq < seq:
                # An older copy (re-read after a gap, or on reconnect) is not news, unless it
                # comes from a newer run of the race (seq restarted, later wall time).
                if snapshot.wall <= cache.wall():
                    return
            elif not (cache.stale or retained):
                # The projector publishes a live snapshot just before the delta of the same
                # seq: hold it, so that clients in step get the small delta, not the snapshot.
                self._hold(cache, snapshot, payload)
                return
        self._adopt(cache, snapshot, payload)

    def _adopt(self, cache: RaceCache, snapshot: board.Snapshot, payload: bytes) -> None:
        """Take a snapshot as the race's standings and send it to every subscriber."""
        self._drop_pending(cache)
        cache.snapshot = snapshot
        cache.encoded = {None: payload}
        # Deltas that arrived before their snapshot: replay the ones that chain on it.
        for _seq, prev_seq, raw in list(cache.backlog):
            if prev_seq == cache.snapshot.seq:
                cache.snapshot = board.apply_delta(cache.snapshot, board.decode_delta(raw))
                cache.encoded.clear()
        cache.stale = False
        for session in list(cache.subscribers):
            self.send_snapshot(session, cache)

    def _hold(self, cache: RaceCache, snapshot: board.Snapshot, payload: bytes) -> None:
        cache.pending = (snapshot, payload)
        if cache.pending_timer is None:
            cache.pending_timer = self.timers.later(
                self.settings.snapshot_grace_s, lambda: self.adopt_pending(cache)
            )

    def adopt_pending(self, cache: RaceCache) -> None:
        """A held snapshot that its delta did not catch up with: it is the news after all."""
        cache.pending_timer = None
        pending = cache.pending
        if pending is None:
            return
        seq = cache.seq
        if seq is not None and pending[0].seq <= seq:
            self._drop_pending(cache)
            return
        self._adopt(cache, *pending)

    @staticmethod
    def _drop_pending(cache: RaceCache) -> None:
        cache.pending = None
        if cache.pending_timer is not None:
            cache.pending_timer.cancel()
            cache.pending_timer = None

    def drop_all_pending(self) -> None:
        for cache in self.races.values():
            self._drop_pending(cache)

    def _on_delta(self, cache: RaceCache, payload: bytes, now: float) -> Note | None:
        delta = board.decode_delta(payload)
        if delta.wall:  # producer to gateway, through the projector
            self.lag_s = max(0.0, now - delta.wall)
        if delta.race != cache.race:
            raise board.SeqMismatch(f"delta of race {delta.race!r} on {cache.race!r}")
        cache.backlog.append((delta.seq, delta.prev_seq, payload))
        while len(cache.backlog) > self.settings.delta_backlog:
            cache.backlog.popleft()
        seq = cache.seq
        if seq is not None and delta.seq <= seq:
            return None  # already folded into the snapshot
        if seq is not None and delta.prev_seq == seq:
            self._forward(cache, delta, payload)
            pending = cache.pending
            if pending is not None and pending[0].seq <= delta.seq:
                if pending[0].seq == delta.seq:
                    # The projector's board at this seq: it replaces the deltas unapplied.
                    cache.snapshot = pending[0]
                    cache.encoded = {None: pending[1]}
                self._drop_pending(cache)
            return None
        at = seq
        if cache.pending is not None:
            self.adopt_pending(cache)  # replays this delta too when it chains on the snapshot
            seq = cache.seq
            if seq is not None and seq >= delta.seq:
                return None
        note: Note | None = None
        if not cache.stale:
            self.counts.gaps.inc()
            fields = {"race": cache.race, "at": at, "delta": delta.seq, "prev_seq": delta.prev_seq}
            note = ("standings_gap", dict(fields))
        cache.stale = True
        self.timers.resync()
        return note

    def _forward(self, cache: RaceCache, delta: board.Delta, payload: bytes) -> None:
        """Take a delta that follows the cache and pass it on to each subscriber."""
        cache.follow(delta)
        cache.encoded.clear()
        cache.stale = False
        race = cache.race
        by_class: dict[str | None, Frame] = {None: Frame("delta", payload, race)}
        classes: dict[str, str] | None = None
        for session in list(cache.subscribers):
            sub = session.subs[race]
            if sub.last_seq != delta.prev_seq:
                self.send_snapshot(session, cache)
                continue
            frame = by_class.get(sub.cls)
            if frame is None:
                # A car's patch names its class only when that changed: the board knows it.
                if classes is None:
                    assert cache.base is not None  # the delta chains on it
                    classes = {row.car: row.cls for row in cache.base.cars}
                cars = [p for p in delta.cars if classes.get(p.car) == sub.cls]
                data = board.encode(msgspec.structs.replace(delta, cars=cars))
                frame = by_class[sub.cls] = Frame("delta", data, race)
            sub.last_seq = delta.seq
            session.send(frame)

    def _on_status(self, cache: RaceCache, payload: bytes) -> None:
        cache.status = control.decode_status(payload) if payload else None
        if cache.status is None:
            return
        frame = Frame("status", status_frame(cache.status), cache.race)
        for session in list(cache.subscribers):
            session.send(frame)

    def snapshot_bytes(self, cache: RaceCache, cls: str | None) -> bytes:
        assert cache.snapshot is not None
        data = cache.encoded.get(cls)
        if data is None:
            snapshot = cache.snapshot
            if cls is not None:
                snapshot = msgspec.structs.replace(
                    snapshot, cars=[r for r in snapshot.cars if r.cls == cls]
                )
            data = cache.encoded[cls] = board.encode(snapshot)
        return data

    def send_snapshot(self, session: Session, cache: RaceCache) -> None:
        if cache.snapshot is None:
            return
        sub = session.subs[cache.race]
        # Whatever of this race still waits in the outbox is superseded by the snapshot.
        self.counts.frames_dropped.inc(session.outbox.drop_race(cache.race))
        sub.last_seq = cache.snapshot.seq
        session.send(Frame("snapshot", self.snapshot_bytes(cache, sub.cls), cache.race))

    def fresh(self, session: Session, race: str) -> Frame | None:
        """The latest snapshot of ``race`` for ``session`` (coalescing its backlog)."""
        cache = self.races.get(race)
        sub = session.subs.get(race)
        if cache is None or cache.snapshot is None or sub is None:
            return None
        sub.last_seq = cache.snapshot.seq
        return Frame("snapshot", self.snapshot_bytes(cache, sub.cls), race)

    def hold(self, race: str) -> RaceCache:
        """A cache entry for a subscribe that waits for the race's retained standings."""
        cache = self.races.get(race)
        if cache is None:
            cache = self.races[race] = RaceCache(race)
            self.held.add(race)
        return cache

    def may_hold(self, race: str) -> bool:
        """Whether one more race may wait for its standings (held subscribes have a budget
        of their own, ``max_races`` again, so that they cannot crowd out real races)."""
        return race in self.races or len(self.held) < self.settings.max_races

    def leave(self, session: Session) -> None:
        """Forget a session that went away."""
        for race in session.subs:
            cache = self.races.get(race)
            if cache is not None:
                cache.subscribers.discard(session)

    def race_list(self) -> list[dict[str, object]]:
        return race_list(self.races)


def race_list(races: dict[str, RaceCache]) -> list[dict[str, object]]:
    """The ``list`` answer: one entry per race the broker retains anything for."""
    listed: list[dict[str, object]] = []
    for race, cache in sorted(races.items()):
        if not cache.known():
            continue
        session = cache.snapshot.session if cache.snapshot is not None else None
        status = cache.status
        listed.append(
            {
                "race": race,
                "name": meta_name(cache.meta) or (session.name if session else "") or race,
                "state": status.state if status else None,
                "speed": status.speed if status else (session.speed if session else None),
                "t_ms": status.t_ms if status else (session.t_ms if session else None),
                "seq": cache.snapshot.seq if cache.snapshot is not None else None,
                "flag": session.flag if session else None,
                "classes": cache.classes(),
                "stale": cache.stale,
            }
        )
    return listed
