"""The live feed of one race, without I/O: which events go out when, and what commands do.

A ``Feed`` walks a race's timeline against a ``ReplayClock``, numbers the
events it hands out with the wire ``seq`` (contiguous from 1 for the whole
stream, whatever seeks happen) and stamps their emission time. Commands
from the control topic change the clock and may add events (``clock``,
``reset``). The producer is a thin asyncio shell around it.

Stream shapes (see ``docs/PROTOCOL.md``):

* start: ``session_open``, ``clock(start)``, then the race at the clock's pace;
* pause, resume, speed: one ``clock`` event, the race clock does not jump;
* seek forward to T: ``clock(seek, target_ms=T)``, then every event up to T
  as fast as possible, then the race at pace from T;
* seek backward to T: ``reset(target_ms=T)``, ``session_open``,
  ``clock(seek, target_ms=T)``, then the race from its start up to T as fast
  as possible, then at pace.

A consumer that folds the stream (starting afresh at every ``reset``) ends in
the same state as one that watched the race from the start to the same point.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from msgspec.structs import replace

from chequered.contract.control import (
    Command,
    CommandError,
    Pause,
    ProducerState,
    Reply,
    Resend,
    Resume,
    Seek,
    Status,
    decode_command,
)
from chequered.contract.events import Clock, ClockAction, Event, Flag, Lap, Reset, SessionOpened
from simulator.live.clock import ReplayClock, SpeedError

MAX_CMD_NAME = 32
REMEMBERED_COMMAND_IDS = 256
"""Command ids remembered per race so that a repeated one is answered, not run again.
A controller retries within seconds; 256 covers far more than any retry window."""
"""Longest command name echoed back in a reply to a command that was not understood."""


class TimelineError(ValueError):
    """A timeline the feed cannot replay."""


class CommandRejected(ValueError):
    """A well-formed command that cannot be carried out now (the message says why)."""


def command_name(command: Command) -> str:
    tag = type(command).__struct_config__.tag
    return str(tag)


def lap_starts(timeline: Sequence[Event]) -> dict[int, int]:
    """Race time at which the leader starts each lap: lap 1 at the green flag (or 0),
    lap N when the first car completes lap N - 1. The leader's last lap is the last
    one started: the chequered flag ends the race as it completes it."""
    starts: dict[int, int] = {}
    for event in timeline:
        if isinstance(event, Flag) and event.flag == "green" and 1 not in starts:
            starts[1] = event.t_ms
        elif isinstance(event, Lap) and event.lap + 1 not in starts:
            starts[event.lap + 1] = event.t_ms
    starts.setdefault(1, 0)
    if len(starts) > 1:
        del starts[max(starts)]
    return starts


def _check_timeline(race: str, timeline: Sequence[Event]) -> None:
    if not timeline or not isinstance(timeline[0], SessionOpened):
        raise TimelineError(f"{race}: a timeline must start with a session_open event")
    for before, after in itertools.pairwise(timeline):
        if after.t_ms < before.t_ms:
            raise TimelineError(
                f"{race}: timeline goes back in time at seq {after.seq}"
                f" ({after.t_ms} ms after {before.t_ms} ms)"
            )
        if isinstance(after, SessionOpened | Reset | Clock):
            raise TimelineError(
                f"{race}: timeline seq {after.seq} is a {after.__struct_config__.tag} event;"
                " only the first event opens the session and clock events come from the producer"
            )


@dataclass
class Feed:
    """One race's position in its timeline, its clock and its wire numbering."""

    race: str
    timeline: Sequence[Event]
    clock: ReplayClock
    cursor: int = 0
    """Index in ``timeline`` of the next event to emit."""
    seq: int = 0
    """Wire seq of the last event handed out."""
    position_ms: int = 0
    """Race time of the last timeline event emitted since the start or the last reset."""
    stream_ms: int = 0
    """Race time of the last event of any kind emitted since the start or the last reset."""
    commands: int = 0
    rejected: int = 0
    repeated: int = 0
    """Commands dropped because their id had been carried out already."""
    _laps: dict[int, int] = field(default_factory=dict, repr=False)
    _replies: OrderedDict[str, Reply] = field(default_factory=OrderedDict, repr=False)
    """Replies to the newest commands that carried an id, oldest first."""

    @classmethod
    def create(
        cls,
        race: str,
        timeline: Sequence[Event],
        *,
        now: float,
        speed: float | None = 1.0,
        paused: bool = False,
    ) -> Feed:
        _check_timeline(race, timeline)
        clock = ReplayClock.started(now, speed=speed, paused=paused)
        return cls(race=race, timeline=timeline, clock=clock, _laps=lap_starts(timeline))

    # -- what the race is doing ----------------------------------------------

    @property
    def end_ms(self) -> int:
        return self.timeline[-1].t_ms

    @property
    def started(self) -> bool:
        return self.seq > 0

    @property
    def finished(self) -> bool:
        return self.cursor >= len(self.timeline)

    @property
    def state(self) -> ProducerState:
        if self.finished:
            return "finished"
        return "paused" if self.clock.paused else "running"

    def race_ms(self, now: float) -> int:
        if self.finished:
            return self.end_ms
        return min(int(self.clock.race_ms(now)), self.end_ms)

    def status(self, now: float, reply: Reply | None = None) -> Status:
        return Status(
            race=self.race,
            state=self.state,
            speed=self.clock.speed,
            t_ms=self.race_ms(now),
            last_seq=self.seq or None,
            end_ms=self.end_ms,
            wall=now,
            reply=reply,
            rejected=self.rejected,
        )

    def offline_status(self, now: float) -> Status:
        """What the last will (or a clean stop) says: nobody serves this race now."""
        return msgspec.structs.replace(self.status(now), state="offline")

    # -- emitting ----------------------------------------------------------------

    def start(self, now: float) -> list[Event]:
        """The first events: the session opens and the clock starts (from race time 0, now)."""
        if self.started:
            return []
        self.clock = ReplayClock.started(now, speed=self.clock.speed, paused=self.clock.paused)
        first = self._emit(now)
        return [first, self._clock_event("start", now, t_ms=first.t_ms)]

    def take(self, now: float, limit: int) -> list[Event]:
        """Up to ``limit`` events that are due at ``now``, stamped and numbered."""
        horizon = self.clock.horizon_ms(now)
        out: list[Event] = []
        while (
            len(out) < limit
            and self.cursor < len(self.timeline)
            and self.timeline[self.cursor].t_ms <= horizon
        ):
            out.append(self._emit(now))
        if out:
            self.clock = self.clock.advanced(out[-1].t_ms)
        return out

    def wake_at(self) -> float | None:
        """Wall time at which the next event falls due; None while nothing will."""
        if self.finished:
            return None
        return self.clock.wall_at(self.timeline[self.cursor].t_ms)

    def _emit(self, now: float) -> Event:
        event = self.timeline[self.cursor]
        self.cursor += 1
        self.position_ms = self.stream_ms = event.t_ms
        return self._stamp(event, now)

    def _stamp(self, event: Event, now: float) -> Event:
        self.seq += 1
        return replace(event, race=self.race, seq=self.seq, wall=now)

    def _stream_ms(self, wanted: float) -> int:
        """A race time for a producer event that keeps ``t_ms`` non-decreasing in the stream:
        not before the last event emitted, not after the next one due."""
        upper = self.end_ms if self.finished else self.timeline[self.cursor].t_ms
        self.stream_ms = max(self.stream_ms, min(math.floor(wanted), upper))
        return self.stream_ms

    def _clock_event(
        self, action: ClockAction, now: float, *, t_ms: int, target_ms: int | None = None
    ) -> Clock:
        self.seq += 1
        return Clock(
            race=self.race,
            seq=self.seq,
            t_ms=t_ms,
            wall=now,
            action=action,
            speed=self.clock.speed,
            paused=self.clock.paused,
            target_ms=target_ms,
        )

    # -- commands ----------------------------------------------------------------

    def reject(self, payload: bytes, error: str) -> Reply:
        """Count and answer a control payload refused before decoding (retained, too large)."""
        self.commands += 1
        self.rejected += 1
        cmd, cid = _guess_name_and_id(payload)
        return Reply(cmd=cmd, ok=False, id=cid, error=error)

    def handle(self, payload: bytes, now: float) -> tuple[Reply, list[Event]]:
        """Carry out one control payload: the reply for the status topic and the events to send.

        Anything wrong (not JSON, unknown command, wrong types, a speed out of
        range, a seek past the end) is rejected with ``ok=False`` and an error
        that names the fault; the clock is then unchanged.
        """
        self.commands += 1
        try:
            command = decode_command(payload)
        except CommandError as exc:
            self.rejected += 1
            cmd, cid = _guess_name_and_id(payload)
            return Reply(cmd=cmd, ok=False, id=cid, error=f"bad command: {exc}"), []
        if command.id is not None and command.id in self._replies:
            # A controller that retries (or a broker that redelivers) must not
            # pause twice or seek back twice: the id was carried out, repeat its answer.
            self.repeated += 1
            return self._replies[command.id], []
        name = command_name(command)
        events: list[Event] = []
        try:
            events = self.apply(command, now)
        except (CommandRejected, SpeedError) as exc:
            self.rejected += 1
            reply = Reply(cmd=name, ok=False, id=command.id, error=str(exc))
        else:
            reply = Reply(cmd=name, ok=True, id=command.id)
        if command.id is not None:
            self._replies[command.id] = reply
            while len(self._replies) > REMEMBERED_COMMAND_IDS:
                self._replies.popitem(last=False)
        return reply, events if reply.ok else []

    def apply(self, command: Command, now: float) -> list[Event]:
        """Carry out a decoded command; raise ``CommandRejected`` if it cannot be done.

        Events already due go out first, so that the clock event's ``t_ms`` is
        the race clock itself and nothing after it is earlier.
        """
        if isinstance(command, Seek):
            target = self._seek_target(command)
            return self._due(now) + self.seek(target, now)
        if isinstance(command, Resend):
            if command.from_seq > self.seq:
                raise CommandRejected(
                    f"resend from seq {command.from_seq}: the last seq sent is {self.seq}"
                )
            return self._due(now) + self.resend(now)
        if isinstance(command, Pause):
            action: ClockAction = "pause"
            clock = self.clock.pause(now)
        elif isinstance(command, Resume):
            action, clock = "resume", self.clock.resume(now)
        else:
            action, clock = "speed", self.clock.with_speed(command.speed, now)
        if (clock.speed, clock.paused) == (self.clock.speed, self.clock.paused):
            return []  # nothing changes: nothing to tell
        due = self._due(now)
        t_ms = self._stream_ms(self.clock.race_ms(now))
        self.clock = clock
        return [*due, self._clock_event(action, now, t_ms=t_ms)]

    def _due(self, now: float) -> list[Event]:
        """Every event due at ``now``; none flat out, where all are due and the
        stream itself is the race clock."""
        if math.isinf(self.clock.horizon_ms(now)):
            return []
        return self.take(now, len(self.timeline))

    def _seek_target(self, command: Seek) -> int:
        if command.lap is not None:
            start = self._laps.get(command.lap)
            if start is None:
                raise CommandRejected(
                    f"seek past the end: lap {command.lap} never starts"
                    f" (the leader completes {max(self._laps)} laps)"
                )
            return start
        assert command.t_ms is not None  # decode_command checked exactly one is set
        if command.t_ms > self.end_ms:
            raise CommandRejected(
                f"seek past the end: t_ms {command.t_ms} is after the race's end at {self.end_ms}"
            )
        return command.t_ms

    def resend(self, now: float) -> list[Event]:
        """Send the race again up to where it is: a reset and a replay to the race clock."""
        # Flat out the clock stays where it was started: the stream itself is ahead of it.
        return self.seek(max(self.race_ms(now), self.position_ms), now, replay=True)

    def seek(self, target_ms: int, now: float, *, replay: bool = False) -> list[Event]:
        """Move the race to ``target_ms``: forward by catching up, backward by a reset
        (``replay``: by a reset even when the target is not behind, to send it all again)."""
        if not 0 <= target_ms <= self.end_ms:
            raise CommandRejected(f"seek target {target_ms} ms is outside 0..{self.end_ms}")
        if (target_ms >= self.position_ms and not replay) or not self.started:
            t_ms = self._stream_ms(min(self.clock.race_ms(now), target_ms))
            self.clock = self.clock.seek(target_ms, now)
            return [self._clock_event("seek", now, t_ms=t_ms, target_ms=target_ms)]
        t_ms = self._stream_ms(self.clock.race_ms(now))
        self.seq += 1
        reset = Reset(race=self.race, seq=self.seq, t_ms=t_ms, wall=now, target_ms=target_ms)
        self.cursor = 0
        self.position_ms = self.stream_ms = 0
        self.clock = self.clock.seek(target_ms, now)
        opened = self._emit(now)
        return [
            reset,
            opened,
            self._clock_event("seek", now, t_ms=opened.t_ms, target_ms=target_ms),
        ]


def _guess_name_and_id(payload: bytes) -> tuple[str, str | None]:
    """Best effort at naming a rejected command, so that its sender finds the reply."""
    try:
        raw = msgspec.json.decode(payload)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return "invalid", None
    if not isinstance(raw, dict):
        return "invalid", None
    cmd = raw.get("cmd")
    cid = raw.get("id")
    name = cmd[:MAX_CMD_NAME] if isinstance(cmd, str) and cmd else "invalid"
    return name, cid if isinstance(cid, str) and len(cid) <= 64 else None
