"""Read a plain-text race article (qualifying and race tables, notes, prose) into recordings.

Pure: text in, ``Recording`` objects and a list of problems out. Columns are
found by what their header means, not where they stand; nothing the text does
not say is invented, and what cannot be read is reported with its line.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

from msgspec.structs import replace as msgspec_replace

from simulator.recording.format import (
    Circuit,
    ClassificationRow,
    Driver,
    Entry,
    Length,
    Note,
    NoteEffect,
    QualifyingRow,
    RaceFacts,
    Recording,
    SessionKind,
    Status,
)

KM_PER_MILE = 1.609344

MAX_INPUT_BYTES = 4 * 1024 * 1024
"""Largest article (or facts, or merge CSV) ``chequered import`` reads; a larger file is
refused before it is read. Encyclopedia articles are 5 to 60 KB (Monterey 2013: 10 KB)."""
MAX_SENTENCE_CHARS = 2000
"""A sentence longer than this is not read for race facts (with a warning). The
longest of the sample articles has 350 characters; a fact-bearing sentence is short."""
MAX_SERIES_WORDS = 12
"""Words a series name may have (``IMSA WeatherTech SportsCar Championship``: 4)."""
UNKNOWN_SERIES = "unknown series"
"""The series of a recording whose article names none."""
NO_RACE_RESULT = "no race result"
"""How the problem of a race import that found no classification begins."""

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """Something in the article that could not be read, or was read with a caveat."""

    line: int | None
    message: str
    severity: Severity = "error"
    session: SessionKind | None = None
    """The session the problem concerns, None for both."""

    def render(self, source: str) -> str:
        where = f"{source}: line {self.line}" if self.line is not None else source
        tag = "" if self.severity == "error" else "warning: "
        return f"{where}: {tag}{self.message}"


# -- column meanings ----------------------------------------------------------

# Header words (lower case, without dots and colons) and what they mean.
_SYNONYMS: dict[str, str] = {
    "pos": "position",
    "position": "position",
    "place": "position",
    "rank": "position",
    "fin": "position",
    "finish": "position",
    "class": "class",
    "cls": "class",
    "category": "class",
    "cat": "class",
    "no": "number",
    "#": "number",
    "number": "number",
    "num": "number",
    "car no": "number",
    "car number": "number",
    "entry": "team",
    "team": "team",
    "entrant": "team",
    "driver": "drivers",
    "drivers": "drivers",
    "chassis": "chassis",
    "car": "chassis",
    "vehicle": "chassis",
    "engine": "engine",
    "tire": "tyre",
    "tyre": "tyre",
    "tires": "tyre",
    "tyres": "tyre",
    "laps": "laps",
    "time": "time",
    "lap time": "time",
    "best time": "time",
    "best lap": "time",
    "qualifying time": "time",
    "qual time": "time",
    "time/retired": "time_or_reason",
    "time/reason": "time_or_reason",
    "gap": "gap",
    "diff": "gap",
    "difference": "gap",
    "behind": "gap",
    "interval": "gap",
    "grid": "grid",
    "start": "grid",
    "grid pos": "grid",
    "status": "status",
    "reason": "reason",
    "points": "points",
    "pts": "points",
}

# Words a qualifying row uses instead of a time.
_REMARKS: dict[str, Literal["no_time", "did_not_participate"]] = {
    "no time": "no_time",
    "no time set": "no_time",
    "did not participate": "did_not_participate",
    "did not qualify": "did_not_participate",
    "dnq": "did_not_participate",
    "dnp": "did_not_participate",
}

# Markers in a race table's position (or status) cell.
_STATUS_WORDS: dict[str, Status] = {
    "dnf": "retired",
    "ret": "retired",
    "retired": "retired",
    "nc": "not_classified",
    "dns": "dns",
    "dsq": "disqualified",
    "dq": "disqualified",
    "exc": "disqualified",
    "ex": "disqualified",
}

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
    "twenty-one": 21,
    "twenty-two": 22,
    "twenty-three": 23,
    "twenty-four": 24,
    "thirty": 30,
}
_ORDINAL_WORDS = {
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
    "eleventh": 11,
    "twelfth": 12,
    "thirteenth": 13,
    "fourteenth": 14,
    "fifteenth": 15,
}
_MONTHS = {
    m: i
    for i, m in enumerate(
        [
            "january",
            "february",
            "march",
            "april",
            "may",
            "june",
            "july",
            "august",
            "september",
            "october",
            "november",
            "december",
        ],
        start=1,
    )
}
# Three capital letters that are part of a name, not a country code.
_NOT_COUNTRY = {"III", "VII", "XII", "XIV", "XVI"}
_NAME_SUFFIXES = {"jr", "jr.", "sr", "sr.", "ii", "iii", "iv"}
_CIRCUIT_WORDS = {
    "circuit",
    "raceway",
    "speedway",
    "park",
    "ring",
    "track",
    "autodrome",
    "autodromo",
    "motorsports",
    "international",
}

_REQUIRED = {
    "qualifying": ("position", "number", "time"),
    "race": ("position", "number", "laps"),
}
_COLUMN_WORDS = {
    "position": "position",
    "number": "car number",
    "class": "class",
    "team": "team",
    "drivers": "drivers",
    "laps": "laps",
    "time": "time",
    "engine": "engine",
    "chassis": "chassis",
    "grid": "grid",
}


def column_key(header: str) -> str | None:
    """What a header cell means, or None for a column this importer does not use."""
    norm = " ".join(header.lower().replace(".", " ").replace(":", " ").split())
    if not norm:
        return None
    if norm in _SYNONYMS:
        return _SYNONYMS[norm]
    if norm.startswith("driver"):
        return "drivers"
    if norm.startswith("tyre") or norm.startswith("tire"):
        return "tyre"
    return None


# -- small value parsers ------------------------------------------------------

# Bounded digit runs: a cell of a million digits is no time, and must not cost
# a million-digit float.
_TIME_RE = re.compile(r"^\+?\s*(?:(\d{1,3}):)?(?:(\d{1,3}):)?(\d{1,6}(?:\.\d{1,6})?)$")
_LAPS_GAP_RE = re.compile(r"^\+?\s*(\d{1,6})\s+laps?$", re.IGNORECASE)


def parse_time_ms(text: str) -> int | None:
    """``1:13.429`` -> 73429; ``+1:07.281`` -> 67281; ``1:02:03.5`` -> 3723500."""
    text = text.strip().replace(",", ".")
    m = _TIME_RE.match(text)
    if not m:
        return None
    a, b, sec = m.groups()
    hours, minutes = (int(a), int(b)) if b is not None else (0, int(a) if a else 0)
    return round((hours * 3600 + minutes * 60 + float(sec)) * 1000)


def parse_int(text: str) -> int | None:
    text = text.strip()
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few of them.
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


def _is_dash(text: str) -> bool:
    return text.strip() in {"", "-", "\u2014", "\u2013", "--"}


def _fold(text: str) -> str:
    """Lower case without accents, for comparing names."""
    return "".join(
        c for c in unicodedata.normalize("NFKD", text.lower()) if not unicodedata.combining(c)
    )


def car_numbers_in(text: str) -> list[str]:
    """Car numbers a note names: ``#0``, ``#66``, ``No. 7``, ``Nos. 3 and 4``."""
    found = re.findall(r"#\s?([0-9A-Za-z]{1,8})\b", text)
    found += re.findall(r"\bNo\.\s?([0-9]{1,4}[A-Za-z]?)\b", text)
    out: list[str] = []
    for n in found:
        if n not in out:
            out.append(n)
    return out


