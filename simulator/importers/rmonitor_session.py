"""Turn a recorded RMonitor stream into a recording with lap-by-lap timing.

A capture holds whatever the scoreboard feed sent while it ran: often more
than one session, records of a session before its ``$B``, a reset at the
end. This module cuts the records into sessions, picks one, and maps it:
passings (``$J``) become laps at their recorded times, ``$G``/``$H`` the
classification, ``$F`` the flag at each crossing, ``$L`` the pit lane.
Pure: decoded records in, a ``Recording`` and one line per thing it had to
decide out. ``docs/TIMING.md`` has the rules.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from simulator.importers.alkamel import KM_PER_MILE, find_circuit, format_time, scheduled_length
from simulator.importers.rmonitor import (
    ClassInfo,
    Competitor,
    Decoded,
    Heartbeat,
    Init,
    LoopPassing,
    Passing,
    PracticeInfo,
    RaceInfo,
    Record,
    RunInfo,
    Setting,
)
from simulator.recording.format import (
    Circuit,
    ClassificationRow,
    Driver,
    Entry,
    LapRecord,
    Length,
    Note,
    QualifyingRow,
    RaceFacts,
    Recording,
    SessionKind,
    Status,
)

LapFlag = Literal["GF", "FCY", "RF", "FF"]

_FLAGS: dict[str, LapFlag] = {
    "": "GF",
    "GREEN": "GF",
    "YELLOW": "FCY",
    "RED": "RF",
    "FINISH": "FF",
}
"""``$F`` flag texts; a session not yet started (empty flag) counts as green."""

PIT_IN = frozenset({"PIP", "PI", "PITIN", "PIT IN"})
PIT_OUT = frozenset({"POP", "PO", "PITOUT", "PIT OUT"})
LINE_IN_PIT = frozenset({"SFP"})
LINE_ON_TRACK = frozenset({"SFT", "SF"})
"""``$L`` loop roles as Orbits names them; loops of other roles are ignored."""

_RACE_WORDS = ("race", "feature", "heat", "final", "main", "enduro")
_BEST_LAP_WORDS = ("practice", "qualif", "test", "warm", "session", "pole")


class SessionError(ValueError):
    """A recording that cannot be imported as asked; the message says what to pass."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """Facts the stream does not carry, or that the user sets; ``None``: derive."""

    session: str | None = None
    """``$B`` run number or name of the session to import."""
    kind: SessionKind | None = None
    id: str | None = None
    series: str | None = None
    season: int | None = None
    event: str | None = None
    date: str | None = None
    round: int | None = None
    circuit: str | None = None
    lap_km: float | None = None
    track_unit: Literal["mi", "km"] = "mi"
    """Unit of ``$E TRACKLENGTH``: Orbits writes the event's unit, miles in North America."""
    duration_s: int | None = None
    laps: int | None = None


@dataclass
class Session:
    """The records of one session, as cut from the stream."""

    index: int
    run: int | None
    name: str
    first_line: int
    last_line: int = 0
    records: list[Record] = field(default_factory=list)
    inherited: list[Record] = field(default_factory=list)
    """Entry list, classes and track facts sent before this session and not reset since."""
    before_run: int = 0
    """Records that arrived before the session's first ``$B``."""

    @property
    def passings(self) -> int:
        return sum(1 for r in self.records if isinstance(r, Passing) and r.total_ms is not None)

    def label(self) -> str:
        run = f"{self.run} " if self.run is not None else ""
        name = f"'{self.name}'" if self.name else "(no $B)"
        return f"session {run}{name} (lines {self.first_line}-{self.last_line})"


@dataclass(frozen=True)
class Imported:
    recording: Recording
    session: Session
    report: list[str]
    """One line per thing the import decided or dropped, for the user."""


_ROSTER = (Competitor, ClassInfo, Setting)


