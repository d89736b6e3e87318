"""Synthesise a qualifying session: runs of laps in which each car sets exactly its recorded best.

Every car that took part leaves the pits, runs an out-lap, pushes, cools
its tyres, stops once for fresh tyres, pushes again and takes the flag at
its first crossing after time runs out. One of its pushing laps is its
recorded best to the millisecond; every other lap is slower. A car whose
times were disallowed (no time in the result) still runs, but never
quicker than the slowest recorded time, so it ranks behind every timed car
as the result has it. Pure: no I/O.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field

from chequered.contract.events import Event, Finish, Flag, Lap, PitIn, PitOut, Sector
from simulator.recording.format import Recording
from simulator.timeline.assemble import assemble, session_closed, session_opened


class QualifyingError(ValueError):
    """The session's result cannot be reproduced; the message says why."""


@dataclass(frozen=True)
class QualifyingSettings:
    duration_s: float = 900.0
    """Session length when the recording does not give one."""
    first_out_s: tuple[float, float] = (0.0, 150.0)
    """When a car leaves the pits, uniform."""
    out_lap: tuple[float, float] = (1.25, 1.45)
    """Out-lap and in-lap over the best lap, uniform."""
    push: tuple[float, float] = (0.002, 0.022)
    """A pushing lap over the best lap, uniform."""
    cool: tuple[float, float] = (1.12, 1.30)
    """A lap cooling the tyres, over the best lap."""
    pushes: tuple[int, int] = (2, 3)
    """Pushing laps in a row before a cooling lap."""
    stop_s: tuple[float, float] = (60.0, 180.0)
    """Standing in the pits for tyres halfway through, uniform."""
    lane_s: float = 24.0
    """Pit lane, entry to exit, driving."""
    no_time_margin: float = 0.01
    """A car without a time runs at least this much slower than the slowest time."""
    sector_shares: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"laguna seca": (0.379, 0.387, 0.234)}
    )


@dataclass
class _Run:
    """One car's session: its laps (time, kind) and the stops that end them."""

    number: str
    best_ms: int
    laps: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    """"out", "push", "cool" or "in" (the lap that ends in the pit lane)."""
    stands: dict[int, float] = field(default_factory=dict)
    """Standing time of the stop that ends lap index ``i``."""
    wait: int = 0
    """Time in the garage before the out-lap (part of lap 1)."""

    def ends(self) -> list[int]:
        out: list[int] = []
        acc = 0
        for ms in self.laps:
            acc += ms
            out.append(acc)
        return out


def _shares(recording: Recording, settings: QualifyingSettings) -> tuple[float, ...]:
    lines = recording.facts.timing_lines
    name = recording.facts.circuit.name.lower()
    for key, known in settings.sector_shares.items():
        if key in name and len(known) == lines:
            return known
    return tuple(1.0 / lines for _ in range(lines))


def participants(recording: Recording) -> list[tuple[str, int | None]]:
    """Cars that ran, in result order, with their recorded best (None: no time)."""
    best = {q.number: q.best_ms for q in recording.qualifying if q.remark is None}
    out: list[tuple[str, int | None]] = []
    seen: set[str] = set()
    rows = sorted(recording.classification, key=lambda r: r.position)
    for row in rows:
        if row.number is None or row.status == "dns" or row.number in seen:
            continue
        out.append((row.number, row.best_lap_ms or best.get(row.number)))
        seen.add(row.number)
    if not rows:
        for q in sorted(recording.qualifying, key=lambda q: (q.position or 10**6, q.grid or 0)):
            if q.remark == "did_not_participate" or q.number in seen:
                continue
            out.append((q.number, q.best_ms if q.remark is None else None))
            seen.add(q.number)
    return out


def synthesise(
    recording: Recording,
    *,
    seed: int = 0,
    race: str | None = None,
    settings: QualifyingSettings | None = None,
) -> list[Event]:
    settings = settings or QualifyingSettings()
    race = race or recording.facts.id
    cars = participants(recording)
    timed = [b for _, b in cars if b is not None]
    if not cars or not timed:
        raise QualifyingError(f"{race}: no car set a time")
    end = (recording.facts.length.duration_s or settings.duration_s) * 1000.0
    slowest = max(timed)
    runs: list[_Run] = []
    previous_best: tuple[int, int] | None = None
    no_time = 0
    for number, recorded in cars:
        rng = random.Random(f"{seed}:{race}:{number}:qualifying")
        if recorded is None:
            no_time += 1
            best = round(slowest * (1 + settings.no_time_margin * no_time))
        else:
            best = recorded
        run = _drive(number, best, end, rng, settings)
        # Equal times rank by who set them first: this car after the one above it.
        after = previous_best[1] if previous_best and previous_best[0] == best else -1
        _place_best(run, end, after, rng, settings)
        ends = run.ends()
        previous_best = (best, min(e for e, ms in zip(ends, run.laps, strict=True) if ms == best))
        runs.append(run)
    return _events(recording, race, runs, end, seed, settings)


def _lap(kind: str, best: int, rng: random.Random, settings: QualifyingSettings) -> int:
    if kind in ("out", "in"):
        return round(best * rng.uniform(*settings.out_lap))
    if kind == "cool":
        return round(best * rng.uniform(*settings.cool))
    return max(best + 1, round(best * (1 + rng.uniform(*settings.push))))


