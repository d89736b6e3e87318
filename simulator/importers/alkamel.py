"""Import official Al Kamel timing exports (IMSA, FIA WEC, ELMS) into a recording.

A lap file (one row per car per lap) and a results file (the official
classification) become one ``Recording`` with the lap-by-lap section filled.
Pure: text in, a recording (or a ``TimingError`` naming the file and line) out.
``docs/TIMING.md`` describes the column mapping and the rules.
"""

from __future__ import annotations

import csv
import datetime
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from simulator.recording.format import (
    Circuit,
    ClassificationRow,
    Driver,
    Entry,
    Interruption,
    LapRecord,
    Length,
    Note,
    QualifyingRow,
    RaceFacts,
    Recording,
    SessionKind,
    Status,
)

MAX_SECTORS = 15
"""Sector columns read per lap (``S1`` .. ``S15``); the recording allows 16 timing lines."""

LAP_KM_DEVIATION = 0.05
"""Relative difference between a known circuit length and the length implied by
the export's speeds above which the import warns."""

PENALTY_MIN_MS = 1000
"""A race result whose ``TOTAL_TIME`` exceeds the car's last line crossing by at least
this much carries a post-race time penalty of the difference. The exports' times
agree to the millisecond otherwise; the smallest penalty given is a few seconds."""

MS_PER_HOUR = 3_600_000
DAY_MS = 24 * MS_PER_HOUR
KM_PER_MILE = 1.609344

Flag = Literal["GF", "FCY", "RF", "FF"]


class TimingError(ValueError):
    """An export that cannot be imported; the message names the file, the line and the fix."""


@dataclass(frozen=True, kw_only=True)
class Options:
    """Facts the files cannot tell (or that the user wants to set); ``None``: derive."""

    id: str | None = None
    series: str | None = None
    season: int | None = None
    event: str | None = None
    session: SessionKind | None = None
    date: str | None = None
    round: int | None = None
    circuit: str | None = None
    lap_km: float | None = None
    turns: int | None = None
    duration_s: int | None = None
    laps: int | None = None


@dataclass(frozen=True)
class Imported:
    recording: Recording
    warnings: list[str] = field(default_factory=list)


# -- text, cells and times -------------------------------------------------------