def note_effect(text: str) -> NoteEffect:
    low = text.lower()
    if re.search(
        r"\b(back|rear) of the grid\b|start(ed)? from the (back|rear)|pit lane start", low
    ):
        return "grid_to_back"
    if "fastest lap" in low and ("deleted" in low or "removed" in low or "disallowed" in low):
        return "fastest_lap_deleted"
    if re.search(r"times? (were |was )?(disallowed|deleted|removed|annulled)", low):
        return "times_disallowed"
    if "forfeit" in low and "point" in low:
        return "points_forfeited"
    if re.search(r"\bdisqualified\b|\bexcluded\b", low):
        return "disqualified"
    if "maintain" in low and "position" in low:
        return "result_kept"
    return "info"


def split_code(text: str) -> tuple[str | None, str]:
    """``USA Muscle Milk Pickett Racing`` -> (``USA``, ``Muscle Milk Pickett Racing``)."""
    parts = text.split(None, 1)
    if len(parts) == 2 and _is_code(parts[0]):
        return parts[0], parts[1].strip()
    return None, text.strip()


def _is_code(token: str) -> bool:
    return bool(re.fullmatch(r"[A-Z]{3}", token)) and token not in _NOT_COUNTRY


def _starts_with_code(text: str) -> bool:
    parts = text.split(None, 1)
    return len(parts) == 2 and _is_code(parts[0])


def _strip_separators(name: str) -> str:
    """``Ann Able,`` or ``Claire Dubois /`` (a list separator before the next code)."""
    return re.sub(r"(?:\s*(?:[,;/&]|\band\b))+\s*$", "", name).strip()


def split_drivers(text: str, coded: bool) -> list[Driver]:
    """One cell of drivers: ``DEU Klaus Graf DEU Lucas Luhr`` is two drivers.

    Without country codes, drivers may be separated by ``/``, ``;``, `` and ``
    or commas (a comma before ``Jr.`` belongs to the name).
    """
    text = " ".join(text.split())
    if not text:
        return []
    if coded:
        drivers: list[Driver] = []
        tokens = text.split(" ")
        i = 0
        while i < len(tokens):
            if _is_code(tokens[i]) and i + 1 < len(tokens):
                code = tokens[i]
                name: list[str] = []
                i += 1
                while i < len(tokens) and not (_is_code(tokens[i]) and i + 1 < len(tokens)):
                    name.append(tokens[i])
                    i += 1
                drivers.append(Driver(name=_strip_separators(" ".join(name)), nationality=code))
            else:
                # A name before the first code: keep it rather than drop it.
                name = []
                while i < len(tokens) and not (_is_code(tokens[i]) and i + 1 < len(tokens)):
                    name.append(tokens[i])
                    i += 1
                drivers.append(Driver(name=_strip_separators(" ".join(name))))
        return [d for d in drivers if d.name]
    pieces = re.split(r"\s*(?:/|;|\s&\s|\band\b)\s*", text)
    out: list[Driver] = []
    for piece in pieces:
        parts = [p.strip() for p in piece.split(",")]
        names: list[str] = []
        for p in parts:
            if names and p.lower() in _NAME_SUFFIXES:
                names[-1] = f"{names[-1]}, {p}"
            elif p:
                names.append(p)
        out.extend(Driver(name=n) for n in names)
    return out


# -- tables -------------------------------------------------------------------


@dataclass
class Record:
    """One car's row of a table, with its continuation row if the table has one."""

    line: int
    cells: list[str]
    extra_line: int | None = None
    extra: list[str] = field(default_factory=list)
    closed: bool = True
    """The line ends with ``|`` (a row cut off mid-cell does not)."""


@dataclass
class Table:
    kind: Literal["qualifying", "race", "other"]
    heading: str
    first_line: int
    last_line: int
    columns: list[str | None]
    """What each column of the first header row means."""
    extra_columns: list[str | None]
    """What each column of the continuation header row means (two-row layouts)."""
    header: list[str]
    records: list[Record]
    notes: list[tuple[int, str]]
    header_closed: bool = True
    """The header line ends with ``|``: then every row of the table should."""

    def has(self, key: str) -> bool:
        return key in self.columns or key in self.extra_columns


_FOOTNOTE = re.compile(r"\[(?:\d+|[a-z]|note \d+)\]")
# Markers articles put on a cell: pole or winner symbols, bold and italic marks.
_MARKS = "\u2021\u2020*'"


def _clean_cell(cell: str) -> str:
    cell = _FOOTNOTE.sub("", cell).strip()
    return cell.strip(_MARKS).strip()


def _cells(line: str) -> list[str]:
    body = line.strip()
    if body.startswith("|"):
        body = body[1:]
    if body.endswith("|"):
        body = body[:-1]
    return [_clean_cell(c) for c in body.split("|")]


def _is_rule(cells: list[str]) -> bool:
    """A Markdown header rule: ``|---|:---:|``."""
    return bool(cells) and all(re.fullmatch(r":?-{3,}:?", c) for c in cells)


def _heading(line: str) -> str | None:
    """``== Race ==`` -> ``Race``; None for a line that is not a heading.

    Without a regular expression: a backreference over a line of ``=`` takes
    time cubic in its length.
    """
    body = line.strip()
    if not body.startswith("="):
        return None
    lead = len(body) - len(body.lstrip("="))
    trail = len(body) - len(body.rstrip("="))
    if lead == len(body):
        return ""
    level = min(lead, trail)
    if level == 0:
        return None
    return body[level : len(body) - level].strip(" =\t")


def _is_header_row(cells: list[str]) -> bool:
    named = [c for c in cells if c]
    return bool(named) and all(column_key(c) is not None for c in named)


