"""Merge per-car timing into one ordered event log with running positions.

Both the synthesised timeline and the replay of real timing produce draft
events (``seq`` and ``position`` not yet meaningful) and hand them here.
This module puts them in time order, numbers them from 1, and gives every
timing-line crossing the car's running position. Pure: no I/O.

Running position in a race: a car crossing timing line number ``d`` (lines
counted from the start, ``lines`` per lap) is placed behind every car that
reached line ``d`` earlier. That is the order of (distance, time) a timing
screen shows, and it needs one counter per line. In qualifying the position
is the rank of the car's best lap so far.
"""

from __future__ import annotations

from collections.abc import Iterable

from msgspec.structs import replace

from chequered.contract.events import (
    Clock,
    EntryInfo,
    Event,
    Finish,
    Flag,
    Lap,
    Penalty,
    PitIn,
    PitOut,
    Provisional,
    RaceControl,
    Reset,
    ResultRow,
    Retire,
    Sector,
    SessionClosed,
    SessionInfo,
    SessionKind,
    SessionOpened,
)
from simulator.recording.format import Recording

# Order of events that share a millisecond: the session opens first, flags
# change before cars cross under them, the chequered flag falls as the leader
# crosses, a car finishes or retires after its last crossing, and race control
# tells of what happened in that millisecond after it.
_RANK: dict[type[Event], int] = {
    SessionOpened: 0,
    Reset: 0,
    Clock: 0,
    Flag: 1,
    Sector: 2,
    Lap: 2,
    PitIn: 4,
    PitOut: 4,
    Finish: 5,
    Retire: 6,
    RaceControl: 7,
    Provisional: 8,
    Penalty: 8,
    SessionClosed: 9,
}


def _rank(event: Event) -> int:
    if isinstance(event, Flag) and event.flag == "chequered":
        return 3
    return _RANK[type(event)]


def distance(event: Sector | Lap, lines: int) -> int:
    """Timing lines crossed since the start, counting this crossing."""
    if isinstance(event, Lap):
        return event.lap * lines
    return (event.lap - 1) * lines + event.sector


def assemble(
    drafts: Iterable[Event],
    *,
    race: str,
    lines: int,
    session: SessionKind = "race",
    grid: list[str] | None = None,
) -> list[Event]:
    """Sort drafts by (time, kind), number them 1..N and fill running positions.

    The sort is stable, so drafts that tie on both keep the caller's order.
    """
    ordered = sorted(drafts, key=lambda e: (e.t_ms, _rank(e)))
    if session == "qualifying":
        return _number_qualifying(ordered, race=race, grid=grid or [])
    reached: dict[int, int] = {}
    out: list[Event] = []
    leader = 0
    for seq, event in enumerate(ordered, start=1):
        if isinstance(event, Sector | Lap):
            d = distance(event, lines)
            ahead = reached.get(d, 0)
            reached[d] = ahead + 1
            if isinstance(event, Lap) and event.lap > leader:
                leader = event.lap
            out.append(replace(event, race=race, seq=seq, position=ahead + 1))
        elif isinstance(event, RaceControl):
            # A message is dated by the leader's laps, as a timing screen shows it.
            out.append(replace(event, race=race, seq=seq, lap=leader))
        else:
            out.append(replace(event, race=race, seq=seq))
    return out


def _number_qualifying(ordered: list[Event], *, race: str, grid: list[str]) -> list[Event]:
    best: dict[str, tuple[int, int]] = {}  # car -> (best lap ms, seq at which it was set)
    order_of = {car: i for i, car in enumerate(grid)}
    out: list[Event] = []
    for seq, event in enumerate(ordered, start=1):
        if isinstance(event, Lap) and event.lap_ms is not None:
            current = best.get(event.car)
            if current is None or event.lap_ms < current[0]:
                best[event.car] = (event.lap_ms, seq)
        if isinstance(event, Sector | Lap):
            out.append(
                replace(
                    event, race=race, seq=seq, position=_qualifying_rank(event.car, best, order_of)
                )
            )
        else:
            out.append(replace(event, race=race, seq=seq))
    return out


def _qualifying_rank(car: str, best: dict[str, tuple[int, int]], order_of: dict[str, int]) -> int:
    mine = best.get(car)
    if mine is not None:
        return 1 + sum(1 for other in best.values() if other < mine)
    # No time yet: behind every car with a time, then in grid order.
    slot = order_of.get(car, len(order_of))
    return 1 + len(best) + sum(1 for c, i in order_of.items() if i < slot and c not in best)


# -- first and last events, the same for every kind of replay ---------------


def session_opened(recording: Recording, *, race: str) -> SessionOpened:
    """The ``session_open`` event of a recording (t = 0)."""
    facts = recording.facts
    started = set(recording.grid)
    entries = [
        EntryInfo(
            number=e.number,
            cls=e.cls,
            team=e.team,
            drivers=[d.name for d in e.drivers],
            chassis=e.chassis,
            engine=e.engine,
            tyre=e.tyre,
        )
        for e in recording.entries
        if not started or e.number in started
    ]
    return SessionOpened(
        race=race,
        seq=1,
        t_ms=0,
        session=SessionInfo(
            name=facts.event,
            series=facts.series,
            season=facts.season,
            kind=facts.session,
            circuit=facts.circuit.name,
            lap_km=facts.circuit.length_km,
            lines=facts.timing_lines,
            duration_ms=facts.length.duration_s * 1000 if facts.length.duration_s else None,
            laps=facts.length.laps,
            date=facts.date,
            start_time=facts.start_time,
            round=facts.round,
            synthesised=not recording.laps,
        ),
        classes=list(recording.classes),
        entries=entries,
        grid=list(recording.grid),
    )


def session_closed(recording: Recording, *, race: str, t_ms: int) -> SessionClosed:
    """The ``session_close`` event: the official classification of the recording.

    Rows whose car no source names are left out (the wire names every car).
    """
    per_class: dict[str, int] = {}
    rows: list[ResultRow] = []
    for row in sorted(recording.classification, key=lambda r: r.position):
        if row.number is None or row.cls is None:
            continue
        per_class[row.cls] = per_class.get(row.cls, 0) + 1
        rows.append(
            ResultRow(
                position=row.position,
                car=row.number,
                cls=row.cls,
                class_position=per_class[row.cls],
                laps=row.laps or 0,
                status=row.status,
                total_ms=row.total_ms,
                best_lap_ms=row.best_lap_ms,
                best_lap=row.best_lap,
            )
        )
    return SessionClosed(race=race, seq=1, t_ms=t_ms, classification=rows)
