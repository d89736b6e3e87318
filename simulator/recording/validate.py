"""Check a recording and explain every problem in it, each with where it is and what to fix.

Pure: bytes or a ``Recording`` in, a list of issues out. Type errors are
collected per section and per row (not only the first), then the facts are
checked against each other: classes, car numbers, grid, laps and order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from simulator.recording.format import (
    ClassificationRow,
    Entry,
    LapRecord,
    Note,
    QualifyingRow,
    RaceFacts,
    Recording,
)
from simulator.timeline.incidents import read as read_notes

Severity = Literal["error", "warning"]

# Miles and kilometres of a lap may differ by rounding, not by more.
LENGTH_TOLERANCE_KM = 0.01
KM_PER_MILE = 1.609344


@dataclass(frozen=True)
class Issue:
    where: str
    """JSON path, with the row's car when it has one: ``$.classification[4] (car #3)``."""
    message: str
    severity: Severity = "error"


# Sections of a recording that are lists of rows, and the type of a row.
_ROW_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "entries": Entry,
    "qualifying": QualifyingRow,
    "classification": ClassificationRow,
    "notes": Note,
    "laps": LapRecord,
}


def _line_col(data: bytes, offset: int) -> str:
    before = data[:offset]
    line = before.count(b"\n") + 1
    col = offset - (before.rfind(b"\n") + 1) + 1
    return f"line {line} column {col}"


def _type_message(exc: msgspec.ValidationError, base: str) -> tuple[str, str]:
    """Split msgspec's ``Expected X, got Y - at `$.a[1]` `` into (path, message)."""
    text = str(exc)
    m = re.match(r"^(.*?)(?: - at `\$(.*)`)?$", text, re.DOTALL)
    assert m is not None
    message, rest = m.group(1), m.group(2) or ""
    return base + rest, message


def validate_bytes(data: bytes) -> tuple[Recording | None, list[Issue]]:
    """Decode a recording file's bytes, reporting every type error by section and row."""
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        m = re.search(r"byte (\d+)", str(exc))
        where = _line_col(data, int(m.group(1))) if m else "$"
        return None, [Issue(where, f"not valid JSON ({exc}); fix the syntax at that place")]
    if not isinstance(raw, dict):
        return None, [Issue("$", "a recording is a JSON object with facts, classes and entries")]
    try:
        return msgspec.convert(raw, Recording), []
    except msgspec.ValidationError:
        pass
    issues = list(_type_issues(raw))
    if not issues:  # pragma: no cover - the whole failed, so some part must fail
        issues = [Issue("$", "not a valid recording")]
    return None, issues


def _type_issues(raw: dict[str, Any]) -> Iterable[Issue]:
    for key in ("facts", "classes", "entries"):
        if key not in raw:
            yield Issue("$", f"missing required section '{key}'")
    if raw.get("format", "chequered.recording") != "chequered.recording":
        yield Issue("$.format", f"format is {raw.get('format')!r}; expected 'chequered.recording'")
    if "facts" in raw:
        try:
            msgspec.convert(raw["facts"], RaceFacts)
        except msgspec.ValidationError as exc:
            path, message = _type_message(exc, "$.facts")
            yield Issue(path, f"{message}; correct this value")
    for key in ("classes", "grid", "sources"):
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            yield Issue(f"$.{key}", f"'{key}' must be a list of strings")
    for key, row_type in _ROW_SECTIONS.items():
        rows = raw.get(key, [])
        if not isinstance(rows, list):
            yield Issue(f"$.{key}", f"'{key}' must be a list")
            continue
        for i, row in enumerate(rows):
            try:
                msgspec.convert(row, row_type)
            except msgspec.ValidationError as exc:
                path, message = _type_message(exc, f"$.{key}[{i}]")
                yield Issue(f"{path}{_car_of(row)}", f"{message}; correct this value")
    known = {"format", "version", "facts", "classes", "entries", "qualifying", "grid"}
    known |= {"classification", "notes", "laps", "sources"}
    for key in raw:
        if key not in known:
            yield Issue(f"$.{key}", f"unknown section '{key}'; remove it or check its spelling")