def _note_text(line: str) -> str | None:
    m = re.match(r"^\s*(?:[-*•]\s*)+(.*\S)\s*$", line) or re.match(
        r"^\s*Notes?:\s*(.*\S)\s*$", line
    )
    # A note is a sentence; a caption such as "Tyre manufacturers" is not.
    if m and len(m.group(1).split()) >= 4:
        return m.group(1)
    return None


def find_tables(lines: list[str]) -> list[Table]:
    """Every ``|``-table of the text, with its section heading and the notes under it."""
    tables: list[Table] = []
    heading = ""
    section_tables = 0
    i = 0
    while i < len(lines):
        h = _heading(lines[i])
        if h is not None:
            heading = h
            section_tables = 0
            i += 1
            continue
        if not lines[i].lstrip().startswith("|"):
            if tables and tables[-1].kind != "other":
                note = _note_text(lines[i])
                if note:
                    tables[-1].notes.append((i + 1, note))
            i += 1
            continue
        start = i
        block: list[tuple[int, list[str]]] = []
        unclosed: set[int] = set()
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            cells = _cells(lines[i])
            if not _is_rule(cells):
                block.append((i + 1, cells))
                if not lines[i].rstrip().endswith("|"):
                    unclosed.add(i + 1)
            i += 1
        if not block:
            continue
        section_tables += 1
        table = _build_table(block, heading, start + 1, i, section_tables)
        table.header_closed = block[0][0] not in unclosed
        for rec in table.records:
            rec.closed = rec.line not in unclosed
        tables.append(table)
    return tables


def _build_table(
    block: list[tuple[int, list[str]]], heading: str, first: int, last: int, nth: int
) -> Table:
    _, header = block[0]
    columns = [column_key(c) for c in header]
    rest = block[1:]
    extra_columns: list[str | None] = []
    # A second header row (``| Engine | | |``) means every car takes two rows.
    if rest and _is_header_row(rest[0][1]) and parse_int(rest[0][1][0]) is None:
        extra_columns = [column_key(c) for c in rest[0][1]]
        rest = rest[1:]
    records: list[Record] = []
    j = 0
    while j < len(rest):
        line, cells = rest[j]
        if cells and re.match(r"^sources?:?$", cells[0].strip(), re.IGNORECASE):
            break
        if not any(cells):
            j += 1
            continue
        rec = Record(line=line, cells=cells)
        if extra_columns and j + 1 < len(rest):
            rec.extra_line, rec.extra = rest[j + 1][0], rest[j + 1][1]
            j += 1
        records.append(rec)
        j += 1
    low = heading.lower()
    named = {c for c in columns + extra_columns if c}
    kind: Literal["qualifying", "race", "other"]
    if "qualif" in low:
        kind = "qualifying"
    elif "race" in low or "result" in low or "laps" in named:
        kind = "race"
    elif "grid" in named and "time" in named:
        kind = "qualifying"
    else:
        kind = "other"
    # A later table of a section with nothing a result table has is a key or legend.
    if kind != "other" and nth > 1 and not named & {"position", "number", "laps", "time"}:
        kind = "other"
    if kind != "other" and not named and nth == 1 and not records:
        kind = "other"
    return Table(
        kind=kind,
        heading=heading,
        first_line=first,
        last_line=last,
        columns=columns,
        extra_columns=extra_columns,
        header=header,
        records=records,
        notes=[],
    )


# -- facts from the prose -----------------------------------------------------


@dataclass
class ProseFacts:
    title: str | None = None
    series: str | None = None
    season: int | None = None
    round: int | None = None
    date: str | None = None
    circuit: str | None = None
    length_mi: float | None = None
    length_km: float | None = None
    turns: int | None = None
    duration_s: int | None = None
    laps: int | None = None


def _word_number(word: str) -> int | None:
    word = word.lower()
    if word.isdigit():
        return parse_int(word)
    return _NUMBER_WORDS.get(word)


def prose_sentences(text: str) -> list[tuple[int, str]]:
    """The sentences of the prose, each with the line it starts on.

    Table rows and headings are no prose. Lines of a paragraph are joined and
    cut after ``.``, ``!`` or ``?`` followed by a space. Linear in the text: a
    fact is then looked for in one sentence at a time, and every pattern below
    only looks a bounded distance ahead, so no line can make the scan slow.
    """
    out: list[tuple[int, str]] = []
    paragraph: list[tuple[int, str]] = []

    def flush() -> None:
        if not paragraph:
            return
        flat = " ".join(piece for _, piece in paragraph)
        starts: list[int] = []  # where each line of the paragraph begins in ``flat``
        offset = 0
        for _, piece in paragraph:
            starts.append(offset)
            offset += len(piece) + 1
        ends = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(flat)]
        begin = k = 0
        for end, after in [*ends, (len(flat), len(flat))]:
            while k + 1 < len(starts) and starts[k + 1] <= begin:
                k += 1
            if begin < end:
                out.append((paragraph[k][0], flat[begin:end]))
            begin = after
        paragraph.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        body = " ".join(line.split())
        if not body or body.startswith("|") or _heading(line) is not None:
            flush()
            continue
        paragraph.append((number, body))
    flush()
    return out


# A sentence ends at ., ! or ? before a space: "2.238 mi" and "No.7" stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?]) +")


def read_prose(text: str, problems: list[Problem] | None = None) -> ProseFacts:
    """Race facts from the sentences that state them; long sentences are skipped."""
    facts = ProseFacts()
    for row in text.splitlines():
        title = _heading(row)
        if title is not None:
            facts.title = title or None
            break
    sentences: list[str] = []
    for line, sentence in prose_sentences(text):
        if len(sentence) > MAX_SENTENCE_CHARS:
            if problems is not None:
                problems.append(
                    Problem(
                        line,
                        f"a sentence of {len(sentence)} characters (more than "
                        f"{MAX_SENTENCE_CHARS}) is not read for race facts",
                        "warning",
                    )
                )
            continue
        sentences.append(sentence)
    for sentence in sentences:
        if _read_round(sentence, facts):
            break
    if facts.round is None:
        for sentence in sentences:
            m = re.search(r"\bthe (\w{1,20}) of \w{1,20} scheduled", sentence)
            if m:
                facts.round = _ORDINAL_WORDS.get(m.group(1).lower())
                break
    if facts.series is None:
        facts.series = _series_of_the_race(sentences)
    facts.date = _race_date(sentences)
    if facts.season is None and facts.date:
        facts.season = int(facts.date[:4])
    for sentence in sentences:
        _read_circuit(sentence, facts)
    for sentence in sentences:
        if facts.circuit is not None:
            break
        m = re.search(r"held at (?:the )?([A-Z]" + _CIRCUIT_NAME + r")(?:,| in | near )", sentence)
        if m:
            facts.circuit = m.group(1).strip()
    for sentence in sentences:
        if _read_length(sentence, facts):
            break
    return facts


