"""Complete a partly known race classification by a documented, deterministic rule.

Used where a source lost part of a result table (the 2013 Baltimore race):
rows whose car or lap count no source gives are filled from the starters,
the class of each row and a few reported facts, and marked ``inferred``.
Pure: rows in, rows out. The rule is described in ``docs/RECORDING.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from msgspec import Struct
from msgspec.structs import replace

from simulator.recording.format import CarNumber, ClassificationRow


class StartCrash(Struct, kw_only=True, forbid_unknown_fields=True):
    """Cars a report says a crash at the start eliminated."""

    cars: list[CarNumber] = []
    """Cars named as eliminated."""
    classes: dict[str, int] = {}
    """How many further cars of each class it eliminated, unnamed (``{GT = 4}``)."""
    laps: int = 0
    """Laps those cars completed (0: out on the opening lap)."""


class TimeLeft(Struct, kw_only=True, forbid_unknown_fields=True):
    """A car reported out of the race with this much of the race still to run."""

    car: CarNumber
    seconds: int


class Hints(Struct, kw_only=True, forbid_unknown_fields=True):
    """Reported facts the rule uses; each comes from a race report."""

    winner_laps: int | None = None
    racing_s: list[int] = []
    """Actual racing time of the winner as reported, one value or a range [low, high]."""
    start_crash: StartCrash | None = None
    ran_on: list[CarNumber] = []
    """Cars reported running on after the start crash (not among its victims)."""
    time_left: list[TimeLeft] = []


@dataclass(frozen=True)
class Starter:
    number: str
    cls: str


class ReconstructError(ValueError):
    """The known rows and the starters cannot be reconciled; the message says why."""


def reconstruct(
    rows: list[ClassificationRow], starters: list[Starter], hints: Hints
) -> tuple[list[ClassificationRow], list[str]]:
    """Fill every row's car, class and laps; return the rows and what the rule decided.

    ``starters`` are the cars that started, in grid order. Rows keep their
    order; a row whose car was unknown becomes ``inferred``; a row whose car
    is known but whose laps were filled gets ``laps_provenance = inferred``.
    """
    log: list[str] = []
    out = sorted(rows, key=lambda r: r.position)
    cls_of = {s.number: s.cls for s in starters}
    placed = {r.number for r in out if r.number is not None}
    for number in placed:
        if number not in cls_of:
            raise ReconstructError(f"car #{number} has a result row but did not start")
    # Rows naming a car take the car's class when the row has none.
    out = [
        replace(r, cls=cls_of[r.number]) if r.number is not None and r.cls is None else r
        for r in out
    ]
    pool = [s for s in starters if s.number not in placed]
    unknown = [r for r in out if r.number is None]
    if len(pool) != len(unknown):
        cars = " ".join(f"#{s.number}" for s in pool)
        raise ReconstructError(
            f"{len(unknown)} rows name no car but {len(pool)} starters have no row ({cars}); "
            "if a car did not start, list it in the facts' non_starters"
        )
    out = _cars_by_class(out, pool, log)
    crash = _crash_positions(out, hints)
    out = _cars_for_crash_rows(out, pool, crash, hints, log)
    out = _cars_in_grid_order(out, pool, log)
    out = _laps(out, crash, hints, log)
    return out, log


def _take(pool: list[Starter], pick: Starter) -> str:
    pool.remove(pick)
    return pick.number


def _fill_car(row: ClassificationRow, car: Starter, why: str) -> ClassificationRow:
    note = f"car inferred ({why})" + (f"; {row.note}" if row.note else "")
    return replace(row, number=car.number, cls=car.cls, provenance="inferred", note=note)


def _cars_by_class(
    rows: list[ClassificationRow], pool: list[Starter], log: list[str]
) -> list[ClassificationRow]:
    """C1: a row with a class but no car takes that class's next starter in grid order."""
    out = []
    for r in rows:
        if r.number is None and r.cls is not None:
            same = [s for s in pool if s.cls == r.cls]
            if not same:
                raise ReconstructError(f"position {r.position}: no {r.cls} starter left")
            car = same[0]
            _take(pool, car)
            log.append(f"C1 position {r.position}: #{car.number}, next {r.cls} starter on the grid")
            r = _fill_car(r, car, f"rule C1: next {r.cls} starter in grid order")
        out.append(r)
    return out


def _crash_positions(rows: list[ClassificationRow], hints: Hints) -> set[int]:
    """Positions of the start-crash victims: the retired rows from the first named victim down.

    Retired rows are in lap order, so every retired row below a car that
    completed ``laps`` laps completed no more.
    """
    crash = hints.start_crash
    if crash is None or not crash.cars:
        return set()
    named = [r.position for r in rows if r.number in crash.cars]
    if not named:
        return set()
    top = min(named)
    return {r.position for r in rows if r.position >= top and r.status == "retired"}