def sessions(decoded: Decoded) -> list[Session]:
    """The sessions of a stream, in order.

    A new session starts at a ``$B`` whose run number differs from the current
    one, and at ``$I`` (the scoreboard reset: entries sent before are void).
    Records before a session's first ``$B`` belong to it: the feed repeats
    ``$B`` every minute or so, and a capture may start in between.
    """
    out: list[Session] = []
    carry: list[Record] = []
    current: Session | None = None

    def close() -> None:
        nonlocal carry
        if current is not None and (current.records or current.run is not None):
            out.append(current)
            carry = [*current.inherited, *(r for r in current.records if isinstance(r, _ROSTER))]

    for rec in decoded.records:
        if current is None:
            current = Session(index=len(out) + 1, run=None, name="", first_line=rec.line)
        if isinstance(rec, Init):
            close()
            carry = []
            current = Session(index=len(out) + 1, run=None, name="", first_line=rec.line)
            current.last_line = rec.line
            continue
        if isinstance(rec, RunInfo):
            if current.run is None:
                current.run, current.name = rec.id, rec.name
                current.before_run = len(current.records)
            elif rec.id != current.run:
                close()
                current = Session(
                    index=len(out) + 1,
                    run=rec.id,
                    name=rec.name,
                    first_line=rec.line,
                    inherited=list(carry),
                )
            current.last_line = rec.line
            continue
        if not current.records and current.run is None and not current.inherited:
            current.inherited = list(carry)
        current.records.append(rec)
        current.last_line = rec.line
    close()
    for i, s in enumerate(out, start=1):
        s.index = i
    return out


def choose(found: list[Session], wanted: str | None, name: str) -> tuple[Session, str]:
    """The session to import and a line saying why it was chosen."""
    if not found:
        raise SessionError(f"{name}: no session in the file")
    others = "; ".join(f"{s.label()}: {s.passings or 'no'} passings" for s in found)
    if wanted is not None:
        key = wanted.strip()
        matches = [
            s
            for s in found
            if (key.isdigit() and s.run == int(key)) or s.name.lower() == key.lower()
        ]
        if not matches:
            raise SessionError(
                f"{name}: no session {wanted!r}; sessions in the file: {others} "
                "(pass --session with a $B number or name)"
            )
        chosen = max(matches, key=lambda s: (s.passings, s.index))
        return chosen, f"{chosen.label()} chosen by --session {wanted}: {chosen.passings} passings"
    timed = [s for s in found if s.passings]
    if not timed:
        raise SessionError(
            f"{name}: no session holds any timing (no $J passing with a time); "
            f"sessions in the file: {others}"
        )
    chosen = max(timed, key=lambda s: (s.passings, s.index))
    rest = [s for s in found if s is not chosen]
    also = (
        "; also in the file: "
        + "; ".join(f"{s.label()}: {s.passings or 'no'} passings" for s in rest)
        if rest
        else ""
    )
    return chosen, (
        f"{chosen.label()} chosen: it holds the timing ({chosen.passings} passings){also}; "
        "pass --session to choose another"
    )


# -- the roster ---------------------------------------------------------------------


@dataclass
class _Car:
    reg: str
    number: str
    class_id: int | None = None
    names: list[str] = field(default_factory=list)
    """Every name sent for the car, in order (a record may name several drivers)."""
    nationality: str = ""
    chassis: str = ""
    team: str = ""


def _person(first: str, last: str) -> str:
    return re.sub(r"\s+", " ", f"{first} {last}").strip()


def _split_names(full: str) -> list[str]:
    return [n.strip() for n in full.split("/") if n.strip() and n.strip().upper() != "TBA"]


def _drivers(names: list[str]) -> list[str]:
    """Distinct drivers of a car from the names sent for it.

    Teams send the crew as ``D. Robertson/ Murry/`` and, at a driver change,
    the driver in the car as ``David Murry``. One initial and surname is one
    driver, named by its longest form (``David Robertson`` and ``A.Robertson``
    stay two drivers); a bare surname joins the one full name that has it.
    """
    full: dict[tuple[str, str], str] = {}
    bare: dict[str, str] = {}
    for whole in names:
        for name in _split_names(whole):
            parts = [p for p in re.split(r"[\s.]+", name) if p]
            surname = parts[-1].lower()
            if len(parts) == 1 or parts[0][0].islower():  # "Murry", "de Ferran"
                bare.setdefault(name.lower(), name)
                continue
            key = (parts[0][0].lower(), surname)
            if len(name) > len(full.get(key, "")):
                full[key] = name
    out = list(full.values())
    out += [
        name
        for key, name in bare.items()
        if not any(f.lower().endswith(" " + key) for f in full.values())
    ]
    return out


_NATIONALITY = re.compile(r"^[A-Z]{3}$")


def _apply(cars: dict[str, _Car], rec: Competitor) -> None:
    car = cars.get(rec.reg)
    if car is None:
        car = cars[rec.reg] = _Car(reg=rec.reg, number=rec.number)
    car.number = rec.number or car.number
    if rec.class_id is not None:
        car.class_id = rec.class_id
    name = _person(rec.first, rec.last)
    if name:
        car.names.append(name)
    # The nationality field carries a country code in some series and the car
    # (``Porsche 911 GT3 RSR``) in others.
    if _NATIONALITY.match(rec.nationality):
        car.nationality = rec.nationality
    elif rec.nationality:
        car.chassis = re.sub(r"\s+", " ", rec.nationality)
    if rec.extra:
        car.team = rec.extra


