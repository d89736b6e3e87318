"""Decode a recorded RMonitor stream (the Orbits / MyLaps scoreboard line protocol).

One record per line, ``$TYPE`` then comma-separated fields, text fields in
double quotes: ``$J,"45","00:02:13.009","00:04:37.638"``. This module only
reads records; ``simulator.importers.rmonitor_session`` turns them into a
recording. Pure: bytes in, typed records (and what was skipped, and why) out.
``docs/TIMING.md`` lists the fields of each record.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field

NO_TIME_MS = 3_599_999
"""``00:59:59.999``: what Orbits writes where a car has no time yet."""

NO_CLOCK_MS = 3_599_000
"""``00:59:59``: the session clock of ``$F`` before a session has started."""

MAX_BAD_SHARE = 0.5
"""A file in which more than this share of the non-blank lines are not RMonitor
records is not an RMonitor recording (a few torn lines are normal in a capture)."""

RECORD_TYPES = ("A", "COMP", "B", "C", "E", "F", "G", "H", "I", "J", "L")


class RMonitorError(ValueError):
    """A file that is not an RMonitor recording; the message names the file and the line."""


# -- records ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Competitor:
    """``$A`` (competitor) or ``$COMP`` (competitor with additional data)."""

    line: int
    kind: str
    """``A`` or ``COMP``."""
    reg: str
    """Registration number: the key every timing record uses."""
    number: str
    """Number on the car."""
    first: str
    last: str
    nationality: str
    class_id: int | None
    transponder: str | None = None
    """``$A`` only."""
    extra: str = ""
    """``$COMP`` only: additional data (a team name, in practice)."""


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """``$B``: the session (run) being timed."""

    line: int
    id: int
    name: str


@dataclass(frozen=True, kw_only=True)
class ClassInfo:
    """``$C``: a class number and its name."""

    line: int
    id: int
    name: str


@dataclass(frozen=True, kw_only=True)
class Setting:
    """``$E``: a track fact (``TRACKNAME``, ``TRACKLENGTH``)."""

    line: int
    key: str
    value: str


@dataclass(frozen=True, kw_only=True)
class Heartbeat:
    """``$F``: sent every second: laps and time to go, time of day, session clock, flag."""

    line: int
    laps_to_go: int | None
    """``None`` for 9999 (not a lap-count session)."""
    time_to_go_ms: int | None
    time_of_day_ms: int | None
    race_time_ms: int | None
    """``None`` before the session started (``00:59:59`` with no flag)."""
    flag: str
    """Trimmed and upper-cased: ``GREEN``, ``YELLOW``, ``RED``, ``FINISH``, or empty."""


@dataclass(frozen=True, kw_only=True)
class RaceInfo:
    """``$G``: a car's race position, laps completed and total time."""

    line: int
    position: int
    reg: str
    laps: int | None
    """``None`` when the field is empty (no lap completed)."""
    total_ms: int | None


@dataclass(frozen=True, kw_only=True)
class PracticeInfo:
    """``$H``: a car's position by best lap, the lap it was set on and its time."""

    line: int
    position: int
    reg: str
    best_lap: int | None
    """``None`` for 0: no timed lap yet."""
    best_ms: int | None


@dataclass(frozen=True, kw_only=True)
class Init:
    """``$I``: the scoreboard is reset; everything sent before is void."""

    line: int
    time_of_day_ms: int | None
    date: str | None
    """ISO date, when the record's date could be read."""


@dataclass(frozen=True, kw_only=True)
class Passing:
    """``$J``: a car crossed the timing line."""

    line: int
    reg: str
    lap_ms: int | None
    """``None`` for a crossing that ends no timed lap (zero or the placeholder)."""
    total_ms: int | None
    """Session time of the crossing."""


@dataclass(frozen=True, kw_only=True)
class LoopPassing:
    """``$L``: a car crossed a loop (pit entry, pit exit, a line in the pit lane).

    Not in the original RMonitor specification; Orbits sends it where the
    event's loops are named: ``$L,"45","P3","PIP","01/27/2009","08:08:43.226"``.
    """

    line: int
    reg: str
    loop: str
    kind: str
    """The loop's role as the system names it: ``PIP``, ``POP``, ``SFP``, ``SFT`` ..."""
    date: str | None
    time_of_day_ms: int | None


Record = (
    Competitor
    | RunInfo
    | ClassInfo
    | Setting
    | Heartbeat
    | RaceInfo
    | PracticeInfo
    | Init
    | Passing
    | LoopPassing
)