def _cars_for_crash_rows(
    rows: list[ClassificationRow],
    pool: list[Starter],
    crash_positions: set[int],
    hints: Hints,
    log: list[str],
) -> list[ClassificationRow]:
    """C2: crash rows take cars of the classes the report names, then any, never a car
    reported running on; each group in grid order."""
    crash = hints.start_crash
    if crash is None:
        return rows
    quota = dict(crash.classes)
    for r in rows:
        named = r.number is not None and r.number in crash.cars
        if r.position in crash_positions and r.number is not None and r.cls in quota and not named:
            quota[r.cls] -= 1
    out = []
    for r in rows:
        if r.position in crash_positions and r.number is None:
            eligible = [s for s in pool if s.number not in hints.ran_on]
            wanted = [s for s in eligible if quota.get(s.cls, 0) > 0]
            if wanted:
                car, why = wanted[0], f"rule C2: start crash, {wanted[0].cls} car in grid order"
                quota[car.cls] -= 1
            elif eligible:
                car = eligible[0]
                why = "rule C2: start crash, no car of the reported class left; next in grid order"
            else:
                raise ReconstructError(f"position {r.position}: no car left for the crash row")
            _take(pool, car)
            log.append(f"C2 position {r.position}: #{car.number} ({why})")
            r = _fill_car(r, car, why)
        out.append(r)
    return out


def _cars_in_grid_order(
    rows: list[ClassificationRow], pool: list[Starter], log: list[str]
) -> list[ClassificationRow]:
    """C3: the remaining rows, top down, take the remaining starters in grid order."""
    out = []
    for r in rows:
        if r.number is None:
            car = pool[0]
            _take(pool, car)
            log.append(f"C3 position {r.position}: #{car.number}, next remaining starter")
            r = _fill_car(r, car, "rule C3: next remaining starter in grid order")
        out.append(r)
    return out


def laps_from_time_left(winner_laps: int, racing_s: float, time_left_s: int) -> int:
    """Laps completed by a car out with ``time_left_s`` to go, at the winner's average pace.

    The winner's average lap (racing time / laps) includes the cautions; a car
    on the lead lap at that moment had completed that share of the laps.
    """
    share = (racing_s - time_left_s) / racing_s
    return max(0, math.floor(winner_laps * share))


def _set_laps(row: ClassificationRow, laps: int, why: str) -> ClassificationRow:
    note = f"laps inferred ({why})" + (f"; {row.note}" if row.note else "")
    if row.provenance == "inferred":
        return replace(row, laps=laps, note=note)
    return replace(row, laps=laps, laps_provenance="inferred", note=note)


def _laps(
    rows: list[ClassificationRow], crash_positions: set[int], hints: Hints, log: list[str]
) -> list[ClassificationRow]:
    out = list(rows)
    winner_laps = out[0].laps if out and out[0].laps is not None else hints.winner_laps
    if winner_laps is None:
        raise ReconstructError("the winner's lap count is needed (a row or winner_laps)")
    if out[0].laps is None:
        out[0] = _set_laps(out[0], winner_laps, "L0: reported winner laps")
    crash_laps = hints.start_crash.laps if hints.start_crash else 0
    for i, r in enumerate(out):
        if r.laps is None and r.position in crash_positions:
            out[i] = _set_laps(r, crash_laps, f"rule L1: out in the start crash, {crash_laps} laps")
            log.append(f"L1 position {r.position} #{r.number}: {crash_laps} laps (start crash)")
    if hints.racing_s:
        racing = sum(hints.racing_s) / len(hints.racing_s)
        for t in hints.time_left:
            for i, r in enumerate(out):
                if r.number == t.car and r.laps is None:
                    laps = laps_from_time_left(winner_laps, racing, t.seconds)
                    why = (
                        f"rule L2: out with {t.seconds // 60} min left of {racing / 60:.0f} min "
                        f"racing, at the winner's average lap"
                    )
                    out[i] = _set_laps(r, laps, why)
                    log.append(f"L2 position {r.position} #{r.number}: {laps} laps")
    # L3: a classified car with no lap count is on the lap of the car ahead.
    for i, r in enumerate(out):
        if r.laps is None and r.status in ("classified", "not_classified") and i > 0:
            above = out[i - 1].laps
            assert above is not None  # rows are filled top down
            out[i] = _set_laps(r, above, "rule L3: same lap as the car ahead")
            log.append(f"L3 position {r.position} #{r.number}: {above} laps")
    # L4: a retired car with no lap count ran one lap further than the next car out
    # below it. Not the same count: of two cars out on the same lap the higher one
    # reached it first, which a car of a slower class cannot do before a faster one.
    for i in range(len(out) - 1, -1, -1):
        r = out[i]
        if r.laps is None:
            below = next((x.laps for x in out[i + 1 :] if x.laps is not None), -1)
            above = next((x.laps for x in reversed(out[:i]) if x.laps is not None), None)
            laps = below + 1
            if above is not None and r.status == "classified":
                laps = min(laps, above)
            out[i] = _set_laps(r, laps, "rule L4: one lap more than the next car out below it")
            log.append(f"L4 position {r.position} #{r.number}: {laps} laps")
    return out
