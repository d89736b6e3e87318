"""Post-race decisions: the provisional classification, each penalty, then the official one.

A race whose result was changed after the flag (a time added to a car's race
time, championship points taken away, a disqualification at scrutineering)
ends on a timing screen in three steps: the provisional classification once
every car has taken the flag (the order on the road), a message per decision
with its effect, then the official classification. ``amend`` adds those steps
to a race's event log; rules in ``docs/TIMING.md``. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from msgspec.structs import replace

from chequered.contract.events import (
    Event,
    Finish,
    Lap,
    MessageProvenance,
    Penalty,
    PenaltyKind,
    Provisional,
    RaceControl,
    ResultRow,
    Retire,
    SessionClosed,
)
from simulator.recording.format import ClassificationRow, Provenance, Recording

POST_RACE_DECISION_MS: Final = 60_000
"""Race time from the provisional classification to the decisions and the official
classification. Stewards take longer; a replay need only show the provisional board
long enough to be seen (a minute of race time is a second at 60x)."""

TIME_PENALTY_MIN_MS: Final = 1000
"""A classified race time this much longer than the car's last line crossing is a
post-race time penalty, where the recording does not say so itself (``penalty_ms``)."""

MAX_TEXT: Final = 500
"""Characters of a message (the contract's limit)."""

_MESSAGE_PROVENANCE: dict[Provenance, MessageProvenance] = {
    "article": "article",
    "report": "report",
    "inferred": "inferred",
    "timing": "timing",
    "unknown": "inferred",
}


# A row's note telling of a penalty given after the race, and the seconds it names.
_POST_RACE_PENALTY = re.compile(
    r"penalt\w*\b.{0,80}?\b(?:post[- ]race|after the race)|"
    r"\b(?:post[- ]race|after the race)\b.{0,80}?penalt",
    re.IGNORECASE,
)
_SECONDS = re.compile(r"\b(\d{1,4}(?:\.\d{1,3})?)[- ]?(?:s|secs?|seconds?)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Decision:
    """One post-race decision on one car."""

    car: str
    penalty: PenaltyKind
    penalty_ms: int | None
    reason: str | None
    """The source's words, when it gives any (a note's text)."""
    provenance: MessageProvenance
    laps_deducted: int = 0
    """Laps the result takes away from those the car ran (a penalty in laps)."""


def decisions(recording: Recording, finished: set[str] | None = None) -> list[Decision]:
    """The post-race decisions a race recording states, in classification order.

    - A row with ``penalty_ms``, or (with lap timing) whose ``total_ms`` exceeds
      the car's last crossing by ``TIME_PENALTY_MIN_MS`` or more: a time penalty.
    - A row whose note (an export's remarks column) says of a penalty that it came
      after the race: a time penalty when it names seconds, else another penalty.
    - With lap timing, a classified row with fewer laps than the car completed:
      laps taken away (``other``).
    - A race note forfeiting points (``points_forfeited``): points, position kept.
    - A ``disqualified`` row whose car a race note says was disqualified, or that
      took the flag (in ``finished``): a disqualification.
    """
    if recording.facts.session != "race":
        return []
    rows = sorted(
        (r for r in recording.classification if r.number is not None and r.cls is not None),
        key=lambda r: r.position,
    )
    last_crossing: dict[str, tuple[int, int]] = {}
    for rec in recording.laps:
        known = last_crossing.get(rec.number)
        if known is None or rec.lap > known[0]:
            last_crossing[rec.number] = (rec.lap, rec.elapsed_ms)
    said: dict[str, list[tuple[str, Provenance, str]]] = {}
    for note in recording.notes:
        if note.table == "race" and note.effect in ("points_forfeited", "disqualified"):
            for named in note.cars:
                said.setdefault(named, []).append((note.effect, note.provenance, note.text))
    out: list[Decision] = []
    for row in rows:
        if row.number is None:
            continue
        car: str = row.number
        ran = last_crossing.get(car)
        if (
            ran is not None
            and row.laps is not None
            and row.laps < ran[0]
            and row.status in ("classified", "not_classified")
            and (row.total_ms is None or row.total_ms >= ran[1] - TIME_PENALTY_MIN_MS)
        ):
            # Classified on fewer laps than it completed, in the time of them all: laps
            # taken away after the race. (A result timed at an earlier crossing ends
            # there: crossings after it, such as a lap after the flag, are no penalty.)
            out.append(
                Decision(
                    car,
                    "other",
                    None,
                    row.note,
                    _MESSAGE_PROVENANCE[row.provenance],
                    laps_deducted=ran[0] - row.laps,
                )
            )
            ran = None  # its time is that of fewer laps: no time penalty to read from it
        added = _time_added(row, ran)
        if added is not None:
            # The importer's own account of the penalty is the message already.
            said_of = [
                part
                for part in (row.note or "").split("; ")
                if part and not part.startswith("post-race time penalty")
            ]
            reason = "; ".join(said_of) or None
            out.append(Decision(car, "time", added, reason, _MESSAGE_PROVENANCE[row.provenance]))
        elif row.note and _POST_RACE_PENALTY.search(row.note):
            seconds = _SECONDS.search(row.note)
            ms = round(float(seconds.group(1)) * 1000) if seconds else None
            out.append(
                Decision(
                    car,
                    "time" if ms else "other",
                    ms or None,
                    row.note,
                    _MESSAGE_PROVENANCE[row.provenance],
                )
            )
        for effect, provenance, text in said.get(car, []):
            kind: PenaltyKind = "points" if effect == "points_forfeited" else "disqualification"
            if kind == "disqualification" and row.status != "disqualified":
                continue  # the note says it, the result does not: nothing to show
            out.append(Decision(car, kind, None, text, _MESSAGE_PROVENANCE[provenance]))
        if (
            row.status == "disqualified"
            and finished is not None
            and car in finished
            and not any(d.car == car and d.penalty == "disqualification" for d in out)
        ):
            # Took the flag, then was disqualified: a decision after the race.
            out.append(
                Decision(
                    car, "disqualification", None, row.note, _MESSAGE_PROVENANCE[row.provenance]
                )
            )
    return out


def _time_added(row: ClassificationRow, last: tuple[int, int] | None) -> int | None:
    if row.penalty_ms:
        return row.penalty_ms
    if row.total_ms is None or last is None or last[0] != row.laps:
        return None
    if row.status not in ("classified", "not_classified"):
        return None  # a retired car's time may run to when it stopped: no result to change
    added = row.total_ms - last[1]
    return added if added >= TIME_PENALTY_MIN_MS else None


def amend(recording: Recording, events: list[Event], *, race: str) -> list[Event]:
    """``events`` (a race's numbered log, ending in ``session_close``) with the post-race
    steps: ``provisional`` as the last car takes the flag, then, ``POST_RACE_DECISION_MS``
    later, a ``penalty`` per decision (its text is the feed's message: the standings
    fold tells it), then the official classification. A log with no decision to show
    is returned as it is."""
    if not events or not isinstance(events[-1], SessionClosed):
        return events
    found = decisions(recording, {e.car for e in events if isinstance(e, Finish)})
    if not found:
        return events
    close = events[-1]
    body = events[:-1]
    flag_at = close.t_ms
    decided_at = flag_at + POST_RACE_DECISION_MS
    provisional = _provisional(close.classification, body, found)
    before = {row.car: row.position for row in provisional}
    after = {row.car: row.position for row in close.classification}
    cars = {d.car for d in found}
    # A message already telling a decision after the flag (the synthesised timeline
    # tells its notes) is told by the penalty instead, with the same words.
    kept = [
        e
        for e in body
        if not (
            isinstance(e, RaceControl)
            and e.category == "penalty"
            and e.t_ms >= flag_at
            and e.cars
            and e.cars[0] in cars
        )
    ]
    out: list[Event] = [
        *kept,
        Provisional(
            race=race,
            seq=1,
            t_ms=flag_at,
            classification=provisional,
            reason=_awaited(found),
        ),
    ]
    for d in found:
        short = _text(d, before.get(d.car), after.get(d.car))
        out.append(
            Penalty(
                race=race,
                seq=1,
                t_ms=decided_at,
                car=d.car,
                penalty=d.penalty,
                penalty_ms=d.penalty_ms,
                position_before=before.get(d.car),
                position_after=after.get(d.car),
                text=_cut(f"{short}: {d.reason}" if d.reason else short),
                provenance=d.provenance,
            )
        )
    out.append(replace(close, t_ms=decided_at))
    return [replace(e, seq=i) for i, e in enumerate(out, start=1)]


def _provisional(
    official: list[ResultRow], body: list[Event], found: list[Decision]
) -> list[ResultRow]:
    """The order on the road: the official order, with every car a decision concerns put
    back where its laps and last crossing placed it (a disqualified car as classified,
    a penalised car at its time before the penalty)."""
    laps: dict[str, int] = {}
    last_t: dict[str, int] = {}
    group: dict[str, int] = {}
    for e in body:
        if isinstance(e, Lap):
            laps[e.car] = max(laps.get(e.car, 0), e.lap)
            last_t[e.car] = e.t_ms
        elif isinstance(e, Finish):
            group[e.car] = 0
        elif isinstance(e, Retire):
            group.setdefault(e.car, 1)

    def key(car: str) -> tuple[int, int, int]:
        return (group.get(car, 2), -laps.get(car, 0), last_t.get(car, 0))

    decided = {d.car for d in found}
    added = {d.car: d.penalty_ms or 0 for d in found if d.penalty == "time"}
    disqualified = {d.car for d in found if d.penalty == "disqualification"}
    rows = [r for r in official if r.car not in decided]
    for row in sorted((r for r in official if r.car in decided), key=lambda r: key(r.car)):
        at = next((i for i, other in enumerate(rows) if key(other.car) > key(row.car)), len(rows))
        rows.insert(at, row)
    out: list[ResultRow] = []
    per_class: dict[str, int] = {}
    for i, row in enumerate(rows, start=1):
        per_class[row.cls] = per_class.get(row.cls, 0) + 1
        total = row.total_ms
        if total is not None and row.car in added:
            # Its time on the road: the last crossing, else the result less the penalty.
            total = last_t.get(row.car, max(0, total - added[row.car]))
        out.append(
            replace(
                row,
                position=i,
                class_position=per_class[row.cls],
                status="classified" if row.car in disqualified else row.status,
                total_ms=total,
            )
        )
    return out


def _awaited(found: list[Decision]) -> str:
    cars = ", ".join(f"#{c}" for c in dict.fromkeys(d.car for d in found))
    return f"post-race decisions on {cars} awaited"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _text(d: Decision, before: int | None, after: int | None) -> str:
    """``#79 +23 s, post-race: 3rd to 6th``, ``#17 points forfeited, post-race: 10th,
    position kept``, ``#8 disqualified, post-race: 5th to 7th``."""
    if d.penalty == "time" and d.penalty_ms is not None:
        what = f"+{d.penalty_ms / 1000:g} s"
    elif d.penalty == "points":
        what = "points forfeited"
    elif d.penalty == "disqualification":
        what = "disqualified"
    elif d.laps_deducted:
        what = f"-{d.laps_deducted} lap" + ("s" if d.laps_deducted > 1 else "")
    else:
        what = "penalty"
    if before is None or after is None:
        effect = ""
    elif before == after:
        effect = f": {_ordinal(before)}, position kept"
    else:
        effect = f": {_ordinal(before)} to {_ordinal(after)}"
    return _cut(f"#{d.car} {what}, post-race{effect}")


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."