def decode(data: bytes) -> str:
    """Text of an export: UTF-8 (with or without a byte-order mark), else Windows-1252."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        # Older exports are Latin-1/Windows-1252; latin-1 as a last resort never fails,
        # and a file that is not an export is then rejected on its header.
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            return data.decode("latin-1")


_TIME = re.compile(r"^(?:(?:(\d+):)?(\d+)[:'])?(\d+)(?:\.(\d{1,3}))?$", re.ASCII)
_FRACTION_SCALE = (0, 100, 10, 1)  # milliseconds per unit of a 1-, 2- or 3-digit fraction


def parse_time(text: str) -> int | None:
    """Milliseconds of ``58.123``, ``1:16.970``, ``1:20:03.800``, ``1'58.056``,
    ``5:44'41.101`` (``'`` separates minutes from seconds); ``None`` if it is not a time."""
    m = _TIME.match(text)
    if m is None:
        m = _TIME.match(text.strip().lstrip("+"))  # the rare padded or signed cell
        if m is None:
            return None
    hours, minutes, seconds, frac = m.groups()
    s = int(seconds)
    if minutes is not None:
        mi = int(minutes)
        if s >= 60 or (hours is not None and mi >= 60):
            return None
        s += 60 * mi
        if hours is not None:
            s += 3600 * int(hours)
    if frac is None:
        return s * 1000
    return s * 1000 + int(frac) * _FRACTION_SCALE[len(frac)]


def format_time(ms: int) -> str:
    """``H:MM:SS.mmm`` (or ``M:SS.mmm`` under an hour), the way the exports write times."""
    s, milli = divmod(ms, 1000)
    m, s = divmod(s, 60)
    h, m = divmod(m, 60)
    if h:
        return f"{h}:{m:02d}:{s:02d}.{milli:03d}"
    return f"{m}:{s:02d}.{milli:03d}"


@dataclass(frozen=True)
class Gap:
    ms: int | None = None
    laps: int | None = None


_GAP_LAPS = re.compile(r"^\+?\s*(\d+)\s*laps?$", re.IGNORECASE)


def parse_gap(text: str) -> Gap | None:
    """A gap cell: ``-`` or empty (none), ``+18.134`` / ``18.134`` (time), ``1 Lap``,
    ``2 Laps``, ``+2 laps`` (laps). ``None`` when the cell is something else."""
    text = text.strip()
    if text in ("", "-", "--"):
        return Gap()
    m = _GAP_LAPS.match(text)
    if m:
        return Gap(laps=int(m.group(1)))
    ms = parse_time(text)
    if ms is None:
        return None
    return Gap(ms=ms)


# -- tables -------------------------------------------------------------------


@dataclass
class Table:
    """A delimited file read by header name."""

    name: str
    columns: dict[str, int]
    """Normalised header name -> cell index (first occurrence)."""
    header: list[str]
    rows: list[tuple[int, list[str]]]
    """(line number, cells) of each non-blank data row."""
    delimiter: str

    def has(self, *names: str) -> bool:
        return any(n in self.columns for n in names)

    def index(self, *names: str) -> int | None:
        for n in names:
            if n in self.columns:
                return self.columns[n]
        return None


def _normalise(name: str) -> str:
    return re.sub(r"\s+", " ", name.replace("\ufeff", "").strip()).upper()


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (";", ",", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_table(text: str, name: str) -> Table:
    """Split an export into header and rows, detecting the delimiter.

    Raises ``TimingError`` for an empty file, a row cut short (the last row of a
    truncated file) or a row wider than the header.
    """
    text = text.lstrip("\ufeff")
    lines = text.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise TimingError(f"{name}: the file is empty; expected an Al Kamel timing export")
    delimiter = _delimiter(lines[first])
    reader = csv.reader(lines[first:], delimiter=delimiter)
    try:
        header = next(reader)
        rows: list[tuple[int, list[str]]] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            rows.append((first + reader.line_num, [c.strip() for c in cells]))
    except csv.Error as exc:
        raise TimingError(
            f"{name}: line {first + reader.line_num}: not a readable delimited file ({exc})"
        ) from exc
    columns: dict[str, int] = {}
    for i, raw in enumerate(header):
        key = _normalise(raw)
        if key and key not in columns:
            columns[key] = i
    width = len(header)
    while width and not header[width - 1].strip():
        width -= 1  # a trailing delimiter leaves an empty last header cell
    table = Table(name=name, columns=columns, header=header, rows=rows, delimiter=delimiter)
    if rows:
        _check_widths(table, width, ends_with_newline=text.endswith(("\n", "\r")))
    return table


def _check_widths(table: Table, header_width: int, *, ends_with_newline: bool) -> None:
    reference_line, reference = table.rows[0]
    for line, cells in table.rows:
        extra = [c for c in cells[header_width:] if c]
        if len(cells) > header_width and extra:
            raise TimingError(
                f"{table.name}: line {line}: {len(cells)} fields but the header has "
                f"{header_width}; is a name holding the delimiter {table.delimiter!r} unquoted?"
            )
    last_line, last = table.rows[-1]
    if len(table.rows) > 1 and len(last) < len(reference):
        hint = "" if ends_with_newline else " and the file does not end with a line break"
        raise TimingError(
            f"{table.name}: line {last_line}: the last row has {len(last)} fields where line "
            f"{reference_line} has {len(reference)}{hint}: the file looks truncated; "
            "download the export again"
        )


def _cell(cells: list[str], index: int | None) -> str:
    if index is None or index >= len(cells):
        return ""
    return cells[index]


def _require(table: Table, what: str, *groups: tuple[str, ...]) -> list[int]:
    found: list[int] = []
    missing: list[str] = []
    for names in groups:
        i = table.index(*names)
        if i is None:
            missing.append("/".join(names))
        else:
            found.append(i)
    if missing:
        seen = ", ".join(k for k in list(table.columns)[:12])
        raise TimingError(
            f"{table.name}: line 1: not an Al Kamel {what}: no {', '.join(missing)} column "
            f"(header starts {seen or 'empty'})"
        )
    return found


def _require_cells(table: Table, line: int, cells: list[str], indices: Iterable[int]) -> None:
    top = max(indices)
    if len(cells) <= top:
        raise TimingError(
            f"{table.name}: line {line}: only {len(cells)} fields, the row is cut short "
            "(a truncated or hand-edited file?)"
        )


# -- laps -----------------------------------------------------------------------

_CAR = re.compile(r"^[0-9A-Za-z]{1,8}$")

_FLAGS: dict[str, Flag] = {
    "": "GF",
    "GF": "GF",
    "G": "GF",
    "GREEN": "GF",
    "FCY": "FCY",
    "SC": "FCY",
    "VSC": "FCY",
    "Y": "FCY",
    "YF": "FCY",
    "RF": "RF",
    "R": "RF",
    "RED": "RF",
    "FF": "FF",
    "CF": "FF",
    "CHK": "FF",
}
"""Flag at the line as exports write it. The wire knows green, full-course yellow, red
and chequered only, so a safety car period (``SC``) is replayed as a full-course yellow."""


@dataclass
class LapRow:
    line: int
    lap: LapRecord
    cls: str
    team: str
    manufacturer: str
    kph: float | None


def _car(table: Table, line: int, text: str) -> str:
    if not _CAR.match(text):
        raise TimingError(
            f"{table.name}: line {line}: car number {text!r} is not 1-8 letters or digits"
        )
    return text


def _time_cell(table: Table, line: int, column: str, text: str, *, required: bool) -> int | None:
    if not text:
        if required:
            raise TimingError(f"{table.name}: line {line}: {column} is empty")
        return None
    ms = parse_time(text)
    if ms is None:
        raise TimingError(
            f"{table.name}: line {line}: {column} {text!r} is not a time "
            "(expected 58.123, 1:16.970 or 1:20:03.800)"
        )
    return ms


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _int_cell(table: Table, line: int, column: str, text: str) -> int:
    if not _is_number(text):
        raise TimingError(f"{table.name}: line {line}: {column} {text!r} is not a whole number")
    return int(text)


def read_laps(table: Table, warnings: list[str] | None = None) -> list[LapRow]:
    """Rows of a lap export, checked: numbers and times parse, each car's laps rise.

    A flag at the line that is not known is taken as green, with a warning (one
    per value) added to ``warnings``: the times, which are what matter, are intact.
    """
    unknown_flags: set[str] = set()
    i_car, i_lap, i_elapsed, i_time = _require(
        table, "lap export", ("NUMBER",), ("LAP_NUMBER",), ("ELAPSED",), ("LAP_TIME",)
    )
    sector_cols: list[int] = []
    for k in range(1, MAX_SECTORS + 1):
        i = table.index(f"S{k}")
        if i is None:
            break
        sector_cols.append(i)
    i_dnum = table.index("DRIVER_NUMBER")
    i_dname = table.index("DRIVER_NAME", "DRIVER")
    i_hour = table.index("HOUR")
    i_pit = table.index("PIT_TIME")
    i_inpit = table.index("CROSSING_FINISH_LINE_IN_PIT")
    i_flag = table.index("FLAG_AT_FL")
    i_cls = table.index("CLASS")
    i_team = table.index("TEAM")
    i_manu = table.index("MANUFACTURER")
    i_kph = table.index("KPH")
    needed = [i_car, i_lap, i_elapsed, i_time, *sector_cols]

    out: list[LapRow] = []
    last: dict[str, tuple[int, int, int]] = {}  # car -> (lap, elapsed, line)
    for line, cells in table.rows:
        _require_cells(table, line, cells, needed)
        car = _car(table, line, cells[i_car])
        lap = _int_cell(table, line, "LAP_NUMBER", cells[i_lap])
        if lap < 1:
            raise TimingError(f"{table.name}: line {line}: LAP_NUMBER {lap} is below 1")
        elapsed = _time_cell(table, line, "ELAPSED", cells[i_elapsed], required=True)
        assert elapsed is not None
        lap_ms = _time_cell(table, line, "LAP_TIME", cells[i_time], required=False)
        sectors = [
            _time_cell(table, line, f"S{k + 1}", cells[i], required=False)
            for k, i in enumerate(sector_cols)
        ]
        pit_ms = _time_cell(table, line, "PIT_TIME", _cell(cells, i_pit), required=False)
        flag = _flag(table, line, _cell(cells, i_flag), unknown_flags, warnings)
        dnum_text = _cell(cells, i_dnum)
        # Driver numbers only tell driver changes apart: one that is not a number is dropped.
        driver_number = int(dnum_text) if _is_number(dnum_text) else None
        kph = _kph(_cell(cells, i_kph))
        previous = last.get(car)
        if previous is not None:
            _check_lap_order(table, line, car, lap, elapsed, cells[i_elapsed], previous)
        last[car] = (lap, elapsed, line)
        record = LapRecord(
            number=car,
            lap=lap,
            lap_ms=lap_ms,
            sectors_ms=sectors,
            elapsed_ms=elapsed,
            driver_number=driver_number,
            driver=_cell(cells, i_dname) or None,
            time_of_day=_cell(cells, i_hour) or None,
            pit_ms=pit_ms,
            in_pit=bool(_cell(cells, i_inpit)) and _cell(cells, i_inpit) not in ("0", "N"),
            flag=flag,
        )
        out.append(
            LapRow(
                line=line,
                lap=record,
                cls=_cell(cells, i_cls),
                team=_cell(cells, i_team),
                manufacturer=_cell(cells, i_manu),
                kph=kph,
            )
        )
    if not out:
        raise TimingError(f"{table.name}: no laps after the header")
    return out


def _flag(
    table: Table, line: int, text: str, unknown: set[str], warnings: list[str] | None
) -> Flag:
    """The flag at the line a cell gives; one not known is green, with a warning the first
    time it is seen (``unknown`` holds those seen)."""
    flag_text = text.upper()
    flag = _FLAGS.get(flag_text)
    if flag is None:
        if flag_text not in unknown and warnings is not None:
            warnings.append(
                f"{table.name}: line {line}: FLAG_AT_FL {flag_text!r} is not a known flag "
                f"(known: {', '.join(k for k in _FLAGS if k)}); taken as green"
            )
        unknown.add(flag_text)
        flag = "GF"
    return flag


def _kph(text: str) -> float | None:
    """A lap's average speed; speeds only estimate a lap length, so a bad one is left out."""
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _check_lap_order(
    table: Table,
    line: int,
    car: str,
    lap: int,
    elapsed: int,
    elapsed_text: str,
    previous: tuple[int, int, int],
) -> None:
    """A car's laps must come once each, in order, each crossing the line later than
    the one before (``previous``: its last lap, elapsed time and line)."""
    p_lap, p_elapsed, p_line = previous
    if lap == p_lap:
        raise TimingError(
            f"{table.name}: line {line}: car {car} lap {lap} appears twice "
            f"(first at line {p_line}); remove the duplicate"
        )
    if lap < p_lap:
        raise TimingError(
            f"{table.name}: line {line}: car {car} lap {lap} comes after its lap "
            f"{p_lap} (line {p_line}); the laps are out of order"
        )
    if elapsed <= p_elapsed:
        raise TimingError(
            f"{table.name}: line {line}: car {car} lap {lap} ELAPSED "
            f"{elapsed_text} is not after its lap {p_lap} (line {p_line})"
        )


