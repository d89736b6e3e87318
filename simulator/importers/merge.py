"""Merge facts from race reports into an imported race recording, keeping provenance.

Two inputs, both text: a classification CSV (one row per finishing position,
``pos,class,no,engine,laps,gap,status,confidence,note``) and a TOML file of
race facts (length, interruptions, notes, non-starters, reconstruction hints).
Pure: text in, a new ``Recording`` and the problems found out.
"""

from __future__ import annotations

import csv
import io
import tomllib
from dataclasses import dataclass, field

import msgspec
from msgspec import Struct
from msgspec.structs import replace

from simulator.importers.article import Article, Problem, grid_from_qualifying, parse_time_ms
from simulator.importers.reconstruct import Hints, ReconstructError, Starter, reconstruct
from simulator.recording.format import (
    ClassificationRow,
    Driver,
    Entry,
    Interruption,
    Length,
    Note,
    Provenance,
    Recording,
    Status,
)

CSV_COLUMNS = ("pos", "class", "no", "engine", "laps", "gap", "status", "confidence", "note")

# The CSV's confidence words and the provenance they become.
CONFIDENCE: dict[str, Provenance] = {
    "reported": "report",
    "report": "report",
    "inferred": "inferred",
    "unknown": "unknown",
    "article": "article",
    "timing": "timing",
}
STATUSES: dict[str, Status] = {
    "classified": "classified",
    "retired": "retired",
    "dnf": "retired",
    "not_classified": "not_classified",
    "nc": "not_classified",
    "disqualified": "disqualified",
    "dsq": "disqualified",
    "dns": "dns",
}


class FactNote(Struct, kw_only=True, forbid_unknown_fields=True):
    text: str
    effect: str = "info"
    cars: list[str] = []
    table: str = "race"
    provenance: str = "report"


class FactDriver(Struct, kw_only=True, forbid_unknown_fields=True):
    """A driver the article's table leaves out of an entry (it names one per car)."""

    car: str
    name: str
    nationality: str | None = None
    provenance: str = "report"
    source: str = ""
    """Where the name comes from, kept in the note that records the addition."""


class ReportFacts(Struct, kw_only=True, forbid_unknown_fields=True):
    """The TOML facts file: what reports say that the article's tables do not."""

    series: str | None = None
    """The series, when the article names none."""
    length: Length | None = None
    interruptions: list[Interruption] = []
    notes: list[FactNote] = []
    non_starters: list[str] = []
    """Entries that did not start the race (absent from the grid, status dns)."""
    drivers: list[FactDriver] = []
    sources: list[str] = []
    reconstruct: Hints | None = None


@dataclass
class MergeResult:
    recording: Recording
    problems: list[tuple[str, Problem]] = field(default_factory=list)
    completes_classification: bool = False
    summary: str = ""
    qualifying_notes: list[Note] = field(default_factory=list)
    rule_log: list[str] = field(default_factory=list)


@dataclass
class CsvRow:
    line: int
    row: ClassificationRow


def parse_facts(text: str, source: str) -> tuple[ReportFacts | None, list[tuple[str, Problem]]]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [(source, Problem(None, f"not valid TOML: {exc}"))]
    try:
        facts = msgspec.convert(raw, ReportFacts)
    except msgspec.ValidationError as exc:
        return None, [(source, Problem(None, f"not a valid facts file: {exc}"))]
    problems = []
    for i, note in enumerate(facts.notes):
        try:
            msgspec.convert(msgspec.to_builtins(note), Note)
        except msgspec.ValidationError as exc:
            problems.append((source, Problem(None, f"notes[{i}]: {exc}")))
    return facts, problems


