"""One websocket client as the core sees it: its subscriptions, its bounded outbox, its limits.

Frames meant for a client are handed to ``Session.send``: while its socket has
room they are due at the end of the turn (the shell writes them, ``take``);
otherwise they wait in a bounded outbox, and a backlog that grows past its
bounds becomes one fresh snapshot per race. Nothing here waits or writes.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from consumers.gateway.core.settings import GatewaySettings

CLOSE_POLICY = 1008

FrameKind = Literal["snapshot", "delta", "status", "reply"]


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    data: bytes
    race: str | None = None


class TokenBucket:
    """Rate limit: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Count:
    """A number that only goes up; read by the metrics at scrape time."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


@dataclass(slots=True)
class Counts:
    """What the core counts, as plain numbers (the shell exposes them as Prometheus metrics)."""

    connections: Count = field(default_factory=Count)
    frames_out: Count = field(default_factory=Count)
    bytes_out: Count = field(default_factory=Count)
    writes: Count = field(default_factory=Count)
    coalesced: Count = field(default_factory=Count)
    frames_dropped: Count = field(default_factory=Count)
    broker_messages: Count = field(default_factory=Count)
    bad_payloads: Count = field(default_factory=Count)
    gaps: Count = field(default_factory=Count)
    resyncs: Count = field(default_factory=Count)
    broker_connects: Count = field(default_factory=Count)
    deflated: Count = field(default_factory=Count)
    deflate_shared: Count = field(default_factory=Count)
    deflate_in_bytes: Count = field(default_factory=Count)
    deflate_out_bytes: Count = field(default_factory=Count)
    errors: Counter[str] = field(default_factory=Counter)
    """Error frames sent, by error code."""
    closes: Counter[str] = field(default_factory=Counter)
    """Connections closed, by close-code group (``close_label``)."""
    rejected: Counter[str] = field(default_factory=Counter)
    """Connections refused, and races beyond ``max_races``, by reason."""
    http: Counter[str] = field(default_factory=Counter)
    """Plain HTTP requests, by path (unknown paths together as ``other``)."""
    queue_high_water: int = 0
    """Most frames ever waiting in one client's outbox."""

    def values(self) -> dict[str, float]:
        """The unlabelled counts by name (what a load test reports)."""
        found = {name: getattr(self, name) for name in self.__slots__}
        return {name: float(c.value) for name, c in found.items() if isinstance(c, Count)}


def close_label(code: int) -> str:
    """The metrics label of a close code: a client picks the code, not the number of series.

    RFC 6455 codes (1000-1015) keep their number; the ranges registered for libraries
    and applications (3000-3999) and for private use (4000-4999) are one label each.
    """
    if 1000 <= code <= 1015:
        return str(code)
    if 3000 <= code <= 3999:
        return "application"
    if 4000 <= code <= 4999:
        return "private"
    return "invalid"