# -- results --------------------------------------------------------------------

_STATUS: dict[str, Status] = {
    "": "classified",
    "CLASSIFIED": "classified",
    "RUNNING": "classified",
    "FINISHED": "classified",
    "CLA": "classified",
    "NOT CLASSIFIED": "not_classified",
    "NOT_CLASSIFIED": "not_classified",
    "NOTCLASSIFIED": "not_classified",
    "NC": "not_classified",
    "NOT RUNNING": "retired",
    "RETIRED": "retired",
    "DNF": "retired",
    "RET": "retired",
    "DISQUALIFIED": "disqualified",
    "DSQ": "disqualified",
    "DQ": "disqualified",
    "EXCLUDED": "disqualified",
    "EXC": "disqualified",
    "DNS": "dns",
    "DID NOT START": "dns",
    "NOT STARTED": "dns",
}


@dataclass
class ResultRow:
    line: int
    number: str
    position: int | None
    status: Status
    laps: int | None
    total_ms: int | None
    gap_first: Gap
    gap_previous: Gap
    best_ms: int | None
    best_lap: int | None
    cls: str
    team: str
    vehicle: str
    tyre: str
    drivers: list[Driver]
    penalty_ms: int | None = None
    """A penalty column's time, when the export has one."""
    remark: str = ""
    """What a penalty, note or remarks column says of the car."""


# Columns some exports add for decisions on a car's result.
_PENALTY_COLUMNS = ("PENALTY", "PENALTIES", "PENALTY_TIME", "TIME_PENALTY", "PEN")
_REMARK_COLUMNS = ("NOTE", "NOTES", "REMARK", "REMARKS", "COMMENT", "COMMENTS", "DECISION")


def _drivers(table: Table, cells: list[str]) -> list[Driver]:
    drivers: list[Driver] = []
    for n in range(1, 9):
        first = _cell(cells, table.index(f"DRIVER{n}_FIRSTNAME", f"DRIVER_{n}_FIRSTNAME"))
        second = _cell(cells, table.index(f"DRIVER{n}_SECONDNAME", f"DRIVER_{n}_SECONDNAME"))
        full = _cell(cells, table.index(f"DRIVER_{n}", f"DRIVER{n}"))
        name = " ".join(p for p in (first, second) if p) or full
        if name:
            country = _cell(cells, table.index(f"DRIVER{n}_COUNTRY", f"DRIVER_{n}_COUNTRY"))
            drivers.append(Driver(name=name, nationality=country or None))
    if not drivers:
        first = _cell(cells, table.index("DRIVER_FIRSTNAME"))
        second = _cell(cells, table.index("DRIVER_SECONDNAME"))
        name = " ".join(p for p in (first, second) if p)
        if name:
            country = _cell(cells, table.index("DRIVER_COUNTRY"))
            drivers.append(Driver(name=name, nationality=country or None))
    return drivers


def results_kind(table: Table) -> SessionKind | None:
    """``race`` for a race classification (``TOTAL_TIME``), ``qualifying`` for a best-lap
    classification (``TIME``), ``None`` if neither."""
    if table.has("TOTAL_TIME"):
        return "race"
    if table.has("TIME", "BEST_LAP_TIME", "FL_TIME"):
        return "qualifying"
    return None