def parse_classification_csv(
    text: str, source: str
) -> tuple[list[CsvRow], list[tuple[str, Problem]]]:
    """Rows of a classification CSV; every malformed row is reported with its line."""
    problems: list[tuple[str, Problem]] = []
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return [], [(source, Problem(1, "empty file; expected a header line"))]
    missing = [c for c in ("pos", "no", "status") if c not in header]
    if missing:
        return [], [
            (
                source,
                Problem(
                    1,
                    f"header lacks column(s) {', '.join(missing)}; expected "
                    f"{','.join(CSV_COLUMNS)}",
                ),
            )
        ]
    rows: list[CsvRow] = []
    for values in reader:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        cell = {h: (values[i].strip() if i < len(values) else "") for i, h in enumerate(header)}

        def bad(message: str, line: int = line) -> None:
            problems.append((source, Problem(line, message)))

        pos = cell.get("pos", "")
        if not pos.isdigit() or int(pos) < 1:
            bad(f"pos '{pos}' is not a position (1, 2, ...)")
            continue
        status = STATUSES.get(cell.get("status", "").lower())
        if status is None:
            bad(
                f"position {pos}: status '{cell.get('status')}' is not one of "
                f"{', '.join(sorted(set(STATUSES)))}"
            )
            continue
        confidence = cell.get("confidence", "reported").lower() or "reported"
        provenance = CONFIDENCE.get(confidence)
        if provenance is None:
            bad(f"position {pos}: confidence '{confidence}' is not reported, inferred or unknown")
            continue
        laps_raw = cell.get("laps", "")
        if laps_raw and not laps_raw.isdigit():
            bad(f"position {pos}: laps '{laps_raw}' is not a number")
            continue
        gap_raw = cell.get("gap", "")
        gap = parse_time_ms(gap_raw) if gap_raw else None
        if gap_raw and gap is None:
            bad(f"position {pos}: gap '{gap_raw}' is not a time such as +3.867 or +1:07.281")
            continue
        number = cell.get("no", "") or None
        rows.append(
            CsvRow(
                line,
                ClassificationRow(
                    position=int(pos),
                    cls=cell.get("class", "") or None,
                    number=number,
                    status=status,
                    laps=int(laps_raw) if laps_raw else None,
                    provenance=provenance,
                    gap_ms=gap,
                    engine=cell.get("engine", "") or None,
                    note=cell.get("note", "") or None,
                ),
            )
        )
    return rows, problems


def merge_reports(
    race: Recording,
    article: Article,
    *,
    csv_text: str | None,
    csv_source: str,
    facts_text: str | None,
    facts_source: str,
) -> MergeResult:
    """The race recording with the reports' facts merged in and the rest reconstructed."""
    result = MergeResult(recording=race)
    facts = ReportFacts()
    if facts_text is not None:
        parsed, problems = parse_facts(facts_text, facts_source)
        result.problems += problems
        if parsed is None:
            return result
        facts = parsed
    rec = _apply_facts(race, facts, facts_source, result)
    if csv_text is not None:
        rows, problems = parse_classification_csv(csv_text, csv_source)
        result.problems += problems
        if problems:
            result.recording = rec
            return result
        rec = _merge_rows(rec, article, rows, csv_source, result)
        rec = _complete(rec, facts, csv_source, result)
    result.recording = rec
    return result


def _apply_facts(
    race: Recording, facts: ReportFacts, source: str, result: MergeResult
) -> Recording:
    notes = list(race.notes)
    fact_notes = [msgspec.convert(msgspec.to_builtins(n), Note) for n in facts.notes]
    notes += fact_notes
    result.qualifying_notes = [n for n in fact_notes if n.table == "qualifying"]
    non_starters = set(facts.non_starters)
    non_starters |= {r.number for r in race.classification if r.status == "dns" and r.number}
    qual_notes = [n for n in notes if n.table == "qualifying"]
    grid, applied = grid_from_qualifying(race.qualifying, qual_notes, non_starters)
    for number in applied:
        result.problems.append(
            (
                source or "facts",
                Problem(None, f"#{number} moved to the back of the grid (report note)", "warning"),
            )
        )
    entries, driver_notes = _add_drivers(race.entries, facts.drivers, source, result)
    notes += driver_notes
    facts_struct = race.facts
    if facts.length is not None:
        facts_struct = replace(facts_struct, length=facts.length)
    if facts.series:
        facts_struct = replace(facts_struct, series=facts.series)
    if facts.interruptions:
        facts_struct = replace(
            facts_struct, interruptions=[*facts_struct.interruptions, *facts.interruptions]
        )
    return replace(
        race,
        facts=facts_struct,
        entries=entries,
        grid=grid,
        notes=notes,
        sources=[*race.sources, *facts.sources],
    )


def _add_drivers(
    entries: list[Entry], drivers: list[FactDriver], source: str, result: MergeResult
) -> tuple[list[Entry], list[Note]]:
    """Entries with the facts' drivers added, and a note per driver saying where it came from."""
    by_number = {e.number: e for e in entries}
    notes: list[Note] = []
    for fact in drivers:
        entry = by_number.get(fact.car)
        if entry is None:
            result.problems.append(
                (source or "facts", Problem(None, f"drivers: #{fact.car} is not an entry"))
            )
            continue
        if any(d.name == fact.name for d in entry.drivers):
            continue
        driver = Driver(name=fact.name, nationality=fact.nationality)
        by_number[fact.car] = replace(entry, drivers=[*entry.drivers, driver])
        text = f"#{fact.car} was shared with {fact.name}; the article's table names one driver"
        if fact.source:
            text += f" ({fact.source})"
        notes.append(
            msgspec.convert({"text": text, "cars": [fact.car], "provenance": fact.provenance}, Note)
        )
    return [by_number[e.number] for e in entries], notes


