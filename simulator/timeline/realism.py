"""How real a timeline looks: the same measures over real and synthesised laps.

Green-flag lap times against each car's best, stint lengths, pit lane times
and the share of laps run under yellow, computed over plain lap rows. Rows
come from an event log (``from_events``) or from the text of an Al Kamel
lap export (``from_alkamel_csv``, parsed minimally here). Pure: no I/O.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from chequered.contract.events import Event, Lap, PitOut, SessionOpened

PERCENTILES = (5, 10, 25, 50, 75, 90, 95)


@dataclass(frozen=True)
class LapRow:
    car: str
    cls: str
    lap: int
    lap_ms: int
    flag: str
    """"green", "fcy" (yellow or red) or "other"."""
    in_pit: bool
    """Ended in the pit lane (the in-lap)."""
    pit_ms: int | None = None
    """Pit lane time of the stop this lap leaves from (the out-lap), if any."""


def from_events(events: Iterable[Event], *, run: str = "") -> list[LapRow]:
    """Lap rows of an event log; a stop's lane time goes on the lap after it.

    ``run`` prefixes the car numbers, to pool several logs without mixing their cars.
    """
    cls_of: dict[str, str] = {}
    pending: dict[str, int] = {}
    rows: list[LapRow] = []
    for event in events:
        if isinstance(event, SessionOpened):
            for entry in event.entries:
                cls_of[entry.number] = entry.cls
        elif isinstance(event, PitOut):
            pending[event.car] = event.pit_ms
        elif isinstance(event, Lap) and event.lap_ms is not None:
            flag = {"green": "green", "fcy": "fcy", "red": "fcy"}.get(event.flag, "other")
            rows.append(
                LapRow(
                    car=run + event.car,
                    cls=cls_of.get(event.car, "?"),
                    lap=event.lap,
                    lap_ms=event.lap_ms,
                    flag=flag,
                    in_pit=event.in_pit,
                    pit_ms=pending.pop(event.car, None) if not event.in_pit else None,
                )
            )
    return rows


def _ms(text: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return round(total * 1000)


def from_alkamel_csv(text: str) -> list[LapRow]:
    """Lap rows of an Al Kamel ``*-laps.csv`` export (byte-order mark, padded headers)."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in next(reader)]
    col = {name: i for i, name in enumerate(header)}
    rows: list[LapRow] = []
    for raw in reader:
        if not raw or len(raw) < len(col) - 1:
            continue
        cell = [c.strip() for c in raw]
        lap_ms = _ms(cell[col["LAP_TIME"]])
        if lap_ms is None:
            continue
        flag = cell[col["FLAG_AT_FL"]]
        rows.append(
            LapRow(
                car=cell[col["NUMBER"]],
                cls=cell[col["CLASS"]],
                lap=int(cell[col["LAP_NUMBER"]]),
                lap_ms=lap_ms,
                flag="green" if flag == "GF" else "fcy" if flag in ("FCY", "RF") else "other",
                in_pit=bool(cell[col["CROSSING_FINISH_LINE_IN_PIT"]]),
                pit_ms=_ms(cell[col["PIT_TIME"]]),
            )
        )
    return rows


def _by_car(rows: Sequence[LapRow]) -> dict[str, list[LapRow]]:
    cars: dict[str, list[LapRow]] = {}
    for row in rows:
        cars.setdefault(row.car, []).append(row)
    for laps in cars.values():
        laps.sort(key=lambda r: r.lap)
    return cars


def green_ratios(rows: Sequence[LapRow], reference: dict[str, int] | None = None) -> list[float]:
    """Each clean green lap over the car's best lap (or its ``reference``).

    Clean: green at both ends (the lap before was green too), neither an
    in-lap nor an out-lap, not the first lap.
    """
    out: list[float] = []
    for car, laps in _by_car(rows).items():
        best = reference.get(car) if reference else None
        if best is None:
            best = min(r.lap_ms for r in laps)
        for prev, row in itertools.pairwise(laps):
            if (
                row.flag == "green"
                and prev.flag == "green"
                and not row.in_pit
                and not prev.in_pit
                and row.pit_ms is None
                and row.lap > 1
            ):
                out.append(row.lap_ms / best)
    return out