# Lower-case words a series name may hold between its capitalised words
# ("Campeonato de Turismo", "Championnat du Monde").
_NAME_LINKS = {"de", "du", "des", "di", "del", "della", "of", "the", "and", "la", "le", "et"}


def series_name(words: str) -> str | None:
    """The series named at the start of ``words``: capitalised words (or ones with a
    capital or a digit in them: ``WeatherTech``, ``GT3``), lower-case linking words
    between them. None when the first word is a common word (``the 2013 season``)."""
    taken: list[str] = []
    pending: list[str] = []
    for raw in words.split(" ")[:MAX_SERIES_WORDS]:
        word = raw.rstrip(".,;:!?)")
        proper = bool(word) and (word[0].isupper() or (word[0].isdigit() and not word.isdigit()))
        if proper:
            taken.extend(pending)
            pending = []
            taken.append(word)
        elif taken and word.lower() in _NAME_LINKS:
            pending.append(word)
        else:
            break
        if word != raw:
            break  # punctuation ends the name
    return " ".join(taken) or None


# Sentences that say which series the race belongs to, other than its round:
# "the third of ten scheduled sports car races of 2013 American Le Mans Series",
# "part of the schedule for the 2013 American Le Mans Series", "held as part of
# the American Le Mans Series".
_SERIES_SENTENCES = (
    re.compile(r"\bscheduled [\w ]{0,40}?(?:races|rounds|events) of (?:the )?(?:\d{4} )?"),
    re.compile(r"\bpart of the (?:schedule|calendar|season) (?:for|of) the (?:\d{4} )?"),
    re.compile(r"\b(?:held|run|raced) as (?:a )?(?:part|round) of the (?:\d{4} )?"),
)


def _series_of_the_race(sentences: list[str]) -> str | None:
    for pattern in _SERIES_SENTENCES:
        for sentence in sentences:
            m = pattern.search(sentence)
            name = series_name(sentence[m.end() :]) if m else None
            if name is not None:
                return name
    return None


def _read_round(sentence: str, facts: ProseFacts) -> bool:
    """``third round of the 2013 American Le Mans Series``, ``round 2 of the 2015 ...``,
    ``the second round of the 2013 season`` (round and season; no series)."""
    m = re.search(r"\b(\w{1,20}) round of the (\d{4})\b ?", sentence)
    n: int | None = None
    if m:
        n = _ORDINAL_WORDS.get(m.group(1).lower())
    else:
        m = re.search(r"\bround (\d{1,3}) of the (\d{4})\b ?", sentence, re.IGNORECASE)
        if m:
            n = int(m.group(1))
    if m is None:
        return False
    facts.round = n
    facts.season = int(m.group(2))
    rest = sentence[m.end() :]
    facts.series = series_name(rest)
    if facts.series is None:
        # "the second round of the 2013 season of the American Le Mans Series"
        of = re.match(r"season (?:of|in) the ", rest)
        if of:
            facts.series = series_name(rest[of.end() :])
    return True


def _race_date(sentences: list[str]) -> str | None:
    month = "|".join(_MONTHS)
    singles: list[tuple[str, str, str]] = []
    for flat in sentences:
        singles += re.findall(rf"\b({month}) (\d{{1,2}}), (\d{{4}})\b", flat, re.IGNORECASE)
        # Day first, as British articles write it: "15 June 2014".
        singles += [
            (mo, d, y)
            for d, mo, y in re.findall(
                rf"(?<![\d\u2013-])\b(\d{{1,2}}) ({month}) (\d{{4}})\b", flat, re.IGNORECASE
            )
        ]
    if singles:
        dates = sorted(
            f"{int(y):04d}-{_MONTHS[mo.lower()]:02d}-{int(d):02d}" for mo, d, y in singles
        )
        return dates[-1]
    for flat in sentences:
        ranged = re.search(
            rf"\b({month}) \d{{1,2}}[-\u2013](\d{{1,2}}), (\d{{4}})\b", flat, re.IGNORECASE
        )
        if ranged:
            mo, d, y = ranged.groups()
            return f"{int(y):04d}-{_MONTHS[mo.lower()]:02d}-{int(d):02d}"
        ranged = re.search(
            rf"\b\d{{1,2}}[-\u2013](\d{{1,2}}) ({month}) (\d{{4}})\b", flat, re.IGNORECASE
        )
        if ranged:
            d, mo, y = ranged.groups()
            return f"{int(y):04d}-{_MONTHS[mo.lower()]:02d}-{int(d):02d}"
    return None


# Every quantifier below is bounded: a pattern looks at most this far ahead
# from where it starts, so a sentence is scanned in time linear in its length.
_CIRCUIT_NAME = r"[^,.()]{0,80}?"


def _read_circuit(flat: str, facts: ProseFacts) -> None:
    if facts.turns is None:
        m = re.search(r"\b(\w{1,20})-turn\b", flat)
        if m is None:
            m = re.search(r"\b(\w{1,20}) turns\b", flat)
        if m:
            facts.turns = _word_number(m.group(1))
    if facts.length_km is None:
        m = re.search(
            r"(?<![\d.])(\d{1,4}(?:\.\d{1,4})?)[ -](mi|miles?|km|kilomet(?:er|re)s?)\b\.?,?"
            r"(?: \(\d{1,4}(?:\.\d{1,4})? ?(?:km|mi)\))? ((?:the )?[A-Z]"
            + _CIRCUIT_NAME
            + r")(?=,| in | near | on |\.|\(|$)",
            flat,
        )
        if m:
            value, unit, name = float(m.group(1)), m.group(2), m.group(3).strip()
            if unit.startswith("mi"):
                facts.length_mi, facts.length_km = value, round(value * KM_PER_MILE, 3)
            else:
                facts.length_km, facts.length_mi = value, round(value / KM_PER_MILE, 3)
            words = name.split()
            after = flat[m.end(3) : m.end(3) + 2]
            # "Baltimore Street Circuit Baltimore, Maryland": the last word is the city.
            if after.startswith(",") and len(words) >= 3 and words[-2].lower() in _CIRCUIT_WORDS:
                words = words[:-1]
            if words and words[0].lower() == "the":
                words = words[1:]
            if words and facts.circuit is None:
                facts.circuit = " ".join(words)