def read_results(table: Table, kind: SessionKind) -> list[ResultRow]:
    (i_car,) = _require(table, "results export", ("NUMBER",))
    i_pos = table.index("POSITION", "POS")
    if i_pos is None:
        _require(table, "results export", ("POSITION", "POS"))
    if kind == "race":
        _require(table, "race results export", ("LAPS",), ("TOTAL_TIME",))
    i_status = table.index("STATUS")
    i_laps = table.index("LAPS")
    i_total = table.index("TOTAL_TIME")
    i_penalty = table.index(*_PENALTY_COLUMNS)
    i_remark = table.index(*_REMARK_COLUMNS)
    i_gap1 = table.index("GAP_FIRST")
    i_gapp = table.index("GAP_PREVIOUS")
    if kind == "race":
        i_best, i_bestlap = table.index("FL_TIME"), table.index("FL_LAPNUM")
    else:
        i_best = table.index("TIME", "BEST_LAP_TIME", "FL_TIME")
        i_bestlap = table.index("LAP", "BEST_LAP_NUMBER", "FL_LAPNUM")
    out: list[ResultRow] = []
    seen: dict[str, int] = {}
    for line, cells in table.rows:
        _require_cells(table, line, cells, [i for i in (i_car, i_pos) if i is not None])
        car = _car(table, line, cells[i_car])
        if car in seen:
            raise TimingError(
                f"{table.name}: line {line}: car {car} is classified twice "
                f"(first at line {seen[car]})"
            )
        seen[car] = line
        pos_text = _cell(cells, i_pos)
        # Unplaced cars may carry NC, DSQ or DNS where a position would be: they
        # keep their place in the file, and that word is their status if none is given.
        position = int(pos_text) if _is_number(pos_text) else None
        status = _status(table, line, _cell(cells, i_status), pos_text, position)
        laps_text = _cell(cells, i_laps)
        gaps = [
            _gap(table, line, column, _cell(cells, index))
            for column, index in (("GAP_FIRST", i_gap1), ("GAP_PREVIOUS", i_gapp))
        ]
        best_lap_text = _cell(cells, i_bestlap)
        penalty_ms, remark = _penalty_and_remark(_cell(cells, i_penalty), _cell(cells, i_remark))
        out.append(
            ResultRow(
                line=line,
                number=car,
                position=position,
                status=status,
                laps=_int_cell(table, line, "LAPS", laps_text) if laps_text else None,
                total_ms=_time_cell(
                    table, line, "TOTAL_TIME", _cell(cells, i_total), required=False
                ),
                gap_first=gaps[0],
                gap_previous=gaps[1],
                best_ms=_time_cell(
                    table, line, "best lap time", _cell(cells, i_best), required=False
                ),
                # IMSA writes FL_LAPNUM 0 for a car with no timed lap: not known.
                best_lap=(_int_cell(table, line, "best lap number", best_lap_text) or None)
                if best_lap_text
                else None,
                cls=_cell(cells, table.index("CLASS")),
                team=_cell(cells, table.index("TEAM")),
                vehicle=_cell(cells, table.index("VEHICLE", "CAR", "CHASSIS")),
                tyre=_cell(cells, table.index("TIRES", "TYRES", "TYRE", "TIRE")),
                drivers=_drivers(table, cells),
                penalty_ms=penalty_ms or None,
                remark=remark,
            )
        )
    if not out:
        raise TimingError(f"{table.name}: no classified cars after the header")
    return out


def _status(
    table: Table, line: int, status_cell: str, pos_text: str, position: int | None
) -> Status:
    """A result's status: the STATUS cell, else the word in place of a position (an
    unplaced car with neither is refused, as is a status not known)."""
    status_text = re.sub(r"\s+", " ", status_cell.upper())
    if not status_text and position is None:
        status_text = pos_text.upper()
    status = _STATUS.get(status_text)
    if status is None and not status_cell and position is None:
        raise TimingError(
            f"{table.name}: line {line}: POSITION {pos_text!r} is neither a number nor a status"
        )
    if status is None:
        raise TimingError(
            f"{table.name}: line {line}: STATUS {status_cell!r} is not known "
            "(known: Classified, Running, Not classified, Retired, DNF, Disqualified, "
            "Excluded, DNS)"
        )
    return status


def _gap(table: Table, line: int, column: str, text: str) -> Gap:
    gap = parse_gap(text)
    if gap is None:
        raise TimingError(
            f"{table.name}: line {line}: {column} {text!r} is neither a time nor a number of laps"
        )
    return gap


def _penalty_and_remark(penalty_text: str, remark_text: str) -> tuple[int | None, str]:
    """A penalty column's time, and what the penalty and remark columns say in words: a
    penalty that is not a time ("Drive through", "+1 lap") is said, not timed."""
    penalty_ms = _penalty_time(penalty_text) if penalty_text else None
    remarks = [remark_text]
    if penalty_text and penalty_ms is None and penalty_text not in ("0", "-"):
        remarks.insert(0, penalty_text)
    return penalty_ms, "; ".join(r for r in remarks if r)


# -- facts ------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownCircuit:
    keys: tuple[str, ...]
    slug: str
    circuit: Circuit


def _c(name: str, km: float, mi: float, turns: int) -> Circuit:
    return Circuit(name=name, length_km=km, length_mi=mi, turns=turns)