# -- the import -----------------------------------------------------------------------


def _lap_flag(flag: str, report: Counter[str]) -> LapFlag:
    mapped = _FLAGS.get(flag)
    if mapped is None:
        report[f"flag {flag!r} is not known; taken as green"] += 1
        return "GF"
    return mapped


def import_session(decoded: Decoded, options: Options | None = None) -> Imported:
    """A recording of one session of a decoded stream (see ``sessions`` and ``choose``)."""
    options = options or Options()
    name = decoded.name
    report: list[str] = []
    found = sessions(decoded)
    session, why = choose(found, options.session, name)
    report.append(why)
    if not session.passings:
        raise SessionError(
            f"{name}: {session.label()} holds no timing (no $J passing with a time); "
            "nothing to replay"
        )
    if session.before_run:
        report.append(
            f"{session.before_run} records before the session's first $B "
            f"(up to line {session.records[session.before_run - 1].line}) taken as part of it"
        )
    if decoded.skipped:
        line, reason = decoded.skipped[0]
        report.append(
            f"{len(decoded.skipped)} lines are not RMonitor records and were skipped "
            f"(first: line {line}, {reason})"
        )
    if decoded.not_utf8:
        report.append(
            f"{len(decoded.not_utf8)} lines are not UTF-8 and were read as Windows-1252 "
            f"(first: line {decoded.not_utf8[0]})"
        )

    roster: dict[str, _Car] = {}
    classes: dict[int, str] = {}
    settings: dict[str, str] = {}
    for rec in session.inherited:
        if isinstance(rec, Competitor):
            _apply(roster, rec)
        elif isinstance(rec, ClassInfo):
            classes[rec.id] = rec.name
        elif isinstance(rec, Setting):
            settings[rec.key] = rec.value
    for rec in session.records:
        if isinstance(rec, Competitor):
            _apply(roster, rec)
        elif isinstance(rec, ClassInfo):
            classes[rec.id] = rec.name
        elif isinstance(rec, Setting):
            settings[rec.key] = rec.value

    laps, last_g, last_h, heartbeats, counts = _laps(session, roster)
    for what, n in counts.items():
        report.append(f"{n} {what}")
    kind = options.kind or _kind(session.name)
    if options.kind is None:
        report.append(
            f"session kind {kind} from its name {session.name!r}"
            + (" (ordered by best lap, as $H is)" if kind == "qualifying" else "")
            + "; pass --kind to set it"
        )

    numbers = {
        reg: (roster[reg].number if reg in roster else reg)
        for reg in _all_regs(laps, last_g, last_h, roster)
    }
    bad = sorted(n for n in numbers.values() if not re.fullmatch(r"[0-9A-Za-z]{1,8}", n))
    if bad:
        raise SessionError(
            f"{name}: car numbers {', '.join(repr(b) for b in bad)} are not 1-8 letters or digits"
        )

    entries, class_order = _entries(roster, classes, numbers, laps, report)
    classification, qualifying = _classification(kind, entries, laps, last_g, last_h, numbers)
    lap_records = sorted(
        (
            LapRecord(
                number=numbers[lap.reg],
                lap=lap.lap,
                lap_ms=lap.lap_ms,
                sectors_ms=[],
                elapsed_ms=lap.total_ms,
                driver=lap.driver,
                pit_ms=lap.pit_ms,
                in_pit=lap.in_pit,
                flag=lap.flag,
            )
            for lap in laps
        ),
        key=lambda r: (r.elapsed_ms, r.number),
    )
    facts, fact_notes = _facts(
        options, session, kind, settings, heartbeats, lap_records, classification, name, report
    )
    notes = [Note(text=t, effect="info", table="race") for t in fact_notes]
    missing = [
        (r.number, r.laps)
        for r in classification
        if r.laps and r.number and r.laps > _last_lap(lap_records, r.number)
    ]
    if missing:
        text = (
            "The recording starts after the session did: "
            + ", ".join(
                f"#{number} {laps - _passed(lap_records, number)} of {laps}"
                for number, laps in missing
                if number is not None
            )
            + " laps are in the classification only (no passing recorded)."
        )
        notes.append(Note(text=text, effect="info", table="race"))
        report.append(text)
    recording = Recording(
        facts=facts,
        classes=class_order,
        entries=entries,
        qualifying=qualifying,
        classification=classification,
        notes=notes,
        laps=lap_records,
        sources=[re.split(r"[\\/]", name)[-1]],
    )
    return Imported(recording=recording, session=session, report=report)