def _read_length(flat: str, facts: ProseFacts) -> bool:
    hm = re.search(
        r"\b(\d{1,2})[- ]hours?,? (?:and )?(\d{1,2})[- ]minutes? (?:race|event)",
        flat,
        re.IGNORECASE,
    )
    if hm:
        facts.duration_s = int(hm.group(1)) * 3600 + int(hm.group(2)) * 60
        return True
    m = re.search(r"\b([\w.]{1,12})[- ]hours? (?:race|event|endurance)", flat, re.IGNORECASE)
    if m is None:
        m = re.search(
            r"\bshortened from [\w.]{1,12} hours? to ([\w.]{1,12}) hours?", flat, re.IGNORECASE
        )
    if m is None:
        m = re.search(r"\b(\d{1,2}) Hours of\b", flat)
    if m:
        word = m.group(1).lower()
        n = _word_number(word)
        if n is None:
            try:
                hours = float(word)
            except ValueError:
                hours = 0.0
            facts.duration_s = round(hours * 3600) or None
        else:
            facts.duration_s = n * 3600
        return facts.duration_s is not None
    m = re.search(r"\b(\d{1,4})[- ]laps? (?:race|event)|\brace (?:of|over) (\d{1,4}) laps\b", flat)
    if m:
        facts.laps = int(m.group(1) or m.group(2))
        return True
    return False


# -- table readers ------------------------------------------------------------


@dataclass
class RaceRow:
    """A race table row as read, before it becomes an entry and a classification row."""

    line: int
    position: int | None
    status: Status
    number: str | None
    cls: str | None
    team: str | None
    team_nationality: str | None
    drivers: list[Driver]
    chassis: str | None
    engine: str | None
    tyre: str | None
    laps: int | None
    total_ms: int | None = None
    gap_ms: int | None = None
    gap_laps: int | None = None
    note: str | None = None
    grid: int | None = None


@dataclass
class QualifyingRead:
    row: QualifyingRow
    line: int
    team: str | None
    team_nationality: str | None
    driver: Driver | None


@dataclass
class Article:
    """Everything read from one article."""

    prose: ProseFacts
    qualifying: list[QualifyingRead]
    qualifying_notes: list[Note]
    race: list[RaceRow]
    race_notes: list[Note]
    race_engines: list[tuple[int, str]]
    """(position, engine) of a race table that kept nothing else (garbled)."""
    problems: list[Problem]
    has_qualifying: bool = False
    has_race: bool = False


def _value(table: Table, rec: Record, key: str) -> str | None:
    if key in table.columns:
        idx = table.columns.index(key)
        if idx < len(rec.cells):
            return rec.cells[idx]
        return None
    if key in table.extra_columns:
        idx = table.extra_columns.index(key)
        if idx < len(rec.extra):
            return rec.extra[idx]
    return None


def _column_values(table: Table, key: str) -> list[str]:
    return [v for rec in table.records if (v := _value(table, rec, key))]


def _row_car(
    table: Table,
    rec: Record,
    team_raw: str,
    number_raw: str | None,
    coded_team: bool,
    seen: set[str],
    problems: list[Problem],
    *,
    missing: str,
) -> tuple[str, str | None, str] | None:
    """The car number, team nationality and team of a table row, or None (with the
    problem recorded) when the row names no car or a car already seen."""
    number_in_team, team = _number_and_team(team_raw)
    number = _clean_number(number_raw) or number_in_team
    if number is None:
        problems.append(Problem(rec.line, f"{_table_label(table)}: {missing}"))
        return None
    if number in seen:
        problems.append(Problem(rec.line, f"{_table_label(table)}: car #{number} appears twice"))
        return None
    seen.add(number)
    team_nat, team = split_code(team) if coded_team else (None, team)
    return number, team_nat, team


def _number_and_team(raw: str) -> tuple[str | None, str]:
    m = re.match(r"^#\s?([0-9A-Za-z]{1,8})\s+(.*)$", raw.strip())
    if m:
        return m.group(1), m.group(2).strip()
    return None, raw.strip()


def _clean_number(raw: str | None) -> str | None:
    if raw is None:
        return None
    raw = raw.strip().lstrip("#").strip()
    return raw if re.fullmatch(r"[0-9A-Za-z]{1,8}", raw) else None


def _missing_columns(table: Table) -> list[str]:
    kind = table.kind
    if kind == "other":
        return []
    missing = []
    for key in _REQUIRED[kind]:
        if table.has(key):
            continue
        # The number may sit in the team cell (``#12 Rebellion Racing``).
        if key == "number" and any(_number_and_team(v)[0] for v in _column_values(table, "team")):
            continue
        missing.append(key)
    if not table.has("class"):
        missing.append("class")
    return missing


def _table_label(table: Table) -> str:
    return f"{table.kind} table '{table.heading}' (lines {table.first_line}-{table.last_line})"


def _cut_off(table: Table, rec: Record, explained: bool) -> Problem | None:
    """A row with cells missing, or that stops mid-cell: the table is garbled there.

    ``explained``: the row holds a remark or status (``No Time``, ``DNS``) that
    merged cells may stand for, so fewer cells are no sign of damage.
    """
    have, want = len(rec.cells), len(table.header)
    short = have < want and not explained
    unclosed = table.header_closed and not rec.closed
    if not short and not unclosed:
        return None
    shown = "| " + " | ".join(rec.cells)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    why = (
        f"has {have} of the header's {want} cells"
        if short
        else "ends without its closing '|', mid-cell"
    )
    return Problem(
        rec.line,
        f"{_table_label(table)} is garbled: the row '{shown}' {why} (cut off?); it is not "
        "read as a car. Complete the row, or pass --partial to import the rest without it",
    )


def read_qualifying(table: Table, problems: list[Problem]) -> list[QualifyingRead]:
    coded_team = _all_coded([_number_and_team(v)[1] for v in _column_values(table, "team")])
    coded_driver = _all_coded([v for v in _column_values(table, "drivers") if _remark(v) is None])
    time_cols = [i for i, c in enumerate(table.columns) if c in ("time", "gap")]
    after_time = table.columns[max(time_cols) + 1 :] if time_cols else []
    out: list[QualifyingRead] = []
    seen: set[str] = set()
    for rec in table.records:
        cut = _cut_off(table, rec, any(_remark(c) is not None for c in rec.cells))
        if cut is not None:
            problems.append(cut)
            continue
        values: dict[str, str] = {}
        remark = None
        for idx, cell in enumerate(rec.cells):
            r = _remark(cell)
            if r is not None and table.columns[idx : idx + 1] == ["time"]:
                remark = r
            elif r is not None:
                # The remark spans several columns (merged cells): the cells after it
                # belong to the columns after the times.
                remark = r
                trailing = [c for c in rec.cells[idx + 1 :] if c]
                for name, val in zip([k for k in after_time if k], trailing, strict=False):
                    values[name] = val
                break
            col = table.columns[idx] if idx < len(table.columns) else None
            if col and col not in values:
                values[col] = cell
        car = _row_car(
            table, rec, values.get("team", ""), values.get("number"), coded_team, seen, problems,
            missing="row has no car number; row skipped",
        )  # fmt: skip
        if car is None:
            continue
        number, team_nat, team = car
        drivers_cell = values.get("drivers")
        driver = None
        if drivers_cell and _remark(drivers_cell) is None:
            ds = split_drivers(drivers_cell, coded_driver)
            driver = ds[0] if ds else None
        best = parse_time_ms(values.get("time", "")) if remark is None else None
        if remark is None and best is None:
            problems.append(
                Problem(
                    rec.line,
                    f"{_table_label(table)}: car #{number}: time "
                    f"'{values.get('time', '')}' is not a lap time; recorded without a time",
                    "warning",
                )
            )
            remark = "no_time"
        gap_raw = values.get("gap", "")
        gap = None if _is_dash(gap_raw) else parse_time_ms(gap_raw)
        pos_raw = values.get("position", "")
        position = parse_int(pos_raw) if remark is None else None
        if remark is None and position is None:
            problems.append(
                Problem(
                    rec.line,
                    f"{_table_label(table)}: car #{number}: position '{pos_raw}' is not a number",
                    "warning",
                )
            )
        row = QualifyingRow(
            number=number,
            cls=values.get("class", "") or "",
            position=position,
            driver=driver.name if driver else None,
            best_ms=best,
            gap_ms=gap,
            grid=parse_int(values.get("grid", "")),
            remark=remark,
        )
        out.append(QualifyingRead(row, rec.line, team or None, team_nat, driver))
    return out