def _car_of(row: object) -> str:
    if isinstance(row, dict) and isinstance(row.get("number"), str | int):
        return f" (car #{row['number']})"
    return ""


def _row(section: str, i: int, number: str | None) -> str:
    return f"$.{section}[{i}]" + (f" (car #{number})" if number else "")


def validate(recording: Recording) -> list[Issue]:
    """Every inconsistency of a decoded recording."""
    issues: list[Issue] = []
    issues += _check_facts(recording)
    classes = _check_classes(recording, issues)
    entered = _check_entries(recording, classes, issues)
    _check_qualifying(recording, classes, entered, issues)
    _check_grid(recording, entered, issues)
    _check_classification(recording, classes, entered, issues)
    _check_notes(recording, entered, issues)
    _check_laps(recording, entered, issues)
    return issues


def _check_facts(rec: Recording) -> list[Issue]:
    out: list[Issue] = []
    f = rec.facts
    km_from_mi = f.circuit.length_mi * KM_PER_MILE
    if abs(km_from_mi - f.circuit.length_km) > LENGTH_TOLERANCE_KM:
        out.append(
            Issue(
                "$.facts.circuit",
                f"length_km {f.circuit.length_km} and length_mi {f.circuit.length_mi} disagree "
                f"({f.circuit.length_mi} mi is {km_from_mi:.3f} km); correct one of them",
            )
        )
    if f.length.duration_s is not None and f.length.laps is not None:
        out.append(Issue("$.facts.length", "set duration_s or laps, not both"))
    if f.session == "race" and f.length.duration_s is None and f.length.laps is None:
        out.append(Issue("$.facts.length", "a race needs its length: duration_s (timed) or laps"))
    if f.date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", f.date):
        out.append(Issue("$.facts.date", f"date '{f.date}' is not YYYY-MM-DD"))
    if f.date is not None and f.season and not f.date.startswith(str(f.season)):
        out.append(Issue("$.facts.date", f"date {f.date} is not in season {f.season}", "warning"))
    return out


def _check_classes(rec: Recording, issues: list[Issue]) -> set[str]:
    if not rec.classes:
        issues.append(Issue("$.classes", "no classes; list them fastest first, e.g. P1, GT"))
    seen: set[str] = set()
    for i, c in enumerate(rec.classes):
        if c in seen:
            issues.append(Issue(f"$.classes[{i}]", f"class {c} is listed twice"))
        seen.add(c)
    return seen


def _unknown_class(cls: str, classes: set[str]) -> str:
    return f"unknown class '{cls}'; known classes: {', '.join(sorted(classes)) or 'none'}"


def _check_entries(rec: Recording, classes: set[str], issues: list[Issue]) -> dict[str, Entry]:
    entered: dict[str, Entry] = {}
    for i, e in enumerate(rec.entries):
        where = _row("entries", i, e.number)
        if e.number in entered:
            first = rec.entries.index(entered[e.number])
            issues.append(
                Issue(
                    where,
                    f"duplicate car number #{e.number} (also $.entries[{first}]); "
                    "each car is entered once",
                )
            )
            continue
        entered[e.number] = e
        if e.cls not in classes:
            issues.append(Issue(where, _unknown_class(e.cls, classes)))
    return entered


def _not_entered(number: str) -> str:
    return f"car #{number} is not in the entries; add an entry or correct the number"