def _last_lap(records: list[LapRecord], number: str) -> int:
    return max((r.lap for r in records if r.number == number), default=0)


def _passed(records: list[LapRecord], number: str) -> int:
    return sum(1 for r in records if r.number == number)


def _all_regs(
    laps: list[_Lap],
    last_g: dict[str, RaceInfo],
    last_h: dict[str, PracticeInfo],
    roster: dict[str, _Car],
) -> list[str]:
    return list(dict.fromkeys([*roster, *(lap.reg for lap in laps), *last_g, *last_h]))


def _kind(run_name: str) -> SessionKind:
    text = run_name.lower()
    if any(re.search(rf"\b{w}s?\b", text) for w in _RACE_WORDS):
        return "race"
    if any(re.search(rf"\b{w}", text) for w in _BEST_LAP_WORDS):
        return "qualifying"
    return "race"


@dataclass
class _Lap:
    reg: str
    lap: int
    lap_ms: int | None
    total_ms: int
    flag: LapFlag
    in_pit: bool
    driver: str | None
    pit_ms: int | None = None
    line: int = 0


def _laps(
    session: Session, roster: dict[str, _Car]
) -> tuple[list[_Lap], dict[str, RaceInfo], dict[str, PracticeInfo], list[Heartbeat], Counter[str]]:
    """Laps from the passings, with the lap number ``$G`` gave each crossing."""
    counts: Counter[str] = Counter()
    known = set(roster)
    # $G reports the crossing it follows: the same total time, and the laps.
    g_laps: dict[tuple[str, int], int | None] = {}
    last_g: dict[str, RaceInfo] = {}
    last_h: dict[str, PracticeInfo] = {}
    heartbeats: list[Heartbeat] = []
    for rec in session.records:
        if isinstance(rec, RaceInfo):
            if rec.total_ms is not None:
                g_laps[(rec.reg, rec.total_ms)] = rec.laps
            last_g[rec.reg] = rec
        elif isinstance(rec, PracticeInfo):
            last_h[rec.reg] = rec
        elif isinstance(rec, Heartbeat):
            heartbeats.append(rec)

    flags = _flag_at(session.records, counts)
    current: dict[str, Competitor] = {}
    for rec in session.inherited:
        if isinstance(rec, Competitor):
            current[rec.reg] = rec
    last_total: dict[str, int] = {}
    last_lap_ms: dict[str, int | None] = {}
    last_lap: dict[str, int] = {}
    out: list[_Lap] = []
    loops: list[LoopPassing] = []
    for rec in session.records:
        if isinstance(rec, Competitor):
            current[rec.reg] = rec
        elif isinstance(rec, LoopPassing):
            if not known or rec.reg in known:
                loops.append(rec)
        elif isinstance(rec, Passing):
            if rec.total_ms is None:
                counts["passings without a time (placeholder) ignored"] += 1
                continue
            if known and rec.reg not in known:
                counts["passings of cars not in this session's entry list ignored as stale"] += 1
                continue
            total = rec.total_ms
            previous = last_total.get(rec.reg)
            if previous is not None and total <= previous:
                if (
                    total == previous
                    and rec.lap_ms is not None
                    and rec.lap_ms != last_lap_ms.get(rec.reg)
                ):
                    # A crossing that arrived with the previous total and a new lap
                    # time (around a red flag). Orbits scored it as a lap only if a
                    # $G carries the previous total plus this lap; else the car's
                    # next lap time spans it (a pit lane crossing under red).
                    if (rec.reg, previous + rec.lap_ms) not in g_laps:
                        counts[
                            "passings under a stopped session that were not scored as laps "
                            "(the next lap's time spans them) ignored"
                        ] += 1
                        continue
                    total = previous + rec.lap_ms
                    counts[
                        "passings repeating the previous total with a new lap time, "
                        "timed at the previous total plus that lap (as $G has it)"
                    ] += 1
                elif total == previous:
                    counts["repeated passings dropped"] += 1
                    continue
                else:
                    counts["passings earlier than the car's previous one ignored as stale"] += 1
                    continue
            key = (rec.reg, total)
            lap_no: int | None
            if key in g_laps:
                lap_no = g_laps[key] or 0
            elif rec.reg in last_lap:
                lap_no = last_lap[rec.reg] + 1
                counts["passings without a $G lap count numbered from the previous lap"] += 1
            elif rec.lap_ms is None:
                lap_no = 0
            else:
                lap_no = 1
                counts["first passings without a $G lap count taken as lap 1"] += 1
            last_total[rec.reg] = total
            last_lap_ms[rec.reg] = rec.lap_ms
            if lap_no == 0:
                counts[
                    "crossings that complete no lap (the start, a pit exit) kept as lap starts"
                ] += 1
                last_lap.setdefault(rec.reg, 0)
                continue
            if lap_no <= last_lap.get(rec.reg, 0):
                # The timing counted this car's laps again (an operator deleted a
                # false crossing, a double read of the loop): the laps it recounts go.
                dropped = [x for x in out if x.reg == rec.reg and x.lap >= lap_no]
                out = [x for x in out if not (x.reg == rec.reg and x.lap >= lap_no)]
                counts["laps the timing later counted again (deleted crossings) dropped"] += len(
                    dropped
                )
            lap_ms = rec.lap_ms
            if lap_ms is None and previous is not None and lap_no == last_lap.get(rec.reg, -9) + 1:
                lap_ms = total - previous
            who = current.get(rec.reg)
            driver = _person(who.first, who.last) if who else ""
            out.append(
                _Lap(
                    reg=rec.reg,
                    lap=lap_no,
                    lap_ms=lap_ms,
                    total_ms=total,
                    flag=flags.get(rec.line, "GF"),
                    in_pit=False,
                    driver=driver if driver and "/" not in driver else None,
                    line=rec.line,
                )
            )
            last_lap[rec.reg] = lap_no
    unknown_loops = _pit_lane(out, loops, session.records, heartbeats, counts)
    for kind, n in unknown_loops.items():
        counts[f"$L crossings of loop {kind!r}, whose role is not known, ignored"] += n
    if known:
        stale_g = [r for r in set(last_g) | set(last_h) if r not in known]
        if stale_g:
            counts[
                f"cars with $G/$H records but no entry in this session ignored as stale "
                f"({', '.join(sorted(stale_g)[:5])})"
            ] = len(stale_g)
            for r in stale_g:
                last_g.pop(r, None)
                last_h.pop(r, None)
    return out, last_g, last_h, heartbeats, counts