@dataclass
class Decoded:
    """The records of a file, in order, and what could not be read."""

    name: str
    records: list[Record]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(line, why) of each non-blank line that is not a readable record."""
    not_utf8: list[int] = field(default_factory=list)
    """Lines that were not UTF-8 and were read as Windows-1252."""


# -- fields -------------------------------------------------------------------------

_TIME = re.compile(r"^(?:(\d{1,3}):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?$", re.ASCII)
_FRACTION_SCALE = (0, 100, 10, 1)


def parse_time(text: str) -> int | None:
    """Milliseconds of ``HH:MM:SS.DDD``, ``HH:MM:SS`` or ``MM:SS.DDD``; ``None`` if not a time."""
    m = _TIME.match(text.strip())
    if m is None:
        return None
    hours, minutes, seconds, frac = m.groups()
    if int(seconds) >= 60 or (hours is not None and int(minutes) >= 60):
        return None
    ms = ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000
    if frac:
        ms += int(frac) * _FRACTION_SCALE[len(frac)]
    return ms


def _timing(text: str) -> int | None:
    """A lap or total time: ``None`` for empty, zero and the ``00:59:59.999`` placeholder."""
    if not text.strip():
        return None
    ms = parse_time(text)
    if ms is None:
        raise ValueError(f"{text!r} is not a time HH:MM:SS.DDD")
    if ms == 0 or ms == NO_TIME_MS:
        return None
    return ms


def _clock(text: str) -> int | None:
    if not text.strip():
        return None
    ms = parse_time(text)
    if ms is None:
        raise ValueError(f"{text!r} is not a time HH:MM:SS")
    return ms


def _int(text: str, what: str, *, empty: int | None = None) -> int | None:
    text = text.strip()
    if not text:
        return empty
    if not (text.isascii() and text.lstrip("-").isdigit()):
        raise ValueError(f"{what} {text!r} is not a whole number")
    return int(text)


def _reg(text: str) -> str:
    reg = text.strip()
    if not reg:
        raise ValueError("the registration number is empty")
    return reg


_MONTHS = {
    m: i
    for i, m in enumerate(
        ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1
    )
}


def parse_date(text: str) -> str | None:
    """ISO date of ``27 Jan 09``, ``27 Jan 2009``, ``01/27/2009`` (month first) or
    ``2009-01-27``; ``None`` if it is none of them."""
    text = text.strip()
    m = re.fullmatch(r"(\d{1,2}) ([A-Za-z]{3})[a-z]* (\d{2}|\d{4})", text)
    if m and m.group(2).upper() in _MONTHS:
        year = int(m.group(3))
        year += 2000 if year < 70 else (1900 if year < 100 else 0)
        return _iso(year, _MONTHS[m.group(2).upper()], int(m.group(1)))
    m = re.fullmatch(r"(\d{1,2})/(\d{1,2})/(\d{4})", text)
    if m:
        return _iso(int(m.group(3)), int(m.group(1)), int(m.group(2)))
    m = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", text)
    if m:
        return _iso(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    return None


def _iso(year: int, month: int, day: int) -> str | None:
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return f"{year:04d}-{month:02d}-{day:02d}"


def _fields(body: str) -> list[str]:
    return next(csv.reader([body], delimiter=",", quotechar='"', skipinitialspace=False))


_ARITY = {
    "A": 7,
    "COMP": 7,
    "B": 2,
    "C": 2,
    "E": 2,
    "F": 5,
    "G": 4,
    "H": 4,
    "I": 2,
    "J": 3,
    "L": 5,
}


def parse_line(text: str, line: int = 0) -> Record:
    """One record from one line (without its line break); ``ValueError`` saying why not."""
    text = text.strip()
    if not text.startswith("$"):
        raise ValueError("does not start with '$'")
    kind, _, body = text[1:].partition(",")
    kind = kind.upper()
    if kind not in _ARITY:
        raise ValueError(f"${kind} is not an RMonitor record")
    try:
        f = _fields(body)
    except (csv.Error, StopIteration) as exc:
        raise ValueError(f"fields cannot be read ({exc})") from exc
    if len(f) < _ARITY[kind]:
        raise ValueError(f"${kind} has {len(f)} fields, expected {_ARITY[kind]}")
    if kind in ("A", "COMP"):
        if kind == "A":
            return Competitor(
                line=line,
                kind=kind,
                reg=_reg(f[0]),
                number=f[1].strip() or f[0].strip(),
                transponder=f[2].strip() or None,
                first=f[3].strip(),
                last=f[4].strip(),
                nationality=f[5].strip(),
                class_id=_int(f[6], "class number"),
            )
        return Competitor(
            line=line,
            kind=kind,
            reg=_reg(f[0]),
            number=f[1].strip() or f[0].strip(),
            class_id=_int(f[2], "class number"),
            first=f[3].strip(),
            last=f[4].strip(),
            nationality=f[5].strip(),
            extra=f[6].strip() if len(f) > 6 else "",
        )
    if kind == "B":
        run = _int(f[0], "run number")
        if run is None:
            raise ValueError("the run number is empty")
        return RunInfo(line=line, id=run, name=f[1].strip())
    if kind == "C":
        cls = _int(f[0], "class number")
        if cls is None:
            raise ValueError("the class number is empty")
        return ClassInfo(line=line, id=cls, name=f[1].strip())
    if kind == "E":
        return Setting(line=line, key=f[0].strip().upper(), value=f[1].strip())
    if kind == "F":
        laps_to_go = _int(f[0], "laps to go")
        flag = f[4].strip().upper()
        race_time = _clock(f[3])
        if race_time == NO_CLOCK_MS and not flag:
            race_time = None
        return Heartbeat(
            line=line,
            laps_to_go=None if laps_to_go is None or laps_to_go >= 9999 else laps_to_go,
            time_to_go_ms=_clock(f[1]),
            time_of_day_ms=_clock(f[2]),
            race_time_ms=race_time,
            flag=flag,
        )
    if kind == "G":
        position = _int(f[0], "position")
        if position is None or position < 1:
            raise ValueError(f"position {f[0]!r} is not a position")
        laps = _int(f[2], "laps")
        return RaceInfo(
            line=line,
            position=position,
            reg=_reg(f[1]),
            laps=laps,
            total_ms=_timing(f[3]),
        )
    if kind == "H":
        position = _int(f[0], "position")
        if position is None or position < 1:
            raise ValueError(f"position {f[0]!r} is not a position")
        best_lap = _int(f[2], "best lap number")
        return PracticeInfo(
            line=line,
            position=position,
            reg=_reg(f[1]),
            best_lap=best_lap if best_lap else None,
            best_ms=_timing(f[3]),
        )
    if kind == "I":
        return Init(line=line, time_of_day_ms=_clock(f[0]), date=parse_date(f[1]))
    if kind == "J":
        return Passing(line=line, reg=_reg(f[0]), lap_ms=_timing(f[1]), total_ms=_timing(f[2]))
    # $L
    return LoopPassing(
        line=line,
        reg=_reg(f[0]),
        loop=f[1].strip(),
        kind=f[2].strip().upper(),
        date=parse_date(f[3]),
        time_of_day_ms=_clock(f[4]),
    )


def _text(raw: bytes) -> tuple[str, bool]:
    """A line's text and whether it was UTF-8."""
    try:
        return raw.decode("utf-8"), True
    except UnicodeDecodeError:
        # Orbits runs on Windows: names with accents arrive as Windows-1252.
        # latin-1 never fails, for the few bytes cp1252 leaves undefined.
        try:
            return raw.decode("cp1252"), False
        except UnicodeDecodeError:
            return raw.decode("latin-1"), False


