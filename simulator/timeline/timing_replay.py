"""Replay a recording that carries real lap-by-lap timing exactly as recorded.

Every line crossing happens at the time the export gives; nothing is
synthesised except where the export is silent (where in the last sector a car
entered the pit lane). The rules are in ``docs/TIMING.md``. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from chequered.contract.events import (
    Event,
    Finish,
    Flag,
    FlagState,
    Lap,
    PitIn,
    PitOut,
    Retire,
    Sector,
)
from simulator.recording.format import LapRecord, Recording
from simulator.timeline import post_race
from simulator.timeline.assemble import assemble, session_closed, session_opened

_FLAG_AT_LINE: dict[str, FlagState] = {
    "GF": "green",
    "FCY": "fcy",
    "RF": "red",
    "FF": "chequered",
}


@dataclass(frozen=True)
class _Crossings:
    """When one lap's timing lines were crossed."""

    start: int | None
    """Time the lap began (the previous line crossing), if known."""
    sectors: list[tuple[int, int]]
    """(sector index, time) of each intermediate line crossed, in order."""
    line: int
    """Finish-line crossing (the export's ELAPSED)."""

    def first_after_start(self) -> int:
        return self.sectors[0][1] if self.sectors else self.line

    def last_before_line(self) -> int | None:
        if self.sectors:
            return self.sectors[-1][1]
        return self.start


@dataclass(frozen=True)
class SessionEnd:
    """How the session ended, as the replay shows it."""

    chequered_ms: int
    """When the chequered flag fell."""
    stopped_early: bool
    """A race stopped (red flag) before its scheduled length and not resumed."""
    running_after_ms: int
    """A car whose last crossing is later than this was still running at the end."""


def replay(recording: Recording, *, race: str) -> list[Event]:
    """Events of a recording with a lap-by-lap section, at the recorded times."""
    if not recording.laps:
        raise ValueError(f"{recording.facts.id}: the recording has no lap-by-lap timing")
    facts = recording.facts
    lines = facts.timing_lines
    by_car: dict[str, list[LapRecord]] = {}
    for rec in recording.laps:
        by_car.setdefault(rec.number, []).append(rec)
    for laps in by_car.values():
        laps.sort(key=lambda r: r.lap)

    drafts: list[Event] = [
        session_opened(recording, race=race),
        Flag(race=race, seq=1, t_ms=0, flag="green"),
    ]
    drivers = {e.number: [d.name for d in e.drivers] for e in recording.entries}
    line_crossings: list[tuple[int, LapRecord]] = []
    for car, laps in by_car.items():
        crossings = _crossings(laps, lines)
        for rec, cx in zip(laps, crossings, strict=True):
            for sector, t in cx.sectors:
                drafts.append(
                    Sector(
                        race=race,
                        seq=1,
                        t_ms=t,
                        car=car,
                        lap=rec.lap,
                        sector=sector,
                        sector_ms=rec.sectors_ms[sector - 1],
                        position=1,
                    )
                )
            drafts.append(
                Lap(
                    race=race,
                    seq=1,
                    t_ms=rec.elapsed_ms,
                    car=car,
                    lap=rec.lap,
                    lap_ms=rec.lap_ms,
                    sectors_ms=list(rec.sectors_ms),
                    position=1,
                    driver=_driver(rec, drivers.get(car, [])),
                    flag=_FLAG_AT_LINE[rec.flag],
                    in_pit=rec.in_pit,
                )
            )
            line_crossings.append((rec.elapsed_ms, rec))
        drafts.extend(_pit_events(race, car, laps, crossings, drivers.get(car, [])))

    end = session_end(recording, by_car)
    drafts.extend(_flags(race, line_crossings, end))
    for car, laps in by_car.items():
        last = _finish_or_retire(race, car, laps, end, facts.session)
        if last is not None:
            drafts.append(last)
    close_at = max(e.t_ms for e in drafts)
    drafts.append(session_closed(recording, race=race, t_ms=close_at))
    events = assemble(
        drafts, race=race, lines=lines, session=facts.session, grid=list(recording.grid)
    )
    # A result changed after the flag: provisional classification, penalties, official.
    return post_race.amend(recording, events, race=race)


def _driver(rec: LapRecord, names: Sequence[str]) -> str:
    if rec.driver:
        return rec.driver
    if rec.driver_number is not None and 1 <= rec.driver_number <= len(names):
        return names[rec.driver_number - 1]
    return ""


# -- line crossings -------------------------------------------------------------