def _remark(cell: str) -> Literal["no_time", "did_not_participate"] | None:
    return _REMARKS.get(" ".join(cell.lower().split()))


def _all_coded(values: list[str]) -> bool:
    values = [v for v in values if v]
    return bool(values) and all(_starts_with_code(v) for v in values)


def _position_and_status(raw: str) -> tuple[int | None, Status | None]:
    """``32 DNF`` -> (32, retired); ``NC`` -> (None, not_classified); ``7`` -> (7, None)."""
    tokens = raw.replace("(", " ").replace(")", " ").split()
    position = None
    status: Status | None = None
    for tok in tokens:
        if parse_int(tok) is not None:
            position = parse_int(tok)
        elif tok.lower().rstrip(".") in _STATUS_WORDS:
            status = _STATUS_WORDS[tok.lower().rstrip(".")]
    return position, status


def read_race(table: Table, problems: list[Problem]) -> list[RaceRow]:
    coded_team = _all_coded([_number_and_team(v)[1] for v in _column_values(table, "team")])
    coded_driver = _all_coded(_column_values(table, "drivers"))
    out: list[RaceRow] = []
    seen: set[str] = set()
    next_position = 1
    for rec in table.records:
        pos_raw = _value(table, rec, "position") or ""
        position, status = _position_and_status(pos_raw)
        status_cell = _value(table, rec, "status") or ""
        if status is None and status_cell:
            status = _STATUS_WORDS.get(status_cell.lower().strip(". "))
        explained = status is not None or any(
            " ".join(c.lower().split()) in ("did not start", "did not finish") for c in rec.cells
        )
        cut = _cut_off(table, rec, explained)
        if cut is not None:
            problems.append(cut)
            if position is not None:
                next_position = position + 1
            continue
        if position is None:
            position = next_position
        next_position = position + 1
        car = _row_car(
            table, rec, _value(table, rec, "team") or "", _value(table, rec, "number"),
            coded_team, seen, problems, missing=f"position {position}: no car number",
        )  # fmt: skip
        if car is None:
            continue
        number, team_nat, team = car
        laps_raw = _value(table, rec, "laps") or ""
        laps = parse_int(laps_raw)
        if laps is None and laps_raw and status is None:
            status = _STATUS_WORDS.get(laps_raw.lower())
        if laps is None and status not in ("dns",):
            problems.append(
                Problem(
                    rec.line,
                    f"{_table_label(table)}: car #{number}: laps '{laps_raw}' is not a number",
                    "warning",
                )
            )
        total_ms = gap_ms = gap_laps = None
        note = None
        tr = (
            _value(table, rec, "time_or_reason")
            or _value(table, rec, "gap")
            or _value(table, rec, "time")
            or ""
        )
        if tr and not _is_dash(tr):
            lm = _LAPS_GAP_RE.match(tr)
            if lm:
                gap_laps = int(lm.group(1))
            elif tr.strip().startswith("+"):
                gap_ms = parse_time_ms(tr)
            elif parse_time_ms(tr) is not None:
                total_ms = parse_time_ms(tr)
            else:
                note = tr
        reason = _value(table, rec, "reason")
        if reason and not _is_dash(reason):
            note = reason
        tyre = _value(table, rec, "tyre") or None
        out.append(
            RaceRow(
                line=rec.line,
                position=position,
                status=status or "classified",
                number=number,
                cls=(_value(table, rec, "class") or None),
                team=team or None,
                team_nationality=team_nat,
                drivers=split_drivers(_value(table, rec, "drivers") or "", coded_driver),
                chassis=_value(table, rec, "chassis") or None,
                engine=_value(table, rec, "engine") or None,
                tyre=tyre,
                laps=laps,
                total_ms=total_ms,
                gap_ms=gap_ms,
                gap_laps=gap_laps,
                note=note,
                grid=parse_int(_value(table, rec, "grid") or ""),
            )
        )
    if table.has("tyre") and out and all(r.tyre is None for r in out):
        problems.append(
            Problem(
                table.first_line,
                f"{_table_label(table)}: the tyre column is empty in every row "
                "(the tyre symbols did not survive); tyres left unknown",
                "warning",
            )
        )
    return out


def _garbled_engines(table: Table) -> list[tuple[int, str]]:
    """Position and engine of each row of a race table that kept only those."""
    out: list[tuple[int, str]] = []
    for n, rec in enumerate(table.records, start=1):
        first = rec.cells[0] if rec.cells else ""
        position = parse_int(first) or n
        engine = _value(table, rec, "engine")
        if engine:
            out.append((position, engine))
    return out


def _notes(table: Table) -> list[Note]:
    kind: Literal["qualifying", "race"] = "qualifying" if table.kind == "qualifying" else "race"
    return [
        Note(text=text, effect=note_effect(text), cars=car_numbers_in(text), table=kind)
        for _, text in table.notes
    ]


