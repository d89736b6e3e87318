"""Race events in, RMonitor scoreboard lines out (the Orbits / MyLaps line protocol).

The sans-I/O core of ``chequered rmonitor``: it folds the race with the
standings fold and says, for each event, which lines every connected client
gets; ``greeting`` is what a client that connects now needs first, and
``heartbeat`` the ``$F`` line sent every second. The TCP server around it
is ``consumers.rmonitor.server``. Field layouts: ``docs/TIMING.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from chequered.contract.events import (
    Clock,
    Event,
    Finish,
    Flag,
    Lap,
    PitIn,
    PitOut,
    Reset,
    SessionClosed,
    SessionOpened,
)
from consumers.standings import fold

KM_PER_MILE = 1.609344
DAY_MS = 86_400_000
NO_LAPS_TO_GO = 9999
"""``$F`` laps to go of a session that is not run over a lap count."""

_FLAG_TEXT = {"green": "Green ", "fcy": "Yellow", "red": "Red   ", "chequered": "Finish"}
"""``$F`` flag field: six characters, padded with spaces, as Orbits sends it."""

# Loop names of the ``$L`` extension, as Orbits names a typical installation's loops.
LOOP_LINE = ("T1", "SFT")
LOOP_LINE_IN_PIT = ("P1", "SFP")
LOOP_PIT_IN = ("P3", "PIP")
LOOP_PIT_OUT = ("P2", "POP")


def clock(ms: int, *, millis: bool = True) -> str:
    """``HH:MM:SS.DDD`` (``HH:MM:SS`` without ``millis``); hours beyond 99 are kept."""
    ms = max(0, ms)
    s, milli = divmod(ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    text = f"{h:02d}:{m:02d}:{s:02d}"
    return f"{text}.{milli:03d}" if millis else text


_KIND_WORDS = {
    "race": re.compile(r"\b(race|feature|heat|final|main)s?\b", re.IGNORECASE),
    "qualifying": re.compile(r"\b(qualif|practice|test|warm)", re.IGNORECASE),
}


def run_name(name: str, kind: str) -> str:
    """The ``$B`` description: the session's name, with its kind added when the name
    does not say it (scoreboards and recorders tell a race from practice by it)."""
    if _KIND_WORDS[kind].search(name):
        return name
    return f"{name} {'Race' if kind == 'race' else 'Qualifying'}"


def quoted(text: str) -> str:
    """A text field: in double quotes, with the characters that would break a line removed."""
    return '"' + text.replace('"', "'").replace("\r", " ").replace("\n", " ") + '"'


@dataclass
class _Car:
    number: str
    cls_id: int
    team: str
    drivers: list[str]
    driver: str = ""
    last_total_ms: int | None = None
    race_position: int = 0
    practice_position: int = 0


@dataclass
class Encoder:
    """The RMonitor view of one race.

    ``apply`` takes each event of the race in order and returns the lines to
    send to every client (without line breaks); times of day are the
    session's start time plus race time (midnight when the start is not known).
    """

    race: str
    run: int = 1
    """``$B`` run number: it goes up at every reset, so a recorder sees a new session."""
    state: fold.RaceState = field(init=False)
    opened: SessionOpened | None = field(default=None, init=False)
    cars: dict[str, _Car] = field(default_factory=dict, init=False)
    t_ms: int = field(default=0, init=False)
    """Race time of the last event applied."""
    received: float | None = field(default=None, init=False)
    """Wall time (the caller's clock) at which that event was applied."""
    closed: bool = field(default=False, init=False)
    sent_second: int = field(default=-1, init=False)
    """Session second of the last ``$F`` sent."""

    def __post_init__(self) -> None:
        self.state = fold.new_race(self.race)

    # -- what a client gets ------------------------------------------------------

    def greeting(self, now: float | None = None) -> list[str]:
        """Everything a client connecting now needs: the session, classes, entries,
        track facts, every car's position, then the clock."""
        if self.opened is None:
            return []
        lines = [self._init_line(), *self._session_lines()]
        lines += self._positions(force=True)
        lines.append(self.heartbeat(now))
        return lines

    def heartbeat(self, now: float | None = None) -> str:
        """``$F``: laps to go, time to go, time of day, session time and flag."""
        t = self.race_time(now)
        self.sent_second = t // 1000
        session = self.opened.session if self.opened is not None else None
        laps_to_go = NO_LAPS_TO_GO
        time_to_go = 0
        if session is not None and session.laps is not None:
            leader = max((c.laps for c in self.state.cars.values()), default=0)
            laps_to_go = max(0, session.laps - leader)
        elif session is not None and session.duration_ms is not None:
            time_to_go = max(0, session.duration_ms - t)
        flag = _FLAG_TEXT[self.state.flag] if self.opened is not None else "      "
        return (
            f"$F,{laps_to_go},{quoted(clock(time_to_go, millis=False))},"
            f"{quoted(clock(self._time_of_day(t), millis=False))},"
            f"{quoted(clock(t, millis=False))},{quoted(flag)}"
        )

    def race_time(self, now: float | None = None) -> int:
        """The session clock now: the last event's time, run on at the replay's speed
        while the race is running (never past the next event, which the caller applies)."""
        if now is None or self.received is None or self.closed or self.opened is None:
            return self.t_ms
        if self.state.paused or self.state.flag == "chequered":
            return self.t_ms
        speed = self.state.speed
        if speed is None:
            return self.t_ms
        return self.t_ms + max(0, int((now - self.received) * speed * 1000))

    # -- events ------------------------------------------------------------------------

    def apply(
        self, event: Event, now: float | None = None, *, meta: SessionOpened | None = None
    ) -> list[str]:
        """Fold one event; the lines it gives every client.

        ``meta``, the race's retained ``session_open``, opens a race joined
        midway: laps before the join are unknown until the cars cross again.
        Duplicates and events the fold rejects give nothing.
        """
        lines: list[str] = []
        if (
            not self.state.opened
            and meta is not None
            and not isinstance(event, SessionOpened | Reset | Clock)
        ):
            try:
                fold.join(self.state, meta, event)
            except fold.Rejected:
                self.state = fold.new_race(self.race)
                return []
            lines += self._open(meta)
        try:
            outcome = fold.step(self.state, event)
        except fold.Rejected:
            return lines
        if outcome == fold.DUPLICATE:
            return lines
        if not isinstance(event, Reset | SessionOpened):
            self.t_ms = max(self.t_ms, event.t_ms)
        self.received = now
        return lines + self._lines(event, now)

    def _lines(self, event: Event, now: float | None) -> list[str]:
        if isinstance(event, Reset):
            return self._reset()
        if isinstance(event, SessionOpened):
            return self._open(event)
        if self.opened is None:
            return []
        if isinstance(event, Lap):
            return self._lap(event)
        if isinstance(event, Flag):
            return [self.heartbeat(now)]
        if isinstance(event, PitIn):
            return [self._loop(event.car, LOOP_PIT_IN, event.t_ms)]
        if isinstance(event, PitOut):
            lines = [self._loop(event.car, LOOP_PIT_OUT, event.t_ms)]
            car = self.cars.get(event.car)
            if car is not None and event.driver and event.driver != car.driver:
                car.driver = event.driver
                lines += self._competitor(car)
            return lines
        if isinstance(event, Finish):
            return []
        if isinstance(event, SessionClosed):
            self.closed = True
            return [*self._positions(force=True, official=event), self.heartbeat(now)]
        if isinstance(event, Clock):
            return [self.heartbeat(now)]
        return []

    def _reset(self) -> list[str]:
        self.run += 1
        self.opened = None
        self.cars = {}
        self.t_ms = 0
        self.closed = False
        return [self._init_line()]

    def _open(self, event: SessionOpened) -> list[str]:
        if self.opened is not None:
            self.run += 1
        self.opened = event
        self.t_ms = event.t_ms
        self.closed = False
        ids = {cls: i for i, cls in enumerate(event.classes, start=1)}
        self.cars = {
            e.number: _Car(
                number=e.number,
                cls_id=ids.get(e.cls, len(ids) + 1),
                team=e.team,
                drivers=list(e.drivers),
                driver=e.drivers[0] if len(e.drivers) == 1 else "",
            )
            for e in event.entries
        }
        return [*self._session_lines(), *self._positions(force=True)]

    def _lap(self, event: Lap) -> list[str]:
        car = self.cars.get(event.car)
        if car is None:
            return []
        line = LOOP_LINE_IN_PIT if event.in_pit else LOOP_LINE
        lines: list[str] = []
        if event.t_ms // 1000 != self.sent_second:
            # One $F per session second before the crossings in it, as Orbits
            # sends them: a recorder places each crossing between two clocks,
            # even when the race is replayed faster than the wall clock ticks.
            lines.append(self.heartbeat())
        lines.append(self._loop(event.car, line, event.t_ms))
        car.last_total_ms = event.t_ms
        lines.append(
            f"$J,{quoted(event.car)},{quoted(clock(event.lap_ms or 0))},{quoted(clock(event.t_ms))}"
        )
        lines += self._positions(force=False, crossed=event.car)
        return lines

    # -- records ----------------------------------------------------------------------

    def _init_line(self) -> str:
        date = self.opened.session.date if self.opened is not None else None
        return (
            f"$I,{quoted(clock(self._time_of_day(self.t_ms), millis=False))},{quoted(_day(date))}"
        )

    def _session_lines(self) -> list[str]:
        assert self.opened is not None
        info = self.opened.session
        lines = [f"$B,{self.run},{quoted(run_name(info.name, info.kind))}"]
        lines += [f"$C,{i},{quoted(cls)}" for i, cls in enumerate(self.opened.classes, start=1)]
        for car in self.cars.values():
            lines += self._competitor(car)
        lines.append(f"$E,{quoted('TRACKNAME')},{quoted(info.circuit)}")
        lines.append(f"$E,{quoted('TRACKLENGTH')},{quoted(f'{info.lap_km / KM_PER_MILE:.3f}')}")
        return lines

    def _competitor(self, car: _Car) -> list[str]:
        # The driver in the car when known; the crew, "/"-separated, before that
        # (as teams send it to Orbits).
        name = car.driver or " / ".join(car.drivers)
        return [
            f"$A,{quoted(car.number)},{quoted(car.number)},0,{quoted('')},{quoted(name)},"
            f"{quoted('')},{car.cls_id}",
            f"$COMP,{quoted(car.number)},{quoted(car.number)},{car.cls_id},{quoted('')},"
            f"{quoted(name)},{quoted('')},{quoted(car.team)}",
        ]

    def _loop(self, car: str, loop: tuple[str, str], t_ms: int) -> str:
        date = self.opened.session.date if self.opened is not None else None
        return (
            f"$L,{quoted(car)},{quoted(loop[0])},{quoted(loop[1])},{quoted(_us_date(date))},"
            f"{quoted(clock(self._time_of_day(t_ms)))}"
        )

    def _time_of_day(self, t_ms: int) -> int:
        start = self.opened.session.start_time if self.opened is not None else None
        base = 0
        if start:
            h, m, s = (int(x) for x in start.split(":"))
            base = ((h * 60 + m) * 60 + s) * 1000
        return (base + t_ms) % DAY_MS

    def _positions(
        self,
        *,
        force: bool,
        crossed: str | None = None,
        official: SessionClosed | None = None,
    ) -> list[str]:
        """``$G`` and ``$H`` for every car whose position changed (all when ``force``),
        the car that just crossed first."""
        if official is not None:
            race_order = [r.car for r in official.classification]
            laps = {r.car: r.laps for r in official.classification}
            totals = {r.car: r.total_ms for r in official.classification}
            official_best: dict[str, tuple[int | None, int]] | None = {
                r.car: (r.best_lap_ms, r.best_lap or 0) for r in official.classification
            }
        else:
            official_best = None
            race_order = [c.car for c in fold.order(self.state) if self.state.kind == "race"]
            if self.state.kind != "race":
                race_order = [
                    c.car
                    for c in sorted(
                        self.state.cars.values(),
                        key=lambda c: (-c.laps, c.reached_t, c.start_rank),
                    )
                ]
            laps = {c.car: c.laps for c in self.state.cars.values()}
            totals = {}
        best = sorted(
            (c for c in self.state.cars.values()),
            key=lambda c: (c.best_lap_ms is None, c.best_lap_ms or 0, c.best_seq, c.start_rank),
        )
        if official is not None and self.state.kind != "race":
            best_order = race_order
        else:
            best_order = [c.car for c in best]
        g_lines: list[str] = []
        h_lines: list[str] = []
        order = list(dict.fromkeys([*([crossed] if crossed else []), *race_order]))
        for car_no in order:
            car = self.cars.get(car_no)
            if car is None or car_no not in race_order:
                continue
            position = race_order.index(car_no) + 1
            if force or car_no == crossed or position != car.race_position:
                car.race_position = position
                n = laps.get(car_no, 0)
                total = totals.get(car_no) or car.last_total_ms
                g_lines.append(
                    f"$G,{position},{quoted(car_no)},{n if n else ''},"
                    f"{quoted(clock(total) if total is not None and n else '00:00:00.000')}"
                )
        states = self.state.cars
        for car_no in dict.fromkeys([*([crossed] if crossed else []), *best_order]):
            car = self.cars.get(car_no)
            if car is None or car_no not in best_order:
                continue
            position = best_order.index(car_no) + 1
            if force or car_no == crossed or position != car.practice_position:
                car.practice_position = position
                state = states.get(car_no)
                best_ms = state.best_lap_ms if state is not None else None
                best_lap = state.best_lap if state is not None and best_ms is not None else 0
                if official_best is not None and car_no in official_best:
                    # The official best lap may be one the stream never showed.
                    best_ms, best_lap = official_best[car_no]
                    best_lap = best_lap if best_ms is not None else 0
                h_lines.append(
                    f"$H,{position},{quoted(car_no)},{best_lap},"
                    f"{quoted(clock(best_ms) if best_ms is not None else '00:00:00.000')}"
                )
        return g_lines + h_lines


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _day(date: str | None) -> str:
    """``$I`` date, ``27 Jan 09``; empty when the session's date is not known."""
    if not date:
        return ""
    y, m, d = date.split("-")
    return f"{int(d)} {_MONTHS[int(m) - 1]} {y[2:]}"


def _us_date(date: str | None) -> str:
    """``$L`` date, ``01/27/2009``."""
    if not date:
        return ""
    y, m, d = date.split("-")
    return f"{m}/{d}/{y}"