PIT_LINE_WINDOW_MS = 3_000
"""A ``$L`` on the line in the pit lane this close to a passing is that passing."""


def _clock_offset(records: list[Record], heartbeats: list[Heartbeat]) -> int | None:
    """Time of day at session time zero.

    From each line loop (``$L`` ``SFT``/``SFP``) and the passing that follows it
    for the same car, to the millisecond; else from ``$F`` (to the second).
    """
    pending: dict[str, int] = {}
    offsets: list[int] = []
    for rec in records:
        if isinstance(rec, LoopPassing) and rec.time_of_day_ms is not None:
            if rec.kind in LINE_IN_PIT | LINE_ON_TRACK:
                pending[rec.reg] = rec.time_of_day_ms
        elif isinstance(rec, Passing) and rec.total_ms is not None:
            tod = pending.pop(rec.reg, None)
            if tod is not None:
                offsets.append((tod - rec.total_ms) % 86_400_000)
    if not offsets:
        offsets = [
            (h.time_of_day_ms - h.race_time_ms) % 86_400_000
            for h in heartbeats
            if h.time_of_day_ms is not None and h.race_time_ms is not None and h.flag
        ]
    if not offsets:
        return None
    return statistics.median_low(offsets)


def _pit_lane(
    laps: list[_Lap],
    loops: list[LoopPassing],
    records: list[Record],
    heartbeats: list[Heartbeat],
    counts: Counter[str],
) -> Counter[str]:
    """Pit marks from the ``$L`` loops, by time (they may arrive out of order).

    A lap whose crossing was on the line in the pit lane (``SFP``), or made
    between a pit entry (``PIP``) and the next pit exit (``POP``), ends in the
    pit lane; a stop's time (entry to exit) goes on the lap in which the car
    left the pit lane, as the Al Kamel exports give it.
    """
    unknown: Counter[str] = Counter()
    if not loops:
        return unknown
    offset = _clock_offset(records, heartbeats)
    if offset is None:
        counts["$L loop crossings ignored: no time of day to place them"] += len(loops)
        return unknown
    by_car: dict[str, list[tuple[int, str]]] = {}
    for loop in loops:
        if loop.time_of_day_ms is None:
            continue
        t = (loop.time_of_day_ms - offset) % 86_400_000
        if loop.kind in PIT_IN:
            role = "in"
        elif loop.kind in PIT_OUT:
            role = "out"
        elif loop.kind in LINE_IN_PIT:
            role = "line"
        elif loop.kind in LINE_ON_TRACK:
            continue
        else:
            unknown[loop.kind or loop.loop] += 1
            continue
        by_car.setdefault(loop.reg, []).append((t, role))
    laps_of: dict[str, list[_Lap]] = {}
    for lap in laps:
        laps_of.setdefault(lap.reg, []).append(lap)
    stops = 0
    for reg, events in by_car.items():
        events.sort()
        mine = laps_of.get(reg, [])
        entered: int | None = None
        stop_ends: list[tuple[int, int]] = []  # (exit time, pit lane time)
        spans: list[tuple[int, int]] = []  # (entry, exit) of each visit
        for t, role in events:
            if role == "in":
                entered = t
            elif role == "out":
                if entered is not None:
                    stop_ends.append((t, t - entered))
                    spans.append((entered, t))
                entered = None
        if entered is not None:
            spans.append((entered, 1 << 62))
        lines = [t for t, role in events if role == "line"]
        previous = -1
        for lap in mine:
            t = lap.total_ms
            lap.in_pit = any(abs(x - t) <= PIT_LINE_WINDOW_MS for x in lines) or any(
                a <= t < b for a, b in spans
            )
            ended = [p for x, p in stop_ends if previous < x <= t]
            if ended:
                lap.pit_ms = ended[-1]
                stops += 1
            previous = t
    if stops:
        counts["pit stops timed from the $L pit entry and exit loops"] += stops
    return unknown