def read_article(text: str) -> Article:
    """Read the prose, the qualifying table and the race table of an article."""
    lines = text.splitlines()
    problems: list[Problem] = []
    prose = read_prose(text, problems)
    tables = find_tables(lines)
    article = Article(prose, [], [], [], [], [], problems)
    for table in tables:
        if table.kind == "other":
            continue
        missing = _missing_columns(table)
        essential = [m for m in missing if m != "class"]
        if table.kind == "qualifying" and not article.has_qualifying:
            article.has_qualifying = True
            if essential:
                problems.append(_garbled_problem(table, missing))
                continue
            article.qualifying = read_qualifying(table, problems)
            article.qualifying_notes = _notes(table)
        elif table.kind == "race" and not article.has_race:
            # The race table's problems concern the race recording only; qualifying's
            # concern both (the race takes its grid and pace from qualifying).
            race_problems: list[Problem] = []
            article.has_race = True
            article.race_notes = _notes(table)
            if essential:
                race_problems.append(_garbled_problem(table, missing))
                article.race_engines = _garbled_engines(table)
            else:
                article.race = read_race(table, race_problems)
            problems.extend(dataclasses.replace(p, session="race") for p in race_problems)
    _reconcile_numbers(article)
    if not article.has_qualifying:
        problems.append(Problem(None, "no qualifying table found", "warning"))
    if not article.has_race:
        problems.append(Problem(None, "no race result table found", "warning", "race"))
    return article


def _reconcile_numbers(article: Article) -> None:
    """Match a qualifying car missing from the race table to the race car it must be.

    Articles sometimes misprint a number in one table. When exactly one race
    car of the same class and team, absent from qualifying, lists the
    qualifying driver, it is the same car: the qualifying row takes the race
    table's number (the official result), and a note records the correction.
    """
    if not article.race or not article.qualifying:
        return
    race_numbers = {r.number for r in article.race}
    qual_numbers = {q.row.number for q in article.qualifying}
    for q in article.qualifying:
        if q.row.number in race_numbers or q.driver is None:
            continue
        candidates = [
            r
            for r in article.race
            if r.number not in qual_numbers
            and r.cls == q.row.cls
            and _fold(r.team or "") == _fold(q.team or "")
            and any(_fold(d.name) == _fold(q.driver.name) for d in r.drivers)
        ]
        if len(candidates) != 1:
            continue
        race_row = candidates[0]
        assert race_row.number is not None
        old = q.row.number
        text = (
            f"The qualifying table lists #{old} {q.team} ({q.driver.name}); the race table "
            f"has no #{old} but lists #{race_row.number} {race_row.team} with "
            f"{q.driver.name}, absent from qualifying. Read as one car, #{race_row.number}."
        )
        q.row = msgspec_replace(q.row, number=race_row.number)
        qual_numbers.add(race_row.number)
        article.qualifying_notes.append(
            Note(text=text, effect="info", cars=[race_row.number], table="qualifying")
        )
        article.problems.append(
            Problem(
                q.line,
                f"qualifying car #{old} is not in the race table; read as race car "
                f"#{race_row.number} (same class, team and driver {q.driver.name})",
                "warning",
            )
        )


def _garbled_problem(table: Table, missing: list[str]) -> Problem:
    named = [h for h, key in zip(table.header, table.columns, strict=False) if key] + [
        name for name in (_title_of(k) for k in table.extra_columns if k) if name
    ]
    rows = table.records
    row_lines = f"lines {rows[0].line}-{rows[-1].extra_line or rows[-1].line}" if rows else "none"
    kept = ", ".join(named) if named else "nothing"
    cols = ", ".join(_COLUMN_WORDS.get(m, m) for m in missing)
    return Problem(
        table.first_line,
        f"{_table_label(table)} is garbled: columns {cols} are missing "
        f"(its header names only: {kept}); {len(rows)} rows ({row_lines}) cannot be "
        "read as cars. Supply the missing facts with --merge CSV, or pass --partial to "
        "import the rest",
    )


def _title_of(key: str) -> str:
    return key.capitalize()


# -- building recordings ------------------------------------------------------


def _entries(article: Article) -> list[Entry]:
    entries: dict[str, Entry] = {}
    for q in article.qualifying:
        entries[q.row.number] = Entry(
            number=q.row.number,
            cls=q.row.cls,
            team=q.team or "",
            drivers=[q.driver] if q.driver else [],
            team_nationality=q.team_nationality,
        )
    for r in article.race:
        assert r.number is not None
        known = entries.get(r.number)
        drivers = list(r.drivers)
        if known:
            # Keep a qualifying driver the race table does not list.
            for d in known.drivers:
                if all(_fold(d.name) != _fold(x.name) for x in drivers):
                    drivers.append(d)
        entries[r.number] = Entry(
            number=r.number,
            cls=r.cls or (known.cls if known else ""),
            team=r.team or (known.team if known else ""),
            drivers=drivers,
            chassis=r.chassis,
            engine=r.engine,
            tyre=r.tyre,
            team_nationality=r.team_nationality or (known.team_nationality if known else None),
        )
    return list(entries.values())


def _class_order(article: Article, entries: list[Entry]) -> list[str]:
    """Classes fastest first: by best qualifying time, then by first appearance."""
    best: dict[str, int] = {}
    seen: list[str] = []
    for q in article.qualifying:
        if q.row.cls and q.row.cls not in seen:
            seen.append(q.row.cls)
        if q.row.cls and q.row.best_ms is not None:
            best[q.row.cls] = min(best.get(q.row.cls, q.row.best_ms), q.row.best_ms)
    for r in article.race:
        if r.cls and r.cls not in seen:
            seen.append(r.cls)
    for e in entries:
        if e.cls and e.cls not in seen:
            seen.append(e.cls)
    big = 1 << 62
    return sorted(seen, key=lambda c: (best.get(c, big), seen.index(c)))


def grid_from_qualifying(
    qualifying: list[QualifyingRow], notes: list[Note], non_starters: set[str]
) -> tuple[list[str], list[str]]:
    """The starting grid after penalties, and the cars whose back-of-grid note was applied.

    The Grid column gives the order when there is one (else the qualifying
    order). A back-of-grid note whose cars already stand behind every car with
    a time is already reflected in the Grid column and is not applied again.
    """
    big = 1 << 30
    rows = [q for q in qualifying if q.number not in non_starters]
    order = sorted(
        rows,
        key=lambda q: (
            q.grid if q.grid is not None else big,
            q.position if q.position is not None else big,
            qualifying.index(q),
        ),
    )
    grid = [q.number for q in order]
    applied: list[str] = []
    for note in notes:
        if note.effect != "grid_to_back":
            continue
        named = [c for c in note.cars if c in grid]
        if not named or _already_at_back(grid, named, qualifying):
            continue
        grid = [c for c in grid if c not in named] + named
        applied.extend(named)
    return grid, applied


def _already_at_back(grid: list[str], named: list[str], qualifying: list[QualifyingRow]) -> bool:
    timed = {q.number for q in qualifying if q.best_ms is not None}
    others = [i for i, c in enumerate(grid) if c in timed and c not in named]
    last_other = max(others) if others else -1
    return all(grid.index(c) > last_other for c in named)


