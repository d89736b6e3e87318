"""The recording's notes read as the story of the race: incidents the timeline must honour.

A note is free text with an effect and a provenance (``docs/RECORDING.md``).
This module reads a race's notes into what the synthesised timeline can
place: an opening-lap crash behind a red flag, a crash that brings out a
yellow with so many minutes left, an unscheduled stop (with a driver change
where the note says so), a car damaged that runs on; penalties and starting
facts told before the start, post-race decisions after the flag. A note it
cannot place is listed as unused, with the reason, for ``chequered validate``:
never silently dropped. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from simulator.recording.format import Note, Provenance, Recording

IncidentKind = Literal["start_crash", "crash", "unscheduled_stop", "damage", "ran_on"]
When = Literal["before", "after"]
"""A note told as a message: before the start (grid, qualifying) or after the flag."""

CO_DRIVER = "#{car} co-driver"
"""Name given to the driver a note's driver change hands over to, when the
recording names only one driver of the car (no source gives the other)."""


@dataclass(frozen=True)
class Incident:
    """One thing a note says happened to a car in the race, and where the note is."""

    kind: IncidentKind
    car: str
    note: int
    """Index of the note in ``recording.notes``."""
    text: str
    """What happened, as the feed tells it (from the note's own words)."""
    provenance: Provenance
    minutes_left: float | None = None
    """A crash: race time left on the clock when it happened."""
    driver_change: bool = False
    """An unscheduled stop: the note says the driver changed."""
    cause: str | None = None
    """An unscheduled stop: why the car came in, in the note's words."""
    others: tuple[str, ...] = ()
    """A start crash: the other cars the note names."""


@dataclass(frozen=True)
class Told:
    """A note the feed tells as it is: before the start or after the flag."""

    when: When
    category: Literal["penalty", "information"]
    text: str
    cars: tuple[str, ...]
    note: int
    provenance: Provenance


@dataclass(frozen=True)
class Unused:
    note: int
    reason: str


@dataclass
class Reading:
    """What the notes of a race recording say, sorted by what the timeline does with it."""

    incidents: list[Incident] = field(default_factory=list)
    told: list[Told] = field(default_factory=list)
    unused: list[Unused] = field(default_factory=list)

    def of(self, kind: IncidentKind) -> list[Incident]:
        return [i for i in self.incidents if i.kind == kind]


# Words that make a note an incident of the race, and the numbers in it.
_MINUTES_LEFT = re.compile(r"with (\d+(?:\.\d+)?) minutes? (?:left|to go|remaining)", re.I)
_CRASH = re.compile(r"\b(crash(?:ed)?|hit|spun|accident|barrier|wall|off)\b", re.I)
_UNSCHEDULED = re.compile(r"unscheduled (?:pit )?stop", re.I)
_CAUSE = re.compile(
    r"(?:,\s*|\bthen\s+|^)([^,;.]*?)\s+and (?:made|makes|had|took) an unscheduled", re.I
)
_DRIVER_CHANGE = re.compile(r"driver change|handed over|change of driver", re.I)
_OPENING = re.compile(r"opening lap|first[- ]lap|at the start|first[- ]turn|turn 1\b", re.I)
_ELIMINATED = re.compile(r"\b(eliminat\w*|out of the race|retired)\b", re.I)
_DAMAGED = re.compile(r"\bdamag\w*", re.I)
_BEFORE = re.compile(r"did not start|started the race|from the back|pit lane start", re.I)

_BEFORE_EFFECTS = {"grid_to_back", "times_disallowed", "fastest_lap_deleted"}
_AFTER_EFFECTS = {"points_forfeited", "result_kept", "disqualified"}


def read(recording: Recording) -> Reading:
    """Every note of a race recording, read (a qualifying session's notes are all told
    or unused: it has no incidents)."""
    out = Reading()
    race = recording.facts.session == "race"
    red_on_opening_lap = any(
        i.kind == "red_flag" and i.lap == 0 for i in recording.facts.interruptions
    )
    out_on_lap_0 = {
        r.number
        for r in recording.classification
        if r.number is not None and r.status == "retired" and (r.laps or 0) == 0
    }
    running = {
        r.number
        for r in recording.classification
        if r.number is not None and r.status in ("classified", "not_classified", "disqualified")
    }
    duration_s = recording.facts.length.duration_s
    for i, note in enumerate(recording.notes):
        found = _incident(i, note, race, red_on_opening_lap, out_on_lap_0, running, duration_s)
        if isinstance(found, Unused):
            told = _told(i, note)
            if told is not None:
                out.told.append(told)
            else:
                out.unused.append(found)
        else:
            out.incidents.extend(found)
    return out


def _incident(
    i: int,
    note: Note,
    race: bool,
    red_on_opening_lap: bool,
    out_on_lap_0: set[str],
    running: set[str],
    duration_s: int | None,
) -> list[Incident] | Unused:
    text = note.text
    if not race or note.table != "race" or note.effect != "info":
        return Unused(i, "not an incident of the race")
    if not note.cars:
        return Unused(i, "names no car, so the timeline has no moment to place it at")
    car = note.cars[0]
    prov = note.provenance
    if _UNSCHEDULED.search(text):
        cause_match = _CAUSE.search(text)
        cause = cause_match.group(1).strip() if cause_match else None
        if cause and cause.lower().startswith("then "):
            cause = cause[5:]
        found = [
            Incident(
                "unscheduled_stop",
                car,
                i,
                text,
                prov,
                driver_change=bool(_DRIVER_CHANGE.search(text)),
                cause=cause or None,
            )
        ]
        if _OPENING.search(text) and red_on_opening_lap:
            # "ran on after the first-lap pile-up": caught in it, not out of it.
            found.append(Incident("ran_on", car, i, f"#{car} caught in the pile-up, runs on", prov))
        return found
    minutes = _MINUTES_LEFT.search(text)
    if minutes and _CRASH.search(text):
        if car in running:
            return Unused(i, f"#{car} is classified as running at the flag, not out in a crash")
        if duration_s is None:
            return Unused(i, "a race run to a lap count has no clock to count minutes left on")
        if float(minutes.group(1)) * 60 >= duration_s:
            return Unused(i, "more minutes left than the race is long")
        return [Incident("crash", car, i, text, prov, minutes_left=float(minutes.group(1)))]
    if _OPENING.search(text) and _ELIMINATED.search(text):
        if not red_on_opening_lap and not (set(note.cars) & out_on_lap_0):
            return Unused(i, "no red flag on the opening lap and no car out on it in the result")
        return [Incident("start_crash", car, i, text, prov, others=tuple(note.cars[1:]))]
    if _DAMAGED.search(text) and _OPENING.search(text):
        if car not in running:
            return Unused(i, f"#{car} did not run on to the flag in the result")
        return [Incident("damage", car, i, text, prov)]
    return Unused(i, "the timeline finds no incident it can place in it")


def _told(i: int, note: Note) -> Told | None:
    cars = tuple(note.cars)
    if note.effect in _BEFORE_EFFECTS:
        return Told("before", "penalty", note.text, cars, i, note.provenance)
    if note.effect in _AFTER_EFFECTS:
        return Told("after", "penalty", note.text, cars, i, note.provenance)
    if note.effect == "info" and cars and _BEFORE.search(note.text):
        return Told("before", "information", note.text, cars, i, note.provenance)
    return None