def decode(data: bytes, name: str) -> Decoded:
    """Every record of a recorded stream, in order.

    Lines that are not records (a line torn at the start or end of a capture,
    a stray line of another tool) are skipped and listed; a file made mostly
    of them is not an RMonitor recording and raises ``RMonitorError``.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out = Decoded(name=name, records=[])
    nonblank = 0
    first_bad: tuple[int, str, str] | None = None
    # A recording may use CR LF, LF or a bare CR between records.
    for number, raw in enumerate(re.split(rb"\r\n|\n|\r", data), start=1):
        text, utf8 = _text(raw)
        if not text.strip():
            continue
        nonblank += 1
        if not utf8:
            out.not_utf8.append(number)
        try:
            out.records.append(parse_line(text, number))
        except ValueError as exc:
            out.skipped.append((number, str(exc)))
            if first_bad is None:
                first_bad = (number, str(exc), text.strip()[:40])
    if nonblank == 0:
        raise RMonitorError(f"{name}: the file is empty; expected a recorded RMonitor stream")
    if first_bad is not None and (not out.records or len(out.skipped) > MAX_BAD_SHARE * nonblank):
        line, why, start = first_bad
        raise RMonitorError(
            f"{name}: line {line}: not an RMonitor record ({why}: {start!r}); "
            f"{len(out.skipped)} of {nonblank} lines are not records like "
            '$J,"12","00:01:23.456","00:12:34.567"'
        )
    return out