KNOWN_CIRCUITS: tuple[KnownCircuit, ...] = (
    KnownCircuit(
        ("laguna-seca", "monterey"),
        "laguna-seca",
        _c("WeatherTech Raceway Laguna Seca", 3.602, 2.238, 11),
    ),
    # The layout IMSA races at Lime Rock (no chicane): the export's speeds are
    # computed over 1.474 mi, not the 1.53 mi of the full circuit.
    KnownCircuit(("lime-rock",), "lime-rock", _c("Lime Rock Park", 2.372, 1.474, 7)),
    KnownCircuit(
        ("petit-le-mans", "road-atlanta", "michelin-raceway"),
        "road-atlanta",
        _c("Michelin Raceway Road Atlanta", 4.088, 2.54, 12),
    ),
    KnownCircuit(("daytona",), "daytona", _c("Daytona International Speedway", 5.729, 3.56, 12)),
    KnownCircuit(("sebring",), "sebring", _c("Sebring International Raceway", 6.019, 3.74, 17)),
    KnownCircuit(("long-beach",), "long-beach", _c("Long Beach Street Circuit", 3.167, 1.968, 11)),
    KnownCircuit(("road-america", "elkhart"), "road-america", _c("Road America", 6.515, 4.048, 14)),
    KnownCircuit(("virginia", "vir"), "vir", _c("VIRginia International Raceway", 5.263, 3.27, 17)),
    KnownCircuit(("mid-ohio",), "mid-ohio", _c("Mid-Ohio Sports Car Course", 3.634, 2.258, 13)),
    KnownCircuit(("baltimore",), "baltimore", _c("Baltimore Street Circuit", 3.283, 2.04, 12)),
    KnownCircuit(
        ("le-mans", "lemans", "sarthe"), "le-mans", _c("Circuit de la Sarthe", 13.626, 8.467, 38)
    ),
    KnownCircuit(("spa",), "spa", _c("Circuit de Spa-Francorchamps", 7.004, 4.352, 19)),
    KnownCircuit(("monza",), "monza", _c("Autodromo Nazionale Monza", 5.793, 3.6, 11)),
    KnownCircuit(("fuji",), "fuji", _c("Fuji Speedway", 4.563, 2.835, 16)),
    KnownCircuit(
        ("bahrain", "sakhir"), "bahrain", _c("Bahrain International Circuit", 5.412, 3.363, 15)
    ),
    KnownCircuit(("silverstone",), "silverstone", _c("Silverstone Circuit", 5.891, 3.66, 18)),
    KnownCircuit(
        ("portimao", "algarve"), "portimao", _c("Algarve International Circuit", 4.653, 2.891, 15)
    ),
    KnownCircuit(("imola",), "imola", _c("Autodromo Enzo e Dino Ferrari", 4.909, 3.05, 19)),
    KnownCircuit(
        ("cota", "circuit-of-the-americas", "austin"),
        "cota",
        _c("Circuit of the Americas", 5.513, 3.426, 20),
    ),
    KnownCircuit(
        ("interlagos", "sao-paulo"),
        "interlagos",
        _c("Autodromo Jose Carlos Pace", 4.309, 2.677, 15),
    ),
    KnownCircuit(("shanghai",), "shanghai", _c("Shanghai International Circuit", 5.451, 3.387, 16)),
)

# fmt: off
_SESSION_WORDS = {
    "imsa", "wec", "fia", "elms", "alms", "race", "laps", "lap", "results", "result",
    "qualifying", "qualification", "quali", "practice", "analysis", "classification",
    "chronological", "csv", "hour", "hours",
}

# Fastest first; names compared without spaces, hyphens, underscores or case.
_CLASS_ORDER = [
    "HYPERCAR", "LMH", "LMDH", "GTP", "P1", "LMP1", "DPI", "LMP2", "P2", "LMP3", "PC",
    "GTLM", "LMGTEPRO", "GTEPRO", "GTE", "LMGTEAM", "GTEAM", "GT", "GTDPRO", "GTD",
    "LMGT3", "GT3", "GTC", "GS", "TCR", "ST",
]
# fmt: on


def _class_key(cls: str) -> str:
    return re.sub(r"[\s_\-]+", "", cls).upper()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _tokens(name: str) -> str:
    """A file name (or path) as ``-``-joined lower-case words, for matching."""
    return "-" + _slug(name) + "-"


def find_circuit(name: str) -> KnownCircuit | None:
    haystack = _tokens(name)
    for known in KNOWN_CIRCUITS:
        if any(f"-{key}-" in haystack for key in known.keys):
            return known
    return None


def _circuit_words(basename: str) -> str:
    words = [w for w in _slug(basename).split("-") if w]
    kept = [w for w in words if w not in _SESSION_WORDS and not w.isdigit()]
    return " ".join(w.capitalize() for w in kept)


def _places(names: Sequence[str]) -> list[str]:
    """Where facts may be read, nearest first: the file names, then their folders."""
    parts = [re.split(r"[\\/]", n) for n in names]
    out = [p[-1] for p in parts]
    for depth in (2, 3, 4):
        out.extend(p[-depth] for p in parts if len(p) >= depth)
    return [p for p in out if p]


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path)[-1]


_SERIES = (
    (("imsa", "weathertech-sportscar"), "imsa", "IMSA WeatherTech SportsCar Championship"),
    (("fia-wec", "wec", "world-endurance"), "wec", "FIA World Endurance Championship"),
    (("elms", "european-le-mans"), "elms", "European Le Mans Series"),
    (("alms", "asian-le-mans"), "alms", "Asian Le Mans Series"),
)
_IMSA_CLASSES = {"DPI", "GTLM", "GTD", "GTDPRO", "GTP"}
_WEC_CLASSES = {"HYPERCAR", "LMGT3", "LMGTEPRO", "LMGTEAM", "LMH", "LMDH"}


def _series(
    options: Options, names: Sequence[str], results: Table, classes: set[str]
) -> tuple[str, str]:
    """(slug, name) of the series."""
    if options.series:
        return _slug(options.series) or "series", options.series
    haystack = "".join(_tokens(n) for n in names)
    for keys, slug, full in _SERIES:
        if any(f"-{k}-" in haystack for k in keys):
            return slug, full
    if any(c.startswith("IMSA_") for c in results.columns) or classes & _IMSA_CLASSES:
        return "imsa", "IMSA WeatherTech SportsCar Championship"
    if classes & _WEC_CLASSES:
        return "wec", "FIA World Endurance Championship"
    raise TimingError(
        f"{results.name}: cannot tell the series from the file names or classes; pass --series NAME"
    )


def _season(options: Options, names: Sequence[str]) -> int:
    if options.season:
        return options.season
    for place in _places(names):
        m = re.search(r"(?<!\d)(19[5-9]\d|20\d\d)(?!\d)", place) or _DATE_IN_NAME.search(place)
        if m:
            return int(m.group(1))
    raise TimingError(f"{names[0]}: no year in the file name; pass --season YEAR")


_ROUND_STEPS_S = (3600, 1800, 900, 600, 300, 60)