def _drive(
    number: str, best: int, end: float, rng: random.Random, settings: QualifyingSettings
) -> _Run:
    """Laps until the first crossing after the flag: out, pushes and cool-downs, one stop."""
    wait = round(rng.uniform(*settings.first_out_s) * 1000)
    run = _Run(number=number, best_ms=best, wait=wait)
    t = 0
    plan = ["out"]
    stopped = False
    streak = 0
    limit = rng.randint(*settings.pushes)
    while t < end:
        kind = plan.pop(0) if plan else "push"
        if kind == "push":
            streak += 1
        if kind == "push" and not stopped and t > end * 0.45:
            kind = "in"
        ms = _lap(kind, best, rng, settings)
        if not run.laps:
            ms += wait
        if kind == "in":
            stopped = True
            stand = rng.uniform(*settings.stop_s) * 1000
            run.stands[len(run.laps)] = stand
            ms += round(stand)
            plan = ["out"]
            streak = 0
        elif kind == "push" and streak >= limit:
            plan = ["cool"]
            streak = 0
            limit = rng.randint(*settings.pushes)
        run.laps.append(ms)
        run.kinds.append(kind)
        t += ms
    return run


def _place_best(
    run: _Run, end: float, after: int, rng: random.Random, settings: QualifyingSettings
) -> None:
    """Make one pushing lap, done before the flag (and after ``after``), exactly the best."""
    ends = run.ends()
    candidates = [
        i
        for i, (kind, e) in enumerate(zip(run.kinds, ends, strict=True))
        if kind == "push" and after < e - (run.laps[i] - run.best_ms) and e <= end
    ]
    if not candidates:
        raise QualifyingError(f"car #{run.number} has no flying lap to set its time on")
    # Later laps are likelier: the track rubbers in.
    index = rng.choices(candidates, weights=[1 + i for i in range(len(candidates))])[0]
    run.laps[index] = run.best_ms
    # The laps after it now end sooner: drop those past the first crossing
    # after the flag, or add pushing laps until there is one.
    t = 0
    for i, ms in enumerate(run.laps):
        t += ms
        if t >= end:
            del run.laps[i + 1 :]
            del run.kinds[i + 1 :]
            return
    while t < end:
        ms = _lap("push", run.best_ms, rng, settings)
        run.laps.append(ms)
        run.kinds.append("push")
        t += ms


def _events(
    recording: Recording,
    race: str,
    runs: list[_Run],
    end: float,
    seed: int,
    settings: QualifyingSettings,
) -> list[Event]:
    lines = recording.facts.timing_lines
    shares = _shares(recording, settings)
    drafts: list[Event] = [
        session_opened(recording, race=race),
        Flag(race=race, seq=1, t_ms=0, flag="green", reason="session start"),
        Flag(race=race, seq=1, t_ms=round(end), flag="chequered"),
    ]
    last = round(end)
    lane = settings.lane_s * 1000
    for run in runs:
        rng = random.Random(f"{seed}:{race}:{run.number}:sectors")
        driver = _driver(recording, run.number)
        start = 0
        for index, (ms, kind) in enumerate(zip(run.laps, run.kinds, strict=True)):
            lap = index + 1
            t_ms = start + ms
            # Sector lines within the lap: shares of its green running, a little noise.
            lead = run.wait if index == 0 else 0
            green = ms - round(run.stands.get(index, 0.0)) - lead
            marks: list[int] = []
            acc = 0.0
            for share in shares[:-1]:
                acc += share * (1 + rng.uniform(-0.01, 0.01))
                marks.append(start + lead + round(green * min(acc, 0.999)))
            cuts = [start, *marks, t_ms]
            sectors: list[int | None] = [b - a for a, b in itertools.pairwise(cuts)]
            for j in range(1, len(cuts) - 1):
                drafts.append(
                    Sector(
                        race=race,
                        seq=1,
                        t_ms=cuts[j],
                        car=run.number,
                        lap=lap,
                        sector=j,
                        sector_ms=cuts[j] - cuts[j - 1],
                        position=1,
                    )
                )
            drafts.append(
                Lap(
                    race=race,
                    seq=1,
                    t_ms=t_ms,
                    car=run.number,
                    lap=lap,
                    lap_ms=ms,
                    sectors_ms=sectors,
                    position=1,
                    driver=driver,
                    flag="chequered" if t_ms >= end else "green",
                    in_pit=kind == "in",
                )
            )
            if kind == "in":
                stand = round(run.stands[index])
                pit_in = t_ms - stand - round(lane * 0.3)
                pit_out = t_ms + round(lane * 0.4)
                drafts.append(PitIn(race=race, seq=1, t_ms=pit_in, car=run.number, lap=index))
                drafts.append(
                    PitOut(
                        race=race,
                        seq=1,
                        t_ms=pit_out,
                        car=run.number,
                        lap=lap,
                        pit_ms=pit_out - pit_in,
                        stationary_ms=stand,
                        driver=driver,
                    )
                )
            if t_ms >= end:
                drafts.append(Finish(race=race, seq=1, t_ms=t_ms, car=run.number, lap=lap))
            start = t_ms
            last = max(last, t_ms)
    drafts.append(session_closed(recording, race=race, t_ms=last))
    grid = [run.number for run in runs]
    return assemble(drafts, race=race, lines=lines, session="qualifying", grid=grid)


def _driver(recording: Recording, number: str) -> str:
    for q in recording.qualifying:
        if q.number == number and q.driver:
            return q.driver
    entry = recording.entry(number)
    if entry and entry.drivers:
        return entry.drivers[0].name
    return f"#{number}"
