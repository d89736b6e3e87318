"""A hostile feed, without I/O: turns a race's ordered outgoing messages into the ones
real feeds and brokers deliver, at given rates, reproducibly by seed.

``Injector.message`` takes each events message the producer would publish and
returns what to publish instead, in order: nothing (a drop), the message twice,
the message late (behind later ones), a stall or burst before it, a malformed
payload beside it, a backward seek after it; every fault with a label for the
``injected`` topic. It keeps the record of what it did and what a consumer that
ignores seqs it has passed must count (``expected``). The producer's shell
(``simulator.live.hostile``) publishes what it returns.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from chequered.contract import topics
from chequered.contract.control import Seek
from chequered.contract.control import encode as encode_command
from chequered.contract.events import PayloadError, decode, unbatch
from chequered.contract.injected import FAULT_KINDS, FaultKind, Injected

MAX_REORDER_WINDOW = 64
"""Longest reorder window: a held message waits behind at most this many others, and
the producer's window of publishes in flight (64) is what a broker can reorder."""
MAX_HOLD_S = 3600.0
"""Longest burst or stall: a feed held longer is a feed that is gone."""
MALFORMED_MAX_BYTES = 1024
"""A truncated payload keeps at most this many bytes of the message it was cut from."""
PROTECTED_KINDS = frozenset({"session_open", "reset", "session_close"})
"""Messages holding these are passed untouched: without a resend, a consumer could not
recover the session's facts, a restart or the classification, and the faults are
the ones a consumer can survive (a drop elsewhere costs laps the classification fills)."""
MALFORMED_FORMS = ("not_json", "truncated", "unknown_kind", "wrong_types")


class FaultError(ValueError):
    """Fault settings that cannot be used (the message names the setting)."""