def _flag_at(records: list[Record], counts: Counter[str]) -> dict[int, LapFlag]:
    """The flag shown at each passing's line (by file line).

    ``$F`` comes once a second, so the crossing that brought out the final
    ``Finish`` (the leader's, in a race) comes just before it: a passing
    between that heartbeat and the one before it is under the chequered flag.
    A ``Finish`` followed later by green-flag running did not end the session:
    those crossings count as stopped (red).
    """
    last_running = max(
        (r.line for r in records if isinstance(r, Heartbeat) and r.flag in ("GREEN", "YELLOW")),
        default=0,
    )
    finish_line = next(
        (
            r.line
            for r in records
            if isinstance(r, Heartbeat) and r.flag == "FINISH" and r.line > last_running
        ),
        None,
    )
    before_finish = max(
        (
            r.line
            for r in records
            if isinstance(r, Heartbeat) and finish_line is not None and r.line < finish_line
        ),
        default=0,
    )
    flag = ""
    out: dict[int, LapFlag] = {}
    early_finish = 0
    for rec in records:
        if isinstance(rec, Heartbeat):
            flag = rec.flag
        elif isinstance(rec, Passing):
            mapped = _lap_flag(flag, counts)
            if mapped == "FF" and rec.line < last_running:
                mapped = "RF"
                early_finish += 1
            if finish_line is not None and before_finish < rec.line < finish_line:
                mapped = "FF"
            out[rec.line] = mapped
    if early_finish:
        counts["passings under a Finish flag that green-flag running followed, taken as red"] += (
            early_finish
        )
    return out


def _entries(
    roster: dict[str, _Car],
    classes: dict[int, str],
    numbers: dict[str, str],
    laps: list[_Lap],
    report: list[str],
) -> tuple[list[Entry], list[str]]:
    best: dict[str, int] = {}
    entries: list[Entry] = []
    default_class = next(iter(classes.values())) if len(classes) == 1 else "Unknown"
    for reg, number in numbers.items():
        car = roster.get(reg)
        if car is None:
            report.append(f"car {number} has timing but no $A/$COMP record; entered as #{number}")
            car = _Car(reg=reg, number=number)
        cls = (
            classes.get(car.class_id, f"Class {car.class_id}")
            if car.class_id is not None
            else default_class
        )
        names = _drivers(car.names)
        entries.append(
            Entry(
                number=number,
                cls=cls,
                team=car.team or (car.chassis and f"#{number} {car.chassis}") or f"#{number}",
                drivers=[Driver(name=n, nationality=car.nationality or None) for n in names],
                chassis=car.chassis or None,
            )
        )
    cls_of = {e.number: e.cls for e in entries}
    for lap in laps:
        if lap.lap_ms is not None:
            cls = cls_of[numbers[lap.reg]]
            best[cls] = min(best.get(cls, lap.lap_ms), lap.lap_ms)
    ids = {v: k for k, v in classes.items()}
    names = list(dict.fromkeys(e.cls for e in entries))
    order = sorted(names, key=lambda c: (c not in best, best.get(c, 0), ids.get(c, 999), c))
    return entries, order