def _facts(
    prose: ProseFacts, race_id: str, session: SessionKind, problems: list[Problem]
) -> RaceFacts:
    circuit = Circuit(
        name=prose.circuit or "unknown circuit",
        length_km=prose.length_km or 1.0,
        length_mi=prose.length_mi or round(1.0 / KM_PER_MILE, 3),
        turns=prose.turns,
    )
    if session == "race":
        length = Length(duration_s=prose.duration_s, laps=prose.laps)
        if prose.duration_s is None and prose.laps is None:
            problems.append(
                Problem(
                    None,
                    "the article states no race length (hours or laps); add it with --facts",
                    "warning",
                )
            )
    else:
        # Articles give no length for qualifying sessions.
        length = Length()
    if not prose.length_km:
        problems.append(
            Problem(None, "the article states no lap length; circuit length set to 1 km", "error")
        )
    if prose.series is None:
        problems.append(
            Problem(
                None,
                f"the article names no series (no sentence such as 'the third round of the "
                f"2013 American Le Mans Series'); recorded as '{UNKNOWN_SERIES}': give "
                'series = "..." with --facts',
                "warning",
            )
        )
    return RaceFacts(
        id=race_id,
        series=prose.series or UNKNOWN_SERIES,
        season=prose.season or 0,
        event=prose.title or race_id,
        session=session,
        circuit=circuit,
        length=length,
        round=prose.round,
        date=prose.date if session == "race" else None,
    )


def race_recording(article: Article, race_id: str, problems: list[Problem]) -> Recording:
    entries = _entries(article)
    qualifying = [q.row for q in article.qualifying]
    non_starters = {r.number for r in article.race if r.status == "dns" and r.number}
    notes = article.qualifying_notes + article.race_notes
    grid, _ = grid_from_qualifying(qualifying, article.qualifying_notes, non_starters)
    if not grid and any(r.grid is not None for r in article.race):
        # No qualifying table: the race table's own Grid column, where it has one.
        started = [r for r in article.race if r.grid is not None and r.status != "dns"]
        grid = [r.number for r in sorted(started, key=lambda r: r.grid or 0) if r.number]
    if not grid and article.race:
        problems.append(
            Problem(
                None,
                "no starting grid: the article has no qualifying table or Grid column",
                "warning",
                "race",
            )
        )
    classification = [
        ClassificationRow(
            position=r.position or i,
            cls=r.cls or _cls_of(entries, r.number),
            number=r.number,
            status=r.status,
            laps=r.laps,
            provenance="article",
            total_ms=r.total_ms,
            gap_ms=r.gap_ms,
            gap_laps=r.gap_laps,
            engine=r.engine,
            note=r.note,
        )
        for i, r in enumerate(article.race, start=1)
    ]
    if article.race_engines:
        # Keep what survived of a garbled table, as a note: no row can name its car.
        listing = "; ".join(f"{p}: {e}" for p, e in article.race_engines)
        notes = [
            *notes,
            Note(
                text=f"The race table kept only the engine of each position: {listing}",
                effect="info",
                table="race",
            ),
        ]
    return Recording(
        facts=_facts(article.prose, race_id, "race", problems),
        classes=_class_order(article, entries),
        entries=entries,
        qualifying=qualifying,
        grid=grid,
        classification=classification,
        notes=notes,
    )


def _cls_of(entries: list[Entry], number: str | None) -> str | None:
    for e in entries:
        if e.number == number:
            return e.cls or None
    return None


def qualifying_recording(article: Article, race_id: str, problems: list[Problem]) -> Recording:
    """A qualifying session: its classification is the qualifying order.

    Cars with a time are ``classified`` in table order with ``best_lap_ms``;
    cars without one follow (``not_classified``: took part, no valid time;
    ``dns``: did not take part). The grid lists the cars that took part.
    """
    entries = _entries(article)
    qualifying = [q.row for q in article.qualifying]
    notes = article.qualifying_notes
    disallowed = {c for n in notes if n.effect == "times_disallowed" for c in n.cars}
    big = 1 << 30
    order = sorted(
        qualifying,
        key=lambda q: (
            q.position if q.position is not None else big,
            q.grid if q.grid is not None else big,
            qualifying.index(q),
        ),
    )
    classification: list[ClassificationRow] = []
    for i, q in enumerate(order, start=1):
        status: Status
        note = None
        if q.remark == "did_not_participate":
            status, note = "dns", "did not participate"
        elif q.best_ms is None:
            status = "not_classified"
            note = "times disallowed" if q.number in disallowed else "no time"
        else:
            status = "classified"
        classification.append(
            ClassificationRow(
                position=i,
                cls=q.cls or None,
                number=q.number,
                status=status,
                provenance="article",
                gap_ms=q.gap_ms,
                best_lap_ms=q.best_ms,
                note=note,
            )
        )
    took_part = [r.number for r in classification if r.status != "dns" and r.number]
    return Recording(
        facts=_facts(article.prose, race_id, "qualifying", problems),
        classes=_class_order(article, entries),
        entries=entries,
        qualifying=qualifying,
        grid=took_part,
        classification=classification,
        notes=notes,
    )


@dataclass
class ImportResult:
    article: Article
    race: Recording | None
    qualifying: Recording | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def import_article(
    text: str,
    *,
    race_id: str,
    qualifying_id: str,
    sessions: tuple[SessionKind, ...] = ("race", "qualifying"),
) -> ImportResult:
    """Read an article and build the recordings of the sessions asked for."""
    article = read_article(text)
    problems = list(article.problems)
    race = qualifying = None
    if "race" in sessions:
        race = race_recording(article, race_id, problems)
        race_errors = [p for p in problems if p.severity == "error" and p.session == "race"]
        if not race.classification and not race_errors:
            # A race recording without a result replays nothing: refused unless the
            # user asks for what could be read (a garbled table already says so).
            where = (
                "the article has no race result table"
                if not article.has_race
                else "its race table holds no car that could be read"
            )
            problems.append(
                Problem(
                    None,
                    f"{NO_RACE_RESULT}: {where}; nothing to replay. Import the qualifying alone "
                    "with --session qualifying, supply the result with --merge CSV, or pass "
                    "--partial to write the race recording without one",
                    "error",
                    "race",
                )
            )
    if "qualifying" in sessions:
        if not article.qualifying:
            problems.append(
                Problem(None, "no readable qualifying table to import", "error", "qualifying")
            )
        else:
            qualifying = qualifying_recording(article, qualifying_id, problems)
    # Each problem once, and only those about the sessions asked for.
    unique: list[Problem] = []
    for p in problems:
        if p not in unique and (p.session is None or p.session in sessions):
            unique.append(p)
    return ImportResult(article, race, qualifying, unique)