def scheduled_length(after_ms: int, until_ms: int) -> int:
    """The roundest whole-minute time in ``(after_ms, until_ms]``, in seconds.

    Time-certain sessions end when the chequered flag is shown to the first car
    (the leader, in a race) after the clock ran out: the scheduled length lies
    between that car's previous crossing and its final one. Without a whole
    minute in that window, ``until_ms`` rounded down to the minute.
    """
    for step in _ROUND_STEPS_S:
        step_ms = step * 1000
        candidate = until_ms // step_ms * step_ms
        if after_ms < candidate <= until_ms and candidate > 0:
            return candidate // 1000
    return max(60, until_ms // 60_000 * 60)


_HOUR_WITH_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[ T](.+)$")
_DATE_IN_NAME = re.compile(
    # 2024-06-15, 2024_06_15, 20240615, and Al Kamel's folder stamps 202406151600
    r"(?<!\d)((?:19|20)\d\d)[-_]?(0[1-9]|1[0-2])[-_]?(0[1-9]|[12]\d|3[01])(?:\d{4}|\d{6})?(?!\d)"
)


def _start_time(rows: list[LapRow]) -> tuple[str | None, str | None, list[str]]:
    """Time of day (and date, when ``HOUR`` carries one) at session time zero.

    ``HOUR`` minus ``ELAPSED`` is the same on every row of a consistent export
    (modulo a day: ``HOUR`` wraps at midnight in a 24-hour race).
    """
    offsets: dict[int, int] = {}
    date: str | None = None
    for row in rows:
        text = row.lap.time_of_day
        if not text:
            continue
        dated = _HOUR_WITH_DATE.match(text)
        tod = parse_time(dated.group(4) if dated else text)
        if tod is None:
            continue
        if dated and date is None:
            day = datetime.date(*(int(dated.group(i)) for i in (1, 2, 3)))
            start = datetime.datetime.combine(day, datetime.time()) + datetime.timedelta(
                milliseconds=tod - row.lap.elapsed_ms
            )
            date = start.date().isoformat()
        off = (tod - row.lap.elapsed_ms) % DAY_MS
        offsets[off] = offsets.get(off, 0) + 1
    if not offsets:
        return None, date, []
    best = max(offsets, key=lambda k: offsets[k])
    warnings: list[str] = []
    if len(offsets) > 1:
        odd = sum(n for k, n in offsets.items() if k != best)
        warnings.append(
            f"{odd} laps have a HOUR that disagrees with ELAPSED; start time from the rest"
        )
    s = best // 1000
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}", date, warnings


def _date_in_names(names: Sequence[str]) -> str | None:
    for place in _places(names):
        m = _DATE_IN_NAME.search(place)
        if m:
            try:
                return datetime.date(*(int(g) for g in m.groups())).isoformat()
            except ValueError:
                continue
    return None


def _estimate_lap_km(rows: list[LapRow]) -> float | None:
    """Lap length from the speeds: KPH x lap time on green-flag laps off the pit lane."""
    values = [
        r.kph * r.lap.lap_ms / MS_PER_HOUR
        for r in rows
        if r.kph
        and r.lap.lap_ms
        and r.lap.flag == "GF"
        and not r.lap.in_pit
        and r.lap.pit_ms is None
    ]
    if not values:
        return None
    return round(statistics.median(values), 3)


# -- the import -----------------------------------------------------------------------


def import_timing(
    laps_text: str,
    results_text: str,
    *,
    laps_name: str,
    results_name: str,
    options: Options | None = None,
) -> Imported:
    """A recording from the text of a lap export and its results export."""
    options = options or Options()
    laps_table = read_table(laps_text, laps_name)
    results_table = read_table(results_text, results_name)
    warnings: list[str] = []

    kind = _session_kind(options, results_table, results_name)
    rows = read_laps(laps_table, warnings)
    results = read_results(results_table, kind)
    per_car = _laps_per_car(rows, results, laps_name, results_name)

    ordered = sorted(results, key=lambda r: (r.position is None, r.position or 0, r.line))
    entries = _entries(ordered, per_car, results_name)
    classification = [
        _classification_row(
            n, r, per_car.get(r.number, []), kind, laps_name, results_name, warnings
        )
        for n, r in enumerate(ordered, start=1)
    ]
    qualifying = (
        [_qualifying_row(r, per_car.get(r.number, [])) for r in ordered]
        if kind == "qualifying"
        else []
    )

    classes = _order_classes(entries, rows)
    names = [laps_name, results_name]
    series_slug, series = _series(options, names, results_table, {_class_key(c) for c in classes})
    season = _season(options, names)
    circuit, slug = _circuit(options, names, rows, laps_name, warnings)

    records = [r.lap for r in rows]
    lines = max((len(r.sectors_ms) for r in records), default=0) or 1
    length, length_note = _length(options, kind, records, classification)
    start_time, hour_date, w = _start_time(rows)
    warnings.extend(w)

    session_word = _session_word(kind, _basename(laps_name))
    race_id = _race_id(options, f"{series_slug}-{season}-{slug}-{session_word}")
    event = options.event or f"{circuit.name} {session_word.capitalize()} {season}"

    notes: list[Note] = []
    if length_note:
        notes.append(Note(text=length_note, effect="info", table="race"))
    facts = RaceFacts(
        id=race_id,
        series=series,
        season=season,
        event=event,
        session=kind,
        circuit=circuit,
        length=length,
        round=options.round,
        date=options.date or hour_date or _date_in_names(names),
        start_time=start_time,
        interruptions=_yellows(records) if kind == "race" else [],
        timing_lines=min(lines, 16),
    )
    recording = Recording(
        facts=facts,
        classes=classes,
        entries=entries,
        qualifying=qualifying,
        classification=classification,
        notes=notes,
        laps=records,
        sources=[_basename(laps_name), _basename(results_name)],
    )
    return Imported(recording=recording, warnings=warnings)


def _session_kind(options: Options, results_table: Table, results_name: str) -> SessionKind:
    """Race or qualifying: the flag, else the results' columns, else the file name.

    A race needs its cars' total times; results that only rank best laps are
    refused as a race rather than imported with every car at zero time.
    """
    kind = options.session or results_kind(results_table)
    if kind is None:
        if "qualif" in _basename(results_name).lower() or "practice" in results_name.lower():
            kind = "qualifying"
        else:
            _require(results_table, "results export", ("TOTAL_TIME", "TIME"))
            kind = "race"  # unreachable: _require raised
    if kind == "race" and not results_table.has("TOTAL_TIME"):
        raise TimingError(
            f"{results_name}: line 1: a race needs TOTAL_TIME and LAPS columns; this looks "
            "like a best-lap classification: pass --session qualifying"
        )
    return kind


def _laps_per_car(
    rows: list[LapRow], results: list[ResultRow], laps_name: str, results_name: str
) -> dict[str, list[LapRow]]:
    """The lap rows of each car; a car with laps but no result means the files do not match."""
    by_car = {r.number: r for r in results}
    per_car: dict[str, list[LapRow]] = {}
    for row in rows:
        if row.lap.number not in by_car:
            raise TimingError(
                f"{laps_name}: line {row.line}: car {row.lap.number} has laps but no row in "
                f"{results_name}; are the two files from the same session?"
            )
        per_car.setdefault(row.lap.number, []).append(row)
    return per_car