@dataclass(frozen=True, slots=True)
class FaultRates:
    """How hostile the feed is: each rate is a probability per events message (0 to 1)."""

    seed: int = 0
    duplicate: float = 0.0
    """The message is published twice in a row."""
    drop: float = 0.0
    """The message is not published: its seqs are a gap."""
    reorder: float = 0.0
    """The message is held back and published behind 1 to ``reorder_window`` later ones."""
    reorder_window: int = 4
    burst: float = 0.0
    """The feed holds everything for ``burst_s``, then publishes what piled up at once."""
    burst_s: float = 0.5
    stall: float = 0.0
    """The race goes silent (events and status) for ``stall_s``, then resumes."""
    stall_s: float = 5.0
    seek_back: float = 0.0
    """A backward seek to an earlier race time is sent on the race's control topic."""
    max_seeks: int = 1
    """Backward seeks injected per race at most: each one replays the race from its start."""
    malformed: float = 0.0
    """A malformed payload is published on the events topic before the message."""
    max_faults: int | None = None
    """Faults decided per race at most, then the feed is honest (a message held back
    still goes late): a consumer that recovers by asking for a resend can then end
    exact, where a feed hostile for ever would keep it replaying. None: no end."""

    def __post_init__(self) -> None:
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not 0.0 <= rate <= 1.0:
                raise FaultError(f"--{kind.replace('_', '-')} {rate:g}: give a rate from 0 to 1")
        if not 1 <= self.reorder_window <= MAX_REORDER_WINDOW:
            raise FaultError(
                f"--reorder-window {self.reorder_window}: give 1 to {MAX_REORDER_WINDOW}"
            )
        for name in ("burst_s", "stall_s"):
            if not 0.0 < getattr(self, name) <= MAX_HOLD_S:
                raise FaultError(
                    f"--{name.replace('_', '-')}: give seconds, above 0, to {MAX_HOLD_S:g}"
                )
        if self.max_seeks < 0:
            raise FaultError(f"--max-seeks {self.max_seeks}: must not be negative")
        if self.max_faults is not None and self.max_faults < 0:
            raise FaultError(f"--max-faults {self.max_faults}: must not be negative")

    @property
    def active(self) -> bool:
        return any(getattr(self, kind) > 0 for kind in FAULT_KINDS)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One publish the shell makes, in order."""

    leaf: str
    """Topic leaf of the race: events, injected or control."""
    payload: bytes
    pause_s: float = 0.0
    """Hold the whole feed this long before publishing (a burst or a stall)."""
    original: bool = False
    """The message given to ``message`` itself: its publish is the one the producer awaits."""


@dataclass(slots=True)
class Expected:
    """What a consumer that keeps the highest seq seen, and ignores every event at or
    below it, counts from the stream as published (ours does: consumers.standings)."""

    gaps: int = 0
    """Seqs skipped over (dropped, or not yet arrived when a later one did). A skip that
    ends at a ``reset`` is not counted: the reset replaces what was missed."""
    gap_events: int = 0
    """Events that arrived after a skip: the times a gap was found."""
    duplicates: int = 0
    """Events at or below the highest seq seen when they arrived."""
    malformed: int = 0
    """Payloads on the events topic that are not messages of the contract."""
    resets: int = 0
    session_gaps: int = 0
    """Of ``gaps``, those since the session last opened (a reset opens it again): what a
    board of the race shows (``session.gaps`` of our standings)."""


class _Probe(msgspec.Struct):
    kind: str = ""
    seq: int = 0
    t_ms: int = 0
    events: list[_ProbeEvent] = []


class _ProbeEvent(msgspec.Struct):
    kind: str = ""
    seq: int = 0
    t_ms: int = 0


_probe = msgspec.json.Decoder(_Probe)
_label = msgspec.json.Encoder()


@dataclass(slots=True)
class _Held:
    payload: bytes
    first: int
    last: int
    events: int
    wait: int
    """Events messages to go out before this one."""
    passed: int = 0
    """Events messages gone out since it was held."""


@dataclass
class Injector:
    """One race's hostile feed: its random draws, what it holds back, and its record."""

    race: str
    rates: FaultRates
    record: list[Injected] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAULT_KINDS, 0))
    expected: Expected = field(default_factory=Expected)
    high: int = 0
    """Highest seq published so far (for ``expected``)."""
    _rng: random.Random = field(init=False, repr=False)
    _held: list[_Held] = field(default_factory=list, repr=False)
    _closed: bool = False

    def __post_init__(self) -> None:
        # One stream of draws per race, the same for the same seed and race.
        self._rng = random.Random(f"{self.rates.seed}:{self.race}")

    def message(self, payload: bytes, now: float) -> list[Outgoing]:
        """What to publish, in order, in place of the events message ``payload``."""
        rates, rng = self.rates, self._rng
        first, last, n, t_ms, kinds = _describe(payload)
        # Every draw is made for every message, in one order, so that one fault's rate
        # does not change where the others fall.
        draws = {kind: rng.random() for kind in FAULT_KINDS}
        extra = rng.random()
        out: list[Outgoing] = []
        decided = len(self.record) + len(self._held)  # a held message is labelled late
        spent = rates.max_faults is not None and decided >= rates.max_faults
        if kinds & PROTECTED_KINDS or n == 0 or spent:
            out.append(Outgoing(topics.EVENTS, payload, original=True))
            self._closed = self._closed or "session_close" in kinds
            out += self._released(now, everything="session_close" in kinds)
            return self._account(out)
        pause = 0.0
        if draws["stall"] < rates.stall:
            pause += rates.stall_s
            out.append(self._label(now, "stall", hold_s=rates.stall_s))
        if draws["burst"] < rates.burst:
            pause += rates.burst_s
            out.append(self._label(now, "burst", hold_s=rates.burst_s))
        if draws["malformed"] < rates.malformed:
            form = MALFORMED_FORMS[int(extra * len(MALFORMED_FORMS))]
            garbage = self._garbage(form, payload, last)
            text = garbage.decode("utf-8", "replace")
            out.append(self._label(now, "malformed", form=form, payload=text))
            out.append(Outgoing(topics.EVENTS, garbage))
        span = {"first_seq": first, "last_seq": last, "events": n}
        if draws["drop"] < rates.drop:
            out.append(self._label(now, "drop", **span))
            out.append(Outgoing(topics.EVENTS, b"", original=True))  # nothing published
        elif draws["reorder"] < rates.reorder:
            behind = 1 + int(extra * rates.reorder_window) % rates.reorder_window
            self._held.append(_Held(payload, first, last, n, behind))
            out.append(Outgoing(topics.EVENTS, b"", original=True))  # published later
        else:
            out.append(Outgoing(topics.EVENTS, payload, original=True))
            if draws["duplicate"] < rates.duplicate:
                out.append(self._label(now, "duplicate", **span))
                out.append(Outgoing(topics.EVENTS, payload))
            out += self._released(now)
        if (
            draws["seek_back"] < rates.seek_back
            and self.counts["seek_back"] < rates.max_seeks
            and t_ms > 0
            and not self._closed
        ):
            target = int(extra * t_ms)
            seek = Seek(id=f"injected-seek-{self.counts['seek_back'] + 1}", t_ms=target)
            out.append(self._label(now, "seek_back", target_ms=target, **span))
            out.append(Outgoing(topics.CONTROL, encode_command(seek)))
        if pause and out:
            out[0] = Outgoing(out[0].leaf, out[0].payload, pause, out[0].original)
        return self._account(out)

    def flush(self, now: float) -> list[Outgoing]:
        """Everything still held back, to publish before the feed closes."""
        return self._account(self._released(now, sent=False, everything=True))

    @property
    def held(self) -> int:
        return len(self._held)

    def summary(self) -> dict[str, object]:
        """What was injected and what a seq-keeping consumer must have counted."""
        e = self.expected
        return {
            "race": self.race,
            "injected": {k: v for k, v in self.counts.items() if v},
            "expected": {
                "gaps": e.gaps,
                "gap_events": e.gap_events,
                "duplicates": e.duplicates,
                "malformed": e.malformed,
                "resets": e.resets,
                "session_gaps": e.session_gaps,
            },
            "last_seq": self.high,
        }

    # -- inside ------------------------------------------------------------------

    def _released(self, now: float, *, sent: bool = True, everything: bool = False
                  ) -> list[Outgoing]:  # fmt: skip
        """Held messages whose turn has come, each behind the message just sent (if ``sent``)."""
        out: list[Outgoing] = []
        keep: list[_Held] = []
        for held in self._held:
            held.passed += int(sent)
            if everything or held.passed >= held.wait:
                out.append(self._label(now, "reorder", first_seq=held.first, last_seq=held.last,
                                       events=held.events, behind=held.passed))  # fmt: skip
                out.append(Outgoing(topics.EVENTS, held.payload))
            else:
                keep.append(held)
        self._held = keep
        return out

    def _label(self, now: float, fault: FaultKind, **fields: object) -> Outgoing:
        self.counts[fault] += 1
        label = Injected(race=self.race, fault=fault, n=len(self.record) + 1, wall=now,
                         **fields)  # type: ignore[arg-type]  # fmt: skip
        self.record.append(label)
        return Outgoing(topics.INJECTED, _label.encode(label))

    def _garbage(self, form: str, payload: bytes, last: int) -> bytes:
        if form == "not_json":
            return b"\x00\xffnot json: injected"
        if form == "truncated":
            return payload[: min(len(payload) // 2, MALFORMED_MAX_BYTES)]
        if form == "unknown_kind":
            return b'{"kind":"teleport","race":"%s","seq":%d,"t_ms":0}' % (
                self.race.encode(),
                last,
            )
        return b'{"kind":"lap","race":"%s","seq":"seven","t_ms":-1}' % self.race.encode()

    def _account(self, out: list[Outgoing]) -> list[Outgoing]:
        """Follow what goes out on the events topic as a seq-keeping consumer would."""
        e = self.expected
        result: list[Outgoing] = []
        for item in out:
            result.append(item)
            if item.leaf != topics.EVENTS or not item.payload:
                continue
            seqs = _seqs(item.payload)
            if seqs is None:
                e.malformed += 1
                continue
            for seq, kind in seqs:
                if seq <= self.high:
                    e.duplicates += 1
                    continue
                if kind in ("reset", "session_open"):
                    e.resets += kind == "reset"
                    e.session_gaps = 0
                elif self.high and seq > self.high + 1:
                    e.gaps += seq - self.high - 1
                    e.session_gaps += seq - self.high - 1
                    e.gap_events += 1
                self.high = seq
        return result


def _describe(payload: bytes) -> tuple[int, int, int, int, set[str]]:
    """First seq, last seq, event count, last race time and kinds of an events message."""
    try:
        probe = _probe.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return 0, 0, 0, 0, set()
    items: Iterable[_Probe | _ProbeEvent] = probe.events if probe.kind == "batch" else [probe]
    seqs = [(i.seq, i.t_ms, i.kind) for i in items]
    if not seqs:
        return 0, 0, 0, 0, set()
    return seqs[0][0], seqs[-1][0], len(seqs), seqs[-1][1], {k for _, _, k in seqs}


def _seqs(payload: bytes) -> list[tuple[int, str]] | None:
    """The seqs and kinds in an events message; None if it is not one of the contract."""
    try:
        message = decode(payload)
    except PayloadError:
        return None
    return [(event.seq, str(event.__struct_config__.tag)) for event in unbatch(message)]