def _check_qualifying(
    rec: Recording, classes: set[str], entered: dict[str, Entry], issues: list[Issue]
) -> None:
    seen: set[str] = set()
    positions: dict[int, int] = {}
    timed: list[tuple[int, int, int]] = []
    for i, q in enumerate(rec.qualifying):
        where = _row("qualifying", i, q.number)
        if q.number in seen:
            issues.append(Issue(where, f"car #{q.number} has two qualifying rows"))
        seen.add(q.number)
        entry = entered.get(q.number)
        if entry is None:
            issues.append(Issue(where, _not_entered(q.number)))
        elif q.cls and q.cls != entry.cls:
            issues.append(Issue(where, f"class {q.cls} differs from the entry's class {entry.cls}"))
        if q.cls and q.cls not in classes:
            issues.append(Issue(where, _unknown_class(q.cls, classes)))
        if q.position is not None:
            if q.position in positions:
                issues.append(
                    Issue(
                        where,
                        f"position {q.position} is also held by "
                        f"$.qualifying[{positions[q.position]}]",
                    )
                )
            positions[q.position] = i
            if q.best_ms is not None:
                timed.append((q.position, q.best_ms, i))
        if q.best_ms is None and q.remark is None:
            issues.append(
                Issue(where, "no best time and no remark; set best_ms or remark 'no_time'")
            )
    timed.sort()
    for (p1, t1, _), (p2, t2, i2) in itertools.pairwise(timed):
        if t2 < t1:
            issues.append(
                Issue(
                    _row("qualifying", i2, rec.qualifying[i2].number),
                    f"position {p2} has a faster time than position {p1}; check the order",
                    "warning",
                )
            )


def _check_grid(rec: Recording, entered: dict[str, Entry], issues: list[Issue]) -> None:
    seen: set[str] = set()
    for i, number in enumerate(rec.grid):
        where = f"$.grid[{i}] (car #{number})"
        if number in seen:
            issues.append(Issue(where, f"car #{number} is on the grid twice"))
        seen.add(number)
        if number not in entered:
            issues.append(Issue(where, f"grid names car #{number}, which is not entered"))


def _check_classification(
    rec: Recording, classes: set[str], entered: dict[str, Entry], issues: list[Issue]
) -> None:
    rows = rec.classification
    seen: dict[str, int] = {}
    positions: dict[int, int] = {}
    race = rec.facts.session == "race"
    for i, r in enumerate(rows):
        where = _row("classification", i, r.number)
        if r.position in positions:
            issues.append(
                Issue(
                    where,
                    f"position {r.position} is also held by "
                    f"$.classification[{positions[r.position]}]",
                )
            )
        positions[r.position] = i
        if i > 0 and r.position < rows[i - 1].position:
            issues.append(
                Issue(
                    where,
                    f"position {r.position} comes after position "
                    f"{rows[i - 1].position}; list rows in position order",
                )
            )
        if r.number is None:
            issues.append(
                Issue(
                    where,
                    f"position {r.position}: the car is unknown; the race cannot be replayed "
                    "until every row names its car (merge report facts or reconstruct)",
                    "warning",
                )
            )
        else:
            if r.number in seen:
                issues.append(
                    Issue(
                        where,
                        f"car #{r.number} is classified twice "
                        f"(also $.classification[{seen[r.number]}])",
                    )
                )
            seen[r.number] = i
            entry = entered.get(r.number)
            if entry is None:
                issues.append(
                    Issue(
                        where,
                        f"results row for car #{r.number}, which is not "
                        "entered; add an entry or correct the number",
                    )
                )
            elif r.cls is not None and r.cls != entry.cls:
                issues.append(
                    Issue(where, f"class {r.cls} differs from the entry's class {entry.cls}")
                )
        if r.cls is not None and r.cls not in classes:
            issues.append(Issue(where, _unknown_class(r.cls, classes)))
        if race and r.number is not None and r.laps is None and r.status != "dns":
            issues.append(
                Issue(where, "no lap count; the race needs the laps of every car that started")
            )
        if r.status == "dns" and r.laps:
            issues.append(Issue(where, f"a car that did not start has {r.laps} laps"))
    if race:
        _check_lap_order(rows, issues)
        _check_starters(rec, seen, issues)