def _entries(
    ordered: list[ResultRow], per_car: dict[str, list[LapRow]], results_name: str
) -> list[Entry]:
    """The entry list in classification order: the results' facts first, the laps' to fill gaps.

    Sets each result's class where only the lap file has it, since the
    classification rows are built from the results afterwards.
    """
    entries: list[Entry] = []
    for r in ordered:
        car_rows = per_car.get(r.number, [])
        cls = r.cls or next((x.cls for x in car_rows if x.cls), "")
        if not cls:
            raise TimingError(
                f"{results_name}: line {r.line}: car {r.number} has no CLASS in either file"
            )
        r.cls = cls
        drivers = r.drivers or _drivers_from_laps(car_rows)
        entries.append(
            Entry(
                number=r.number,
                cls=cls,
                team=r.team or next((x.team for x in car_rows if x.team), "") or f"#{r.number}",
                drivers=drivers,
                chassis=r.vehicle
                or next((x.manufacturer for x in car_rows if x.manufacturer), None),
                tyre=r.tyre or None,
            )
        )
    return entries


def _classification_row(
    n: int,
    r: ResultRow,
    car_rows: list[LapRow],
    kind: SessionKind,
    laps_name: str,
    results_name: str,
    warnings: list[str],
) -> ClassificationRow:
    """The ``n``-th row of the classification: the results' word, the lap file's laps where
    the results give none; a race's post-race penalty (warnings in file order)."""
    laps_done = max((x.lap.lap for x in car_rows), default=0)
    if r.laps is not None and r.laps != laps_done and kind == "race":
        warnings.append(
            f"{results_name}: line {r.line}: car {r.number} has LAPS {r.laps} but its last "
            f"lap in {laps_name} is {laps_done}"
        )
    position = r.position if r.position is not None else n
    penalty_ms, note = (
        _post_race_penalty(r, car_rows, results_name, warnings)
        if kind == "race"
        else (None, r.remark or None)
    )
    return ClassificationRow(
        position=position,
        cls=r.cls,
        number=r.number,
        status=r.status,
        laps=r.laps if r.laps is not None else laps_done,
        provenance="timing",
        total_ms=r.total_ms,
        gap_ms=r.gap_first.ms,
        gap_laps=r.gap_first.laps,
        best_lap_ms=r.best_ms,
        best_lap=r.best_lap,
        penalty_ms=penalty_ms,
        note=note,
    )


def _qualifying_row(r: ResultRow, car_rows: list[LapRow]) -> QualifyingRow:
    """A qualifying result: ranked only with a time; its driver is who set the best lap."""
    best = _best_row(car_rows)
    return QualifyingRow(
        number=r.number,
        cls=r.cls,
        position=r.position if r.best_ms is not None else None,
        driver=best.lap.driver if best else None,
        best_ms=r.best_ms,
        gap_ms=r.gap_first.ms,
        remark=None if r.best_ms is not None or car_rows else "no_time",
    )


def _circuit(
    options: Options, names: list[str], rows: list[LapRow], laps_name: str, warnings: list[str]
) -> tuple[Circuit, str]:
    """The circuit and its slug: a known one named by the flag or the files (its length
    checked against the speeds), else one built from the name and the given or estimated
    length. A ``--turns`` flag always wins."""
    places = [options.circuit] if options.circuit else _places(names)
    known = None
    if not options.lap_km:
        known = next((k for k in map(find_circuit, places) if k is not None), None)
    estimate = _estimate_lap_km(rows)
    if known is not None:
        circuit = known.circuit
        slug = known.slug
        if estimate and abs(estimate - circuit.length_km) > LAP_KM_DEVIATION * circuit.length_km:
            warnings.append(
                f"{laps_name}: the speeds imply a {estimate} km lap, not the "
                f"{circuit.length_km} km of {circuit.name}; pass --lap-km if the layout differs"
            )
    else:
        circuit, slug = _unknown_circuit(options, names, estimate, laps_name, warnings)
    if options.turns is not None and circuit.turns != options.turns:
        circuit = Circuit(
            name=circuit.name,
            length_km=circuit.length_km,
            length_mi=circuit.length_mi,
            turns=options.turns,
        )
    return circuit, slug


def _unknown_circuit(
    options: Options,
    names: list[str],
    estimate: float | None,
    laps_name: str,
    warnings: list[str],
) -> tuple[Circuit, str]:
    """A circuit the table does not know: its name from the flag or the file names, its
    length from ``--lap-km`` or the speeds (with a warning, since it is an estimate)."""
    name = options.circuit or next((w for w in map(_circuit_words, _places(names)) if w), "")
    if not name:
        raise TimingError(
            f"{laps_name}: cannot tell the circuit from the file name; pass --circuit NAME"
        )
    km = options.lap_km or estimate
    if not km:
        raise TimingError(
            f"{laps_name}: no KPH column to estimate the lap length from; pass --lap-km KM"
        )
    circuit = Circuit(
        name=name,
        length_km=round(km, 3),
        length_mi=round(km / KM_PER_MILE, 3),
        turns=options.turns,
    )
    slug = _slug(name) or "circuit"
    if options.lap_km is None:
        warnings.append(
            f"{laps_name}: circuit {name!r} is not known; lap length {km} km estimated from KPH"
        )
    return circuit, slug


def _session_word(kind: SessionKind, basename: str) -> str:
    """The word for the session in ids and event names: a practice file says so in its name."""
    if kind == "race":
        return "race"
    return "practice" if "practice" in basename.lower() else "qualifying"


def _race_id(options: Options, derived: str) -> str:
    """The recording id: the flag's, else the derived words as a slug of at most 64."""
    race_id = options.id or _slug(derived)[:64].strip("-")
    if not re.match(r"^[a-z0-9][a-z0-9_-]*$", race_id) or len(race_id) > 64:
        raise TimingError(
            f"--id {race_id!r}: use lower-case letters, digits, '-' and '_' (at most 64)"
        )
    return race_id


_PENALTY_TIME = re.compile(r"^\+?\s*([\d:'.]{1,16})\s*(?:s|sec|secs|seconds?|\")?$", re.IGNORECASE)


def _penalty_time(text: str) -> int | None:
    """A penalty cell's time: ``23.000``, ``+23s``, ``23 sec``, ``0:23.000``; None for words."""
    m = _PENALTY_TIME.match(text.strip())
    return parse_time(m.group(1)) if m else None