def _crossings(laps: list[LapRecord], lines: int) -> list[_Crossings]:
    """Times of each lap's crossings.

    A lap starts ``LAP_TIME`` before its finish-line crossing (the previous
    crossing, when the times agree); intermediate line ``k`` is crossed at the
    start plus ``S1 + .. + Sk``, or, when an earlier split is missing, at the
    finish-line crossing minus the later splits. A crossing that cannot be
    placed is left out. Times never run backwards within a car.
    """
    out: list[_Crossings] = []
    previous: int | None = None
    for rec in laps:
        line = rec.elapsed_ms
        if rec.lap_ms is not None:
            start: int | None = max(0, line - rec.lap_ms)
        else:
            start = previous
        if start is not None and previous is not None and start < previous:
            start = previous
        splits = rec.sectors_ms
        n = len(splits)
        sectors: list[tuple[int, int]] = []
        floor = start if start is not None else (previous or 0)
        for k in range(1, min(n, lines)):
            t: int | None = None
            ahead = splits[:k]
            behind = splits[k:]
            if start is not None and all(s is not None for s in ahead):
                t = start + sum(s for s in ahead if s is not None)
            elif n == lines and all(s is not None for s in behind):
                t = line - sum(s for s in behind if s is not None)
            if t is None:
                continue
            t = min(max(t, floor), line)
            floor = t
            sectors.append((k, t))
        out.append(_Crossings(start=start, sectors=sectors, line=line))
        previous = line
    return out


# -- pit lane -------------------------------------------------------------------