def _check_lap_order(rows: list[ClassificationRow], issues: list[Issue]) -> None:
    """A classified car never stands behind a car with fewer laps; each status in lap order."""
    fewest: tuple[int, int] | None = None  # (laps, index) of the fewest laps seen above
    last_of_status: dict[str, tuple[int, int]] = {}
    for i, r in enumerate(rows):
        if r.laps is None or r.status == "dns":
            continue
        where = _row("classification", i, r.number)
        if r.status == "classified" and fewest is not None and fewest[0] < r.laps:
            above = rows[fewest[1]]
            issues.append(
                Issue(
                    where,
                    f"classified car at position {r.position} with {r.laps} laps stands behind "
                    f"position {above.position} (car #{above.number}) with {fewest[0]} laps; "
                    "fix the laps or the order",
                )
            )
        else:
            prev = last_of_status.get(r.status)
            if prev is not None and prev[0] < r.laps:
                above = rows[prev[1]]
                issues.append(
                    Issue(
                        where,
                        f"laps contradict the order: position {r.position} ({r.status}) has "
                        f"{r.laps} laps, more than position {above.position} (car "
                        f"#{above.number}, {r.status}) with {prev[0]}",
                    )
                )
        last_of_status[r.status] = (r.laps, i)
        if fewest is None or r.laps < fewest[0]:
            fewest = (r.laps, i)


def _check_starters(rec: Recording, classified: dict[str, int], issues: list[Issue]) -> None:
    if not rec.grid or not rec.classification:
        return
    on_grid = set(rec.grid)
    for number in rec.grid:
        if number not in classified:
            issues.append(
                Issue(
                    f"$.grid[{rec.grid.index(number)}] (car #{number})",
                    f"car #{number} started but has no classification row; add its row "
                    "(status retired with its laps if it did not finish)",
                )
            )
    for number, i in classified.items():
        row = rec.classification[i]
        if number not in on_grid and row.status != "dns":
            issues.append(
                Issue(
                    _row("classification", i, number),
                    f"car #{number} is classified but not on the grid; add it to the grid "
                    "or set status dns",
                )
            )
        if number in on_grid and row.status == "dns":
            issues.append(
                Issue(
                    _row("classification", i, number),
                    f"car #{number} is on the grid but its status is dns",
                )
            )


def _check_notes(rec: Recording, entered: dict[str, Entry], issues: list[Issue]) -> None:
    for i, note in enumerate(rec.notes):
        for number in note.cars:
            if number not in entered:
                issues.append(
                    Issue(f"$.notes[{i}]", f"note names car #{number}, which is not entered")
                )
    if rec.facts.session == "race" and not rec.laps:
        # A synthesised race tells its notes as incidents and messages; say which it cannot.
        for unused in read_notes(rec).unused:
            issues.append(
                Issue(
                    f"$.notes[{unused.note}]",
                    f"note not used by the timeline ({unused.reason}): "
                    f"{_excerpt(rec.notes[unused.note].text)}",
                    "warning",
                )
            )


def _excerpt(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _check_laps(rec: Recording, entered: dict[str, Entry], issues: list[Issue]) -> None:
    last: dict[str, tuple[int, int, int]] = {}  # car -> (lap, elapsed, index)
    reported: set[str] = set()
    for i, lap in enumerate(rec.laps):
        if lap.number not in entered and lap.number not in reported:
            issues.append(Issue(_row("laps", i, lap.number), _not_entered(lap.number)))
            reported.add(lap.number)
        prev = last.get(lap.number)
        if prev is not None and (lap.lap <= prev[0] or lap.elapsed_ms < prev[1]):
            issues.append(
                Issue(
                    _row("laps", i, lap.number),
                    f"lap {lap.lap} at {lap.elapsed_ms} ms comes after lap {prev[0]} at "
                    f"{prev[1]} ms ($.laps[{prev[2]}]); laps of a car go forward in time",
                )
            )
        last[lap.number] = (lap.lap, lap.elapsed_ms, i)