def _post_race_penalty(
    r: ResultRow, car_rows: list[LapRow], results_name: str, warnings: list[str]
) -> tuple[int | None, str | None]:
    """The post-race time penalty of a race result, and the row's note.

    ``TOTAL_TIME`` is the car's race time as classified; its last line crossing
    (the lap file's ``ELAPSED`` of its last lap) is its time on the road. When the
    first exceeds the second by ``PENALTY_MIN_MS`` or more, the difference is time
    added after the race. A penalty column's time is taken as given (a warning
    when the times say otherwise).
    """
    notes = [r.remark] if r.remark else []
    last = max(car_rows, key=lambda x: x.lap.lap, default=None)
    added: int | None = None
    if r.total_ms is not None and last is not None and last.lap.lap == r.laps:
        added = r.total_ms - last.lap.elapsed_ms
    penalty = r.penalty_ms
    if penalty is not None and added is not None and abs(added - penalty) >= PENALTY_MIN_MS:
        warnings.append(
            f"{results_name}: line {r.line}: car {r.number}'s penalty column says "
            f"{format_time(penalty)} but TOTAL_TIME is its last crossing plus {format_time(added)}"
        )
    running = r.status in ("classified", "not_classified")
    if penalty is None and added is not None and added >= PENALTY_MIN_MS and running:
        # (A retired car's time may run to when it stopped: no result to change.)
        penalty = added
    if penalty is not None and last is not None and r.total_ms is not None:
        notes.insert(
            0,
            f"post-race time penalty +{penalty / 1000:g} s (TOTAL_TIME {format_time(r.total_ms)}, "
            f"last crossing {format_time(last.lap.elapsed_ms)})",
        )
    elif penalty is not None:
        notes.insert(0, f"post-race time penalty +{penalty / 1000:g} s")
    return penalty, "; ".join(notes) or None


def _drivers_from_laps(rows: list[LapRow]) -> list[Driver]:
    names: dict[int, str] = {}
    order: list[str] = []
    for row in rows:
        name = row.lap.driver
        if not name:
            continue
        key = row.lap.driver_number if row.lap.driver_number is not None else 1000 + len(order)
        if name not in order:
            order.append(name)
            names.setdefault(key, name)
    by_number = [names[k] for k in sorted(names)]
    rest = [n for n in order if n not in by_number]
    return [Driver(name=n) for n in by_number + rest]


def _best_row(rows: list[LapRow]) -> LapRow | None:
    timed = [r for r in rows if r.lap.lap_ms is not None]
    if not timed:
        return None
    return min(timed, key=lambda r: (r.lap.lap_ms, r.lap.lap))


def _order_classes(entries: list[Entry], rows: list[LapRow]) -> list[str]:
    best: dict[str, int] = {}
    cls_of = {e.number: e.cls for e in entries}
    for row in rows:
        if row.lap.lap_ms is None:
            continue
        cls = cls_of[row.lap.number]
        best[cls] = min(best.get(cls, row.lap.lap_ms), row.lap.lap_ms)
    names = list(dict.fromkeys(e.cls for e in entries))
    rank = {k: i for i, k in enumerate(_CLASS_ORDER)}

    def key(cls: str) -> tuple[int, int, str]:
        return (rank.get(_class_key(cls), len(rank)), best.get(cls, 1 << 62), cls)

    return sorted(names, key=key)


def _length(
    options: Options,
    kind: SessionKind,
    laps: list[LapRecord],
    classification: list[ClassificationRow],
) -> tuple[Length, str | None]:
    if options.duration_s and options.laps:
        raise TimingError("give either --duration or --laps, not both")
    if options.laps:
        return Length(laps=options.laps), None
    crossings = sorted((r.elapsed_ms, r.number, r.flag) for r in laps)
    if options.duration_s:
        duration = options.duration_s
    elif kind == "race":
        after, until = _leader_window(laps, classification)
        duration = scheduled_length(after, until)
    else:
        first_ff = next((i for i, c in enumerate(crossings) if c[2] == "FF"), None)
        if first_ff is not None:
            after = crossings[first_ff - 1][0] if first_ff else 0
            duration = scheduled_length(after, crossings[first_ff][0])
        else:
            duration = max(60, crossings[-1][0] // 60_000 * 60)
    note = None
    if kind == "race":
        _, until = _leader_window(laps, classification)
        if until < duration * 1000 and not any(r.flag == "FF" for r in laps):
            note = (
                f"The race was stopped after {format_time(until)} of its scheduled "
                f"{format_time(duration * 1000)} and not resumed; the classification is taken "
                "from the last laps before the stop."
            )
    return Length(duration_s=duration), note


def _leader_window(
    laps: list[LapRecord], classification: list[ClassificationRow]
) -> tuple[int, int]:
    """(previous, final) crossing of the winner: the car with most laps, first across the line."""
    last: dict[str, LapRecord] = {}
    previous: dict[str, int] = {}
    for r in laps:
        current = last.get(r.number)
        if current is None or r.lap > current.lap:
            if current is not None:
                previous[r.number] = current.elapsed_ms
            last[r.number] = r
    winner = min(last.values(), key=lambda r: (-r.lap, r.elapsed_ms))
    return previous.get(winner.number, 0), winner.elapsed_ms


def _yellows(laps: list[LapRecord]) -> list[Interruption]:
    """Full-course yellows from the flag at the line (see ``simulator.timing_replay``)."""
    out: list[Interruption] = []
    leader_laps = 0
    start: tuple[int, int] | None = None  # (t, leader laps)
    for r in sorted(laps, key=lambda r: r.elapsed_ms):
        if r.flag == "FCY" and start is None:
            start = (r.elapsed_ms, leader_laps)
        elif r.flag in ("GF", "FF") and start is not None:
            out.append(
                Interruption(
                    kind="full_course_yellow",
                    lap=start[1],
                    duration_s=max(1, round((r.elapsed_ms - start[0]) / 1000)),
                    provenance="timing",
                )
            )
            start = None
        leader_laps = max(leader_laps, r.lap)
    if start is not None and laps:
        # Still neutralised at the last crossing (a race stopped under yellow).
        end = max(r.elapsed_ms for r in laps)
        out.append(
            Interruption(
                kind="full_course_yellow",
                lap=start[1],
                duration_s=max(1, round((end - start[0]) / 1000)),
                provenance="timing",
            )
        )
    return out
