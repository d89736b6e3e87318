"""The recording format: one file per session, defined once as msgspec types.

A recording holds what is known of a session: race facts, entries,
qualifying, grid, the official classification with provenance per row, and
optionally the lap-by-lap timing of a real session. ``docs/RECORDING.md``
describes it for people; ``json_schema()`` is generated from these types.
Pure: loading and saving bytes lives in ``simulator.recording_io``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct

FORMAT_VERSION = 1

CarNumber = Annotated[str, Meta(min_length=1, max_length=8, pattern=r"^[0-9A-Za-z]+$")]
Millis = Annotated[int, Meta(ge=0)]

SessionKind = Literal["race", "qualifying"]
Status = Literal["classified", "not_classified", "retired", "disqualified", "dns"]
Provenance = Literal["article", "report", "inferred", "timing", "unknown"]
"""Where a classification row comes from: the article's table, a published
race report, a documented deterministic rule (``inferred``), an official
timing export, or nowhere (``unknown``: the row exists but its car is not known)."""

NoteEffect = Literal[
    "grid_to_back",
    "times_disallowed",
    "fastest_lap_deleted",
    "points_forfeited",
    "result_kept",
    "disqualified",
    "info",
]


class Circuit(Struct, kw_only=True, omit_defaults=True):
    name: str
    length_km: Annotated[float, Meta(gt=0)]
    length_mi: Annotated[float, Meta(gt=0)]
    turns: Annotated[int, Meta(ge=1)] | None = None


class Length(Struct, kw_only=True, omit_defaults=True):
    """Time-certain (``duration_s``) or a lap count (``laps``); exactly one is set."""

    duration_s: Annotated[int, Meta(gt=0)] | None = None
    laps: Annotated[int, Meta(ge=1)] | None = None


class Interruption(Struct, kw_only=True, omit_defaults=True):
    """A notable interruption, such as a red flag."""

    kind: Literal["red_flag", "full_course_yellow"]
    lap: Annotated[int, Meta(ge=0)]
    """Leader's laps completed when it started (0: on the opening lap)."""
    duration_s: Annotated[int, Meta(gt=0)]
    """How long the session was stopped or neutralised."""
    reason: str | None = None
    provenance: Provenance = "report"


class RaceFacts(Struct, kw_only=True, omit_defaults=True):
    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
    series: str
    season: int
    event: str
    session: SessionKind
    circuit: Circuit
    length: Length
    round: int | None = None
    date: str | None = None
    """ISO date, ``YYYY-MM-DD``."""
    start_time: str | None = None
    """Local time of day of the start, ``HH:MM:SS``."""
    interruptions: list[Interruption] = []
    timing_lines: Annotated[int, Meta(ge=1, le=16)] = 3
    """Timing lines per lap (sector ends; the last is the finish line)."""


class Driver(Struct, kw_only=True, omit_defaults=True):
    name: str
    nationality: str | None = None
    """Country code as the source writes it (``DEU``, ``SUI``, ``NED`` ...)."""


class Entry(Struct, kw_only=True, omit_defaults=True):
    number: CarNumber
    """A string: ``06`` and ``6`` are different cars."""
    cls: str
    team: str
    drivers: list[Driver] = []
    chassis: str | None = None
    engine: str | None = None
    tyre: str | None = None
    team_nationality: str | None = None


class QualifyingRow(Struct, kw_only=True, omit_defaults=True):
    number: CarNumber
    cls: str
    position: Annotated[int, Meta(ge=1)] | None = None
    """None when the car set no time or did not take part."""
    driver: str | None = None
    best_ms: Millis | None = None
    gap_ms: Millis | None = None
    grid: Annotated[int, Meta(ge=1)] | None = None
    """Grid slot as the qualifying table gives it (before later penalties)."""
    remark: Literal["no_time", "did_not_participate"] | None = None


class Note(Struct, kw_only=True, omit_defaults=True):
    """A note under a table, with its effect on the result."""

    text: str
    effect: NoteEffect = "info"
    cars: list[CarNumber] = []
    table: Literal["qualifying", "race"] = "race"
    provenance: Provenance = "article"
    """Where the note comes from: the article, or a published report (``report``)."""


class ClassificationRow(Struct, kw_only=True, omit_defaults=True):
    position: Annotated[int, Meta(ge=1)]
    cls: str | None
    """None only when the row's car is unknown."""
    number: CarNumber | None
    """None when no source says which car finished here."""
    status: Status
    laps: Annotated[int, Meta(ge=0)] | None = None
    provenance: Provenance = "article"
    total_ms: Millis | None = None
    gap_ms: Millis | None = None
    """Gap to the overall winner, when known and on the same lap."""
    gap_laps: Annotated[int, Meta(ge=0)] | None = None
    best_lap_ms: Millis | None = None
    best_lap: Annotated[int, Meta(ge=1)] | None = None
    engine: str | None = None
    note: str | None = None
    laps_provenance: Provenance | None = None
    """Where ``laps`` comes from when that differs from the row's ``provenance``
    (a reported finishing position whose lap count a documented rule inferred)."""
    penalty_ms: Millis | None = None
    """Time added to the car's race time after the race (a post-race penalty):
    ``total_ms`` includes it, the car's last line crossing does not."""


class LapRecord(Struct, kw_only=True, omit_defaults=True, array_like=False):
    """One lap of one car from an official timing export."""

    number: CarNumber
    lap: Annotated[int, Meta(ge=1)]
    lap_ms: Millis | None
    sectors_ms: list[Millis | None]
    elapsed_ms: Millis
    """Session time at which the car crossed the line completing this lap."""
    driver_number: int | None = None
    driver: str | None = None
    time_of_day: str | None = None
    pit_ms: Millis | None = None
    """Pit lane time of a stop that ended on this lap, as the export gives it."""
    in_pit: bool = False
    """Crossed the finish line in the pit lane (entering the pits)."""
    flag: Literal["GF", "FCY", "RF", "FF"] = "GF"


class Recording(Struct, kw_only=True, omit_defaults=True):
    format: Literal["chequered.recording"] = "chequered.recording"
    version: int = FORMAT_VERSION
    facts: RaceFacts
    classes: list[str]
    """Classes in display order (fastest first)."""
    entries: list[Entry]
    qualifying: list[QualifyingRow] = []
    grid: list[CarNumber] = []
    """Starting order after penalties; cars that did not start are absent."""
    classification: list[ClassificationRow] = []
    notes: list[Note] = []
    laps: list[LapRecord] = []
    """Lap-by-lap timing, empty for a results-only recording."""
    sources: list[str] = []

    def entry(self, number: str) -> Entry | None:
        for entry in self.entries:
            if entry.number == number:
                return entry
        return None


def json_schema() -> dict[str, object]:
    schema: dict[str, object] = msgspec.json.schema(Recording)
    return schema