def stints(rows: Sequence[LapRow]) -> list[int]:
    """Laps from the start or a stop to the next stop (stints ended by a stop only)."""
    out: list[int] = []
    for laps in _by_car(rows).values():
        last = 0
        for row in laps:
            if row.in_pit:
                out.append(row.lap - last)
                last = row.lap
    return out


def pit_times(rows: Sequence[LapRow]) -> list[int]:
    return [r.pit_ms for r in rows if r.pit_ms is not None]


def yellow_share(rows: Sequence[LapRow]) -> float:
    return sum(1 for r in rows if r.flag == "fcy") / max(1, len(rows))


def stops_under_yellow(rows: Sequence[LapRow]) -> float:
    """Share of in-laps that end under yellow."""
    ins = [r for r in rows if r.in_pit]
    return sum(1 for r in ins if r.flag == "fcy") / max(1, len(ins))


def percentiles(values: Sequence[float], ps: Sequence[int] = PERCENTILES) -> list[float]:
    """Nearest-rank percentiles (empty input: NaNs)."""
    if not values:
        return [float("nan")] * len(ps)
    ordered = sorted(values)
    n = len(ordered)
    return [ordered[min(n - 1, max(0, round(p / 100 * (n - 1))))] for p in ps]


def share_within(values: Sequence[float], lo: float, hi: float) -> float:
    return sum(1 for v in values if lo <= v <= hi) / max(1, len(values))


@dataclass(frozen=True)
class Summary:
    laps: int
    green: list[float]
    """Percentiles of clean green laps over the car's best lap."""
    stint_laps: list[float]
    pit_s: list[float]
    yellow_share: float
    stops_under_yellow: float
    green_band: float
    """Share of clean green laps within ``BAND`` of the car's best."""


BAND = (1.005, 1.06)
STOP_PS = (10, 25, 50, 75, 90)


def summarise(rows: Sequence[LapRow]) -> Summary:
    ratios = green_ratios(rows)
    return Summary(
        laps=len(rows),
        green=percentiles(ratios),
        stint_laps=percentiles([float(s) for s in stints(rows) if s >= 5], STOP_PS),
        pit_s=[v / 1000 for v in percentiles([float(p) for p in pit_times(rows)], STOP_PS)],
        yellow_share=yellow_share(rows),
        stops_under_yellow=stops_under_yellow(rows),
        green_band=share_within(ratios, *BAND),
    )


def report(real: Summary, synthetic: Summary, *, real_name: str, synthetic_name: str) -> str:
    """A Markdown table setting the two summaries side by side."""

    def fmt(values: Sequence[float], digits: int = 3) -> str:
        return " / ".join(f"{v:.{digits}f}" for v in values)

    lines = [
        f"| measure | {real_name} | {synthetic_name} |",
        "|---|---|---|",
        f"| laps | {real.laps} | {synthetic.laps} |",
        "| green lap / car's best, p5 / p10 / p25 / p50 / p75 / p90 / p95 | "
        f"{fmt(real.green)} | {fmt(synthetic.green)} |",
        f"| green laps within +{(BAND[0] - 1) * 100:.1f}% .. +{(BAND[1] - 1) * 100:.0f}% of best | "
        f"{real.green_band:.1%} | {synthetic.green_band:.1%} |",
        "| stint laps (5 or more), p10 / p25 / p50 / p75 / p90 | "
        f"{fmt(real.stint_laps, 0)} | {fmt(synthetic.stint_laps, 0)} |",
        "| pit lane time s, p10 / p25 / p50 / p75 / p90 | "
        f"{fmt(real.pit_s, 1)} | {fmt(synthetic.pit_s, 1)} |",
        f"| laps under yellow | {real.yellow_share:.1%} | {synthetic.yellow_share:.1%} |",
        f"| stops under yellow | {real.stops_under_yellow:.1%} | "
        f"{synthetic.stops_under_yellow:.1%} |",
    ]
    return "\n".join(lines) + "\n"