def _merge_rows(
    rec: Recording, article: Article, rows: list[CsvRow], source: str, result: MergeResult
) -> Recording:
    entries = {e.number: e for e in rec.entries}
    engines = dict(article.race_engines)
    by_position = {r.position: r for r in rec.classification}
    merged: dict[int, ClassificationRow] = {}
    seen: dict[str, int] = {}
    for item in rows:
        row = item.row

        def bad(message: str, line: int = item.line) -> None:
            result.problems.append((source, Problem(line, message)))

        if row.position in merged:
            bad(f"position {row.position} appears twice")
            continue
        number = row.number
        if number is not None:
            entry = entries.get(number)
            if entry is None:
                bad(f"position {row.position}: car #{row.number} is not entered in the article")
                continue
            if row.cls is None:
                row = replace(row, cls=entry.cls)
            elif row.cls != entry.cls:
                bad(
                    f"position {row.position}: class {row.cls} but car #{row.number} is "
                    f"entered in {entry.cls}"
                )
            if number in seen:
                bad(f"position {row.position}: car #{number} already at position {seen[number]}")
            seen[number] = row.position
        article_engine = engines.get(row.position)
        if article_engine and row.engine and article_engine != row.engine:
            bad(
                f"position {row.position}: engine '{row.engine}' but the article's race table "
                f"has '{article_engine}'"
            )
        if row.engine is None and article_engine:
            row = replace(row, engine=article_engine)
        known = by_position.get(row.position)
        if known is not None and known.number is not None:
            # The article's own table wins; the CSV may only fill what it left empty.
            if row.number is not None and row.number != known.number:
                bad(
                    f"position {row.position}: car #{row.number} but the article has "
                    f"#{known.number}"
                )
            row = replace(
                known,
                laps=known.laps if known.laps is not None else row.laps,
                laps_provenance=None if known.laps is not None else row.provenance,
                gap_ms=known.gap_ms if known.gap_ms is not None else row.gap_ms,
            )
        merged[row.position] = row
    for position, known in by_position.items():
        merged.setdefault(position, known)
    classification = [merged[p] for p in sorted(merged)]
    return replace(rec, classification=classification)


def _complete(rec: Recording, facts: ReportFacts, source: str, result: MergeResult) -> Recording:
    """Fill unknown cars and laps by the rule, add non-starters, set entry engines."""
    entries = {e.number: e for e in rec.entries}
    starters = [Starter(n, entries[n].cls) for n in rec.grid if n in entries]
    rows = [r for r in rec.classification if r.status != "dns"]
    dns_rows = [r for r in rec.classification if r.status == "dns"]
    needs_rule = any(r.number is None or r.laps is None for r in rows)
    if needs_rule:
        try:
            rows, log = reconstruct(rows, starters, facts.reconstruct or Hints())
        except ReconstructError as exc:
            result.problems.append((source, Problem(None, f"cannot reconstruct: {exc}")))
            return rec
        result.rule_log = log
    # Entered cars that did not start close the classification, as reports say.
    last = max((r.position for r in rows), default=0)
    listed = {r.number for r in rows} | {r.number for r in dns_rows}
    for number in facts.non_starters:
        if number in entries and number not in listed:
            last += 1
            dns_rows.append(
                ClassificationRow(
                    position=last,
                    cls=entries[number].cls,
                    number=number,
                    status="dns",
                    provenance="report",
                    note="did not start",
                )
            )
    rows = rows + dns_rows
    # An engine is an entry fact when a report puts the car on that engine's row.
    new_entries = []
    engine_of = {r.number: r.engine for r in rows if r.provenance == "report" and r.engine}
    for e in rec.entries:
        engine = engine_of.get(e.number)
        new_entries.append(replace(e, engine=engine) if e.engine is None and engine else e)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.provenance] = counts.get(r.provenance, 0) + 1
    result.completes_classification = all(
        r.number is not None and (r.laps is not None or r.status == "dns") for r in rows
    )
    result.summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    return replace(rec, classification=rows, entries=new_entries)