def clip(value: object, limit: int) -> str:
    """A client-supplied value fit for a log line: at most ``limit`` characters of its text."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


class Outbox:
    """One client's bounded queue of encoded frames.

    When it grows past its bounds, ``coalesce`` replaces every queued snapshot
    and delta of a race by one fresh snapshot, and keeps only the latest status:
    what a client that cannot keep up needs, in a size that does not grow.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames: deque[Frame] = deque()
        self.size = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self.frames)

    def push(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.size += len(frame.data)
        self.high_water = max(self.high_water, len(self.frames))

    def pop(self) -> Frame:
        frame = self.frames.popleft()
        self.size -= len(frame.data)
        return frame

    def over(self) -> bool:
        return len(self.frames) > self.max_frames or self.size > self.max_bytes

    def drop_race(self, race: str) -> int:
        """Drop the queued frames of one race; returns how many."""
        kept = deque(f for f in self.frames if f.race != race)
        dropped = len(self.frames) - len(kept)
        self.frames = kept
        self.size = sum(len(f.data) for f in kept)
        return dropped

    def coalesce(self, fresh: Callable[[str], Frame | None]) -> int:
        """Replace each race's queued standings by ``fresh(race)``; returns frames dropped."""
        races: list[str] = []
        statuses: dict[str, Frame] = {}
        kept: deque[Frame] = deque()
        for frame in self.frames:
            if frame.race is None:
                kept.append(frame)
            elif frame.kind == "status":
                statuses[frame.race] = frame
            elif frame.race not in races:
                races.append(frame.race)
        before = len(self.frames)
        kept.extend(statuses.values())
        for race in races:
            snapshot = fresh(race)
            if snapshot is not None:
                kept.append(snapshot)
        self.frames = kept
        self.size = sum(len(f.data) for f in kept)
        return before - len(kept)


@dataclass(slots=True)
class Subscription:
    cls: str | None
    last_seq: int | None = None
    """Seq of the last standings frame queued to the client for this race."""
    request_id: object = None
    """The id of the subscribe, for the refusal of one held through the startup grace."""


class Port(Protocol):
    """What a session needs of the connection it speaks for (the shell implements it)."""

    def gone(self) -> bool:
        """Whether the connection is closing or closed: nothing more is owed to it."""
        ...

    def room(self, pending: int) -> bool:
        """Whether the socket takes ``pending`` more bytes now (open and not closing, idle,
        under its limit): never when ``gone``."""
        ...

    def flush_later(self) -> None:
        """Write the frames due (``Session.take``) at the end of this turn of the event loop."""
        ...

    def wake(self) -> None:
        """The outbox has frames: write them at the client's pace."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake (without waiting for it)."""
        ...


Fresh = Callable[["Session", str], "Frame | None"]
"""The latest snapshot of a race for a session (marking it sent), or None: for coalescing."""


class Session:
    """One client's state: subscriptions, frames due, outbox and rate limits."""

    def __init__(
        self, address: str, port: Port, settings: GatewaySettings, counts: Counts, now: float
    ) -> None:
        self.address = address
        self.port = port
        self.counts = counts
        self.subs: dict[str, Subscription] = {}
        self.outbox = Outbox(settings.queue_frames, settings.queue_bytes)
        self.frames = TokenBucket(settings.rate_per_s, settings.burst, now)
        self.subscribes = TokenBucket(settings.subscribe_rate_per_s, settings.subscribe_burst, now)
        self.max_subscriptions = settings.max_subscriptions
        self.due: list[Frame] = []
        """Frames the socket takes at the end of this turn of the loop, in order."""
        self.due_bytes = 0
        self.coalesced = 0
        self.closing = False
        self.fresh: Fresh = lambda _session, _race: None
        """Set by the race cache that this session subscribes through."""

    def send(self, frame: Frame) -> None:
        """Queue a frame without ever waiting on the client."""
        if self.closing:
            return
        port = self.port
        if not self.outbox.frames and port.room(self.due_bytes):
            # The socket takes it at the end of this turn of the event loop, with the
            # other frames due to this client: one write (one system call) per turn.
            if not self.due:
                port.flush_later()
            self.due.append(frame)
            self.due_bytes += len(frame.data)
            return
        if port.gone():
            return  # on its way out: nothing more is owed to it
        self.enqueue(frame)
        port.wake()

    def take(self) -> tuple[list[Frame], int]:
        """The frames due and their size, handed over to be written."""
        due, size = self.due, self.due_bytes
        self.due = []
        self.due_bytes = 0
        return due, size

    def enqueue(self, frame: Frame) -> None:
        """Queue a frame the socket cannot take now.

        Past its bounds the backlog becomes one fresh snapshot per race; a client still
        over them (its replies alone fill it: it asks and never reads) is closed.
        """
        outbox = self.outbox
        counts = self.counts
        outbox.push(frame)
        if outbox.over():
            dropped = outbox.coalesce(lambda race: self.fresh(self, race))
            self.coalesced += 1
            counts.coalesced.inc()
            counts.frames_dropped.inc(dropped)
            if outbox.over():
                self.close(CLOSE_POLICY, "outbox overflow: client is not reading")
        counts.queue_high_water = max(counts.queue_high_water, outbox.high_water)

    def close(self, code: int, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.port.close(code, reason)

    def stats(self) -> ClientStats:
        return ClientStats(
            address=self.address,
            queued_frames=len(self.outbox),
            queued_bytes=self.outbox.size,
            high_water=self.outbox.high_water,
            coalesced=self.coalesced,
            subscriptions={race: sub.last_seq for race, sub in self.subs.items()},
        )


@dataclass(frozen=True, slots=True)
class ClientStats:
    address: str
    queued_frames: int
    queued_bytes: int
    high_water: int
    coalesced: int
    subscriptions: dict[str, int | None]