def _classification(
    kind: SessionKind,
    entries: list[Entry],
    laps: list[_Lap],
    last_g: dict[str, RaceInfo],
    last_h: dict[str, PracticeInfo],
    numbers: dict[str, str],
) -> tuple[list[ClassificationRow], list[QualifyingRow]]:
    """Rows from each car's last ``$G`` and ``$H``: they count laps the capture may not hold."""
    reg_of = {v: k for k, v in numbers.items()}
    rows: list[tuple[tuple[object, ...], ClassificationRow, QualifyingRow | None]] = []
    for entry in entries:
        reg = reg_of[entry.number]
        mine = [lap for lap in laps if lap.reg == reg]
        g = last_g.get(reg)
        h = last_h.get(reg)
        laps_done = max([g.laps or 0 if g else 0, *(lap.lap for lap in mine)])
        total = g.total_ms if g and g.total_ms is not None else None
        if mine and (total is None or mine[-1].total_ms > total):
            total = mine[-1].total_ms if mine[-1].lap >= laps_done else total
        best_ms = h.best_ms if h else None
        best_lap = h.best_lap if h and h.best_ms is not None else None
        timed = [lap for lap in mine if lap.lap_ms is not None]
        if best_ms is None and timed:
            fastest = min(timed, key=lambda lap: (lap.lap_ms or 0, lap.lap))
            best_ms, best_lap = fastest.lap_ms, fastest.lap
        status: Status = "classified" if laps_done > 0 else "not_classified"
        row = ClassificationRow(
            position=1,
            cls=entry.cls,
            number=entry.number,
            status=status,
            laps=laps_done,
            provenance="timing",
            total_ms=total if laps_done else None,
            best_lap_ms=best_ms,
            best_lap=best_lap,
        )
        if kind == "race":
            key: tuple[object, ...] = (
                -laps_done,
                total if total is not None else 1 << 62,
                g.position if g else 1 << 30,
            )
        else:
            key = (best_ms is None, best_ms or 0, h.position if h else 1 << 30, -laps_done)
        rows.append((key, row, None))
    rows.sort(key=lambda x: x[0])
    classification: list[ClassificationRow] = []
    qualifying: list[QualifyingRow] = []
    leader = rows[0][1] if rows else None
    for position, (_, row, _) in enumerate(rows, start=1):
        gap_ms = gap_laps = None
        if leader is not None and position > 1 and row.laps:
            if kind == "race":
                if row.laps == leader.laps and row.total_ms is not None and leader.total_ms:
                    gap_ms = row.total_ms - leader.total_ms
                elif leader.laps:
                    gap_laps = leader.laps - row.laps
            elif row.best_lap_ms is not None and leader.best_lap_ms is not None:
                gap_ms = row.best_lap_ms - leader.best_lap_ms
        classification.append(
            ClassificationRow(
                position=position,
                cls=row.cls,
                number=row.number,
                status=row.status,
                laps=row.laps,
                provenance="timing",
                total_ms=row.total_ms,
                gap_ms=gap_ms,
                gap_laps=gap_laps,
                best_lap_ms=row.best_lap_ms,
                best_lap=row.best_lap,
            )
        )
        if kind == "qualifying":
            assert row.number is not None and row.cls is not None
            qualifying.append(
                QualifyingRow(
                    number=row.number,
                    cls=row.cls,
                    position=position if row.best_lap_ms is not None else None,
                    best_ms=row.best_lap_ms,
                    gap_ms=gap_ms,
                    remark=None if row.best_lap_ms is not None else "no_time",
                )
            )
    return classification, qualifying


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _facts(
    options: Options,
    session: Session,
    kind: SessionKind,
    settings: dict[str, str],
    heartbeats: list[Heartbeat],
    laps: list[LapRecord],
    classification: list[ClassificationRow],
    name: str,
    report: list[str],
) -> tuple[RaceFacts, list[str]]:
    notes: list[str] = []
    track = options.circuit or settings.get("TRACKNAME", "")
    known = find_circuit(track) if track else None
    km: float | None = options.lap_km
    if km is None:
        length_text = settings.get("TRACKLENGTH", "")
        try:
            value = float(length_text) if length_text else None
        except ValueError:
            value = None
        if value is not None and value > 0:
            km = value * KM_PER_MILE if options.track_unit == "mi" else value
        elif known is not None:
            km = known.circuit.length_km
    if not track:
        raise SessionError(f"{name}: no $E TRACKNAME in {session.label()}; pass --circuit NAME")
    if km is None:
        raise SessionError(
            f"{name}: no $E TRACKLENGTH in {session.label()} and {track!r} is not a known "
            "circuit; pass --lap-km KM"
        )
    circuit = Circuit(
        name=track,
        length_km=round(km, 3),
        length_mi=round(km / KM_PER_MILE, 3),
        turns=known.circuit.turns if known is not None else None,
    )

    dates = [r.date for r in session.records if isinstance(r, Init | LoopPassing) and r.date]
    date = options.date or (dates[0] if dates else None)
    season = options.season or (int(date[:4]) if date else None)
    if season is None:
        raise SessionError(
            f"{name}: the stream carries no date ($I or $L); pass --season YEAR (and --date)"
        )

    offsets = [
        (h.time_of_day_ms - h.race_time_ms) % 86_400_000
        for h in heartbeats
        if h.time_of_day_ms is not None and h.race_time_ms is not None and h.flag
    ]
    start_time = None
    if offsets:
        s = statistics.median_low(offsets) // 1000
        start_time = f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"

    length = _length(options, kind, heartbeats, laps, classification, report)
    series = options.series or "unknown"
    if options.series is None:
        report.append("the stream does not name the series; pass --series NAME")
    base = _slug(options.series) if options.series else _slug(track.split()[0] if track else "")
    words = [w for w in _slug(session.name or kind).split("-") if w not in (str(season), base)]
    race_id = options.id or _slug(f"{base}-{season}-{'-'.join(words)}")[:64].strip("-")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", race_id) or len(race_id) > 64:
        raise SessionError(f"--id {race_id!r}: use lower-case letters, digits, '-' and '_'")
    run_name = session.name or kind.capitalize()
    if str(season) in run_name or (track and track.split()[0].lower() in run_name.lower()):
        event = options.event or run_name  # the run's name already says where and when
    else:
        event = options.event or f"{track} {run_name} {season}".strip()
    facts = RaceFacts(
        id=race_id,
        series=series,
        season=season,
        event=event,
        session=kind,
        circuit=circuit,
        length=length,
        round=options.round,
        date=date,
        start_time=start_time,
        timing_lines=1,
    )
    return facts, notes