def _pit_events(
    race: str,
    car: str,
    laps: list[LapRecord],
    crossings: list[_Crossings],
    names: Sequence[str],
) -> list[Event]:
    """Pit in and out from ``CROSSING_FINISH_LINE_IN_PIT`` and ``PIT_TIME``.

    - In-lap ``N`` crossed the line in the pit lane and out-lap ``N+1`` carries
      the pit lane time ``P``: the stop spans the line. The time between the
      last intermediate line of lap ``N`` and the first of lap ``N+1`` is split
      in proportion to those two parts, so the car enters ``P * a / (a + b)``
      before the line and leaves ``P`` later.
    - ``PIT_TIME`` on a car's first lap: it started from the pit lane (in at
      the lap start, out ``P`` later).
    - ``PIT_TIME`` on a lap whose previous lap did not end in the pit lane: the
      stop lies within the lap, centred in it.
    - An in-lap with no pit time after it: the car enters at the line; if it
      runs again it leaves half-way to its next timing line.
    """
    events: list[Event] = []
    cursor = 0  # a stop never starts before the previous one ended
    by_lap = {rec.lap: i for i, rec in enumerate(laps)}
    for i, rec in enumerate(laps):
        cx = crossings[i]
        prev_i = by_lap.get(rec.lap - 1)
        prev = laps[prev_i] if prev_i is not None else None
        if rec.pit_ms is not None:
            p = rec.pit_ms
            if prev is not None and prev.in_pit and prev_i is not None:
                line_t = crossings[prev_i].line
                before = crossings[prev_i].last_before_line()
                a = line_t - (before if before is not None else line_t - p)
                b = cx.first_after_start() - line_t
                entry = line_t - (p * a // (a + b) if a + b > 0 else 0)
                entry = max(entry, line_t - a, cursor)
                exit_t = min(entry + p, max(line_t, cx.first_after_start()))
                in_lap = prev.lap - 1 if entry < line_t else prev.lap
                out_lap = prev.lap
                changed = _changed(prev, rec)
            elif i == 0:
                entry = max(cx.start if cx.start is not None else 0, cursor)
                exit_t = min(entry + p, cx.first_after_start())
                in_lap = out_lap = rec.lap - 1
                changed = False
            else:
                lo = cx.start if cx.start is not None else cx.line - p
                lo = max(lo, cursor)
                span = cx.line - lo
                entry = lo + max(0, (span - p) // 2)
                exit_t = min(entry + p, cx.line)
                in_lap = out_lap = rec.lap - 1
                changed = _changed(prev, rec) if prev is not None else False
            events.append(PitIn(race=race, seq=1, t_ms=entry, car=car, lap=max(0, in_lap)))
            events.append(
                PitOut(
                    race=race,
                    seq=1,
                    t_ms=max(entry, exit_t),
                    car=car,
                    lap=max(0, out_lap),
                    pit_ms=p,
                    driver=_driver(rec, names),
                    driver_change=changed,
                )
            )
            cursor = max(entry, exit_t)
        if rec.in_pit:
            nxt_i = by_lap.get(rec.lap + 1)
            nxt = laps[nxt_i] if nxt_i is not None else None
            if nxt is not None and nxt.pit_ms is not None:
                continue  # handled with the out-lap
            entry = max(cx.line, cursor)
            events.append(PitIn(race=race, seq=1, t_ms=entry, car=car, lap=rec.lap))
            if nxt is not None and nxt_i is not None:
                exit_t = max(entry, (cx.line + crossings[nxt_i].first_after_start()) // 2)
                events.append(
                    PitOut(
                        race=race,
                        seq=1,
                        t_ms=exit_t,
                        car=car,
                        lap=rec.lap,
                        pit_ms=exit_t - entry,
                        driver=_driver(nxt, names),
                        driver_change=_changed(rec, nxt),
                    )
                )
                cursor = exit_t
            else:
                cursor = entry
    return events


def _changed(before: LapRecord, after: LapRecord) -> bool:
    if before.driver_number is not None and after.driver_number is not None:
        return before.driver_number != after.driver_number
    return bool(before.driver and after.driver and before.driver != after.driver)


# -- flags and the end ------------------------------------------------------------


def session_end(recording: Recording, by_car: dict[str, list[LapRecord]]) -> SessionEnd:
    """When the chequered flag fell, and whether the race was stopped early.

    The chequered flag falls at the first crossing the export flags ``FF``; without
    one, in a race, as the winner (most laps, first across the line) completes its
    last lap; in qualifying, at the last crossing. A race whose winner fell short
    of the scheduled length with no ``FF`` was stopped: the flag falls just after
    the last crossing, behind a red flag.
    """
    facts = recording.facts
    all_laps = [r for laps in by_car.values() for r in laps]
    last_crossing = max(r.elapsed_ms for r in all_laps)
    first_ff = min((r.elapsed_ms for r in all_laps if r.flag == "FF"), default=None)
    if facts.session != "race":
        t = first_ff if first_ff is not None else last_crossing
        return SessionEnd(chequered_ms=t, stopped_early=False, running_after_ms=t - 1)
    winner = min(by_car.values(), key=lambda laps: (-laps[-1].lap, laps[-1].elapsed_ms))
    winner_end = winner[-1].elapsed_ms
    winner_prev = winner[-2].elapsed_ms if len(winner) > 1 else 0
    length = facts.length
    short = (length.duration_s is not None and winner_end < length.duration_s * 1000) or (
        length.laps is not None and winner[-1].lap < length.laps
    )
    if first_ff is None and short:
        return SessionEnd(
            chequered_ms=last_crossing + 1, stopped_early=True, running_after_ms=winner_prev
        )
    t = first_ff if first_ff is not None else winner_end
    return SessionEnd(chequered_ms=t, stopped_early=False, running_after_ms=t - 1)


def _flags(race: str, crossings: list[tuple[int, LapRecord]], end: SessionEnd) -> list[Event]:
    """Flag changes from the flag each car saw at the line.

    A yellow (or red) begins when the first car crosses the line under it and
    ends when the first car crosses under green: the export gives no other
    moment. Flags after the chequered flag are ignored.
    """
    events: list[Event] = []
    state: FlagState = "green"
    for t, rec in sorted(crossings, key=lambda c: c[0]):
        if t >= end.chequered_ms:
            break
        wanted = _FLAG_AT_LINE[rec.flag]
        if wanted != "chequered" and wanted != state:
            events.append(Flag(race=race, seq=1, t_ms=t, flag=wanted))
            state = wanted
    if end.stopped_early and state != "red":
        events.append(
            Flag(
                race=race,
                seq=1,
                t_ms=end.chequered_ms,
                flag="red",
                reason="stopped before the scheduled length",
            )
        )
    events.append(
        Flag(
            race=race,
            seq=1,
            t_ms=end.chequered_ms,
            flag="chequered",
            reason="race not resumed" if end.stopped_early else None,
        )
    )
    return events


def _finish_or_retire(
    race: str, car: str, laps: list[LapRecord], end: SessionEnd, session: str
) -> Event | None:
    last = laps[-1]
    if end.stopped_early:
        if last.elapsed_ms > end.running_after_ms:
            return Finish(race=race, seq=1, t_ms=end.chequered_ms, car=car, lap=last.lap)
    else:
        taken = next((r for r in laps if r.elapsed_ms >= end.chequered_ms), None)
        if taken is not None:
            return Finish(race=race, seq=1, t_ms=taken.elapsed_ms, car=car, lap=taken.lap)
    if session != "race":
        return None
    reason = "stopped in the pit lane" if last.in_pit else None
    return Retire(race=race, seq=1, t_ms=last.elapsed_ms, car=car, lap=last.lap, reason=reason)