def _length(
    options: Options,
    kind: SessionKind,
    heartbeats: list[Heartbeat],
    laps: list[LapRecord],
    classification: list[ClassificationRow],
    report: list[str],
) -> Length:
    """Scheduled length: the flags, the feed's countdown, else the leader's last laps."""
    if options.duration_s and options.laps:
        raise SessionError("give either --duration or --laps, not both")
    if options.laps:
        return Length(laps=options.laps)
    if options.duration_s:
        return Length(duration_s=options.duration_s)
    running = [
        h for h in heartbeats if h.flag in ("GREEN", "YELLOW") and h.race_time_ms is not None
    ]
    if running:
        first = running[0]
        if first.laps_to_go is not None and first.laps_to_go > 0:
            report.append(f"scheduled length {first.laps_to_go} laps from $F laps to go")
            return Length(laps=first.laps_to_go)
        if first.time_to_go_ms:
            assert first.race_time_ms is not None
            total = first.race_time_ms + first.time_to_go_ms
            seconds = max(60, round(total / 60_000) * 60)
            report.append(f"scheduled length {format_time(seconds * 1000)} from $F time to go")
            return Length(duration_s=seconds)
    last_running = max((h.line for h in running), default=0)
    finish = [
        h
        for h in heartbeats
        if h.flag == "FINISH" and h.race_time_ms is not None and h.line > last_running
    ]
    if finish:
        until = finish[0].race_time_ms
        assert until is not None
        seconds = scheduled_length(max(0, until - 60_000), until)
        report.append(
            f"scheduled length {format_time(seconds * 1000)} from the Finish flag at "
            f"{format_time(until)}; pass --duration or --laps to set it"
        )
        return Length(duration_s=seconds)
    if laps:
        last = max(r.elapsed_ms for r in laps)
        seconds = max(60, last // 60_000 * 60)
        report.append(
            f"no Finish flag: scheduled length {format_time(seconds * 1000)} from the last "
            "passing; pass --duration or --laps to set it"
        )
        return Length(duration_s=seconds)
    raise SessionError("no passings and no Finish flag: pass --duration or --laps")
