"""Synthesise a race from its results: lap-by-lap events that end in the official classification.

The solver works backwards from the result. It fixes when the flag falls
and when each car must cross the line for the last time (in classification
order, with the recorded laps), lays yellows so that the winner's laps fill
the race, drives the winner (the safety car picks it up), then drives every
other car alone through that schedule with the pace multiplier that brings
it to its last crossing at exactly that time. Where a car's drive jumps
with its pace (a yellow catching it just ahead of the safety car, a stop
falling under a yellow or not) the car is made early, never late; once the
last neutralisation is over nothing jumps and the pace is solved again,
exactly. Time a car cannot lose by lapping slower goes into its stops
(repairs in the garage). ``docs/TIMELINE.md`` tells the whole story.
Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from msgspec.structs import replace

from chequered.contract.events import (
    Event,
    Finish,
    Flag,
    FlagState,
    Lap,
    MessageCategory,
    MessageProvenance,
    PitIn,
    PitOut,
    RaceControl,
    Retire,
    Sector,
)
from simulator.recording.format import ClassificationRow, Recording
from simulator.timeline.assemble import assemble, session_closed, session_opened
from simulator.timeline.cautions import CautionSettings, Neutral, Schedule, place_yellows
from simulator.timeline.incidents import CO_DRIVER, Incident, Reading
from simulator.timeline.incidents import read as read_notes
from simulator.timeline.pace import FLOOR, CarPace, PaceSettings, draw_pace, reference_laps
from simulator.timeline.pitstops import PitSettings, Stop, StopRule, window_laps
from simulator.timeline.trajectory import (
    LANE_IN,
    LINE,
    PIT_IN,
    PIT_OUT,
    SECTOR,
    CarPlan,
    Progress,
    Record,
    Walk,
    advance,
    estimate,
    start,
)

EARLY_MS = 5_000.0
"""The pace chosen at the start may bring a car up to this much early: it is
chosen again, exactly, once the last neutralisation is over."""


class SynthesisError(ValueError):
    """The recording's result cannot be reproduced; the message names the car and why."""


@dataclass(frozen=True)
class SynthSettings:
    pace: PaceSettings = field(default_factory=PaceSettings)
    pits: PitSettings = field(default_factory=PitSettings)
    cautions: CautionSettings = field(default_factory=CautionSettings)
    grid_gap_s: float = 0.45
    """Rolling start: each grid slot crosses the line this much after the one ahead."""
    pace_cap: float = 1.045
    """Above this pace multiplier a car loses the rest of its surplus in the pits."""
    garage_pace: tuple[float, float] = (1.0, 1.02)
    """Pace multiplier of a car that needs a long stop, uniform."""
    natural_pace: tuple[float, float] = (1.0, 1.015)
    """Pace multiplier behind a retired car's last lap and the winner's, uniform."""
    finish_window: float = 0.8
    """Cars on one lap take the flag within this share of their quickest lap."""
    winner_overrun: tuple[float, float] = (0.1, 0.8)
    """The winner's last crossing, in shares of its lap, after time runs out."""
    retire_margin_laps: float = 2.0
    """A retired car's last crossing comes at least this many laps before the flag."""
    retire_in_pits_p: float = 0.4
    """Chance that a car retires in the pit lane rather than out on the track."""
    winner_pace_max: float = 1.08
    """Slowest green pace multiplier the winner may be given to fit a car's laps."""
    winner_pace_steps: int = 6
    """Bisection steps when searching for it."""
    natural_yellow_share: float = 0.08
    """Yellow time of a race whose length the result does not pin down."""
    sector_noise: float = 0.004
    """Spread of an intermediate crossing, in shares of the lap."""
    yellow_wander_ms: float = 400.0
    """Spread of a line crossing behind the safety car."""
    solve_tol_ms: float = 1.0
    finish_gap_ms: float = 100.0
    """Two cars on the same lap cross the line for the last time at least this far apart."""
    sector_shares: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {"laguna seca": (0.379, 0.387, 0.234)}
    )
    """Time share of each sector by circuit (name contains the key), when known."""
    damage_laps: tuple[int, int] = (6, 12)
    """A car damaged in a crash the notes tell of laps slower for this many laps, uniform ..."""
    damage_loss: tuple[float, float] = (0.03, 0.06)
    """... by this share of its reference lap at first, fading to nothing."""
    unscheduled_at: tuple[float, float] = (0.35, 0.75)
    """Where in a car's race an unscheduled stop the notes tell of falls (share of its laps)."""
    crash_before: tuple[float, float] = (0.25, 0.75)
    """A car out in a crash the notes time crossed the line this share of a lap before it."""


@dataclass
class Target:
    number: str
    cls: str
    laps: int
    status: str
    finisher: bool
    """Running at the flag (classified, not classified or later disqualified)."""
    tau: float = 0.0
    """Time of the car's last crossing of the line."""
    gap_ms: int | None = None
    """Recorded gap to the winner at the flag (same lap only)."""
    m_guess: float = 1.0
    """Pace multiplier expected to bring the car there (where the solver starts)."""


@dataclass
class Car:
    target: Target
    drivers: list[str]
    plan: CarPlan
    d_stop: float = 0.0
    retire_in_pits: bool = False
    record: list[Record] = field(default_factory=list)
    walk: Walk | None = None
    progress: Progress | None = None
    m_history: list[float] = field(default_factory=list)
    retire_ms: float = 0.0
    crash: Incident | None = None
    """The crash the notes say put the car out, if any."""
    crash_ms: float = 0.0
    """When it happened: the car stops there, and the yellow starts."""

    @property
    def pace(self) -> CarPace:
        return self.plan.pace


@dataclass
class Synthesis:
    """A synthesised race: its events and what the solver decided."""

    events: list[Event]
    end_ms: float
    """When time ran out (the scheduled length, plus any red-flag time the clock stood still)."""
    chequered_ms: float
    schedule: Schedule
    cars: dict[str, Car]
    notes: Reading = field(default_factory=Reading)
    """The recording's notes as read: incidents honoured, told, unused."""


def _rng(seed: int, race: str, *parts: object) -> random.Random:
    return random.Random(":".join([str(seed), race, *map(str, parts)]))


# -- the result to reach --------------------------------------------------------


def targets(recording: Recording) -> list[Target]:
    """Every starter's laps and status, in classification order.

    A row without laps takes the laps of the nearest classified row above it
    when classified, else 0. A starter no row names is treated as out on the
    opening lap.
    """
    grid = list(recording.grid) or [e.number for e in recording.entries]
    started = set(grid)
    cls_of = {e.number: e.cls for e in recording.entries}
    out: list[Target] = []
    seen: set[str] = set()
    last_laps: int | None = None
    rows: list[ClassificationRow] = sorted(recording.classification, key=lambda r: r.position)
    for row in rows:
        if row.number is None or row.number not in started or row.status == "dns":
            continue
        laps = row.laps
        running = row.status in ("classified", "not_classified", "disqualified")
        if laps is None:
            laps = last_laps if (running and last_laps is not None) else 0
        if running:
            last_laps = laps
        out.append(
            Target(
                number=row.number,
                cls=row.cls or cls_of.get(row.number, "?"),
                laps=laps,
                status=row.status,
                finisher=running and laps > 0,
                gap_ms=row.gap_ms if row.gap_laps in (None, 0) else None,
            )
        )
        seen.add(row.number)
    for number in grid:
        if number not in seen:
            out.append(
                Target(
                    number=number,
                    cls=cls_of.get(number, "?"),
                    laps=0,
                    status="retired",
                    finisher=False,
                )
            )
    return out


def _sector_marks(recording: Recording, settings: SynthSettings) -> tuple[float, ...]:
    lines = recording.facts.timing_lines
    name = recording.facts.circuit.name.lower()
    shares: tuple[float, ...] = tuple(1.0 / lines for _ in range(lines))
    for key, known in settings.sector_shares.items():
        if key in name and len(known) == lines:
            shares = known
    marks: list[float] = []
    acc = 0.0
    for share in shares[:-1]:
        acc += share
        marks.append(acc)
    return tuple(marks)


# -- root finding -------------------------------------------------------------


def _root(
    f: Callable[[float], float],
    guess: float,
    step: float,
    floor: float,
    tol: float,
    xtol: float,
    early: float = 0.0,
    slope: float = 0.0,
) -> tuple[float, float]:
    """The x >= ``floor`` where the increasing ``f`` crosses 0, and f there.

    Any x with ``-early - tol <= f(x) <= tol`` will do.

    Brackets the root from ``guess`` in steps that double, then runs
    Illinois false position with a bisection step whenever the bracket fails
    to halve: the estimates are piecewise linear, so it takes a handful of
    evaluations. Where ``f`` jumps over 0 it returns the last x below the
    jump (f < 0); when even ``floor`` is too late it returns ``floor``.
    """
    x = max(guess, floor)
    fx = f(x)
    if -early - tol <= fx <= tol:
        return x, fx
    if slope > 0:
        # A Newton step on the expected slope, a little long, to bracket at once.
        step = max(step, 1.2 * abs(fx) / slope)
    if fx < 0:
        lo, flo = x, fx
        hi = x + step
        fhi = f(hi)
        while fhi < 0:
            lo, flo = hi, fhi
            step *= 2
            hi = lo + step
            fhi = f(hi)
            if step > 1e9:
                return hi, fhi
    else:
        hi, fhi = x, fx
        lo = max(floor, x - step)
        flo = f(lo)
        while flo > 0:
            if lo <= floor:
                return lo, flo
            hi, fhi = lo, flo
            step *= 2
            lo = max(floor, hi - step)
            flo = f(lo)
    if -early - tol <= flo <= tol:
        return lo, flo
    if abs(fhi) <= tol:
        return hi, fhi
    side = 0
    width = 2 * (hi - lo)
    for _ in range(100):
        # Bisect when the last step did not halve the bracket (a jump, or a kink).
        halved = hi - lo <= 0.5 * width
        x = (lo * fhi - hi * flo) / (fhi - flo) if halved else 0.5 * (lo + hi)
        width = hi - lo
        fx = f(x)
        if -early - tol <= fx <= tol:
            return x, fx
        if fx < 0:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
        if hi - lo <= xtol:
            break
    return lo, f(lo)


# -- one car's plan ---------------------------------------------------------------


def _est(
    car: Car, schedule: Schedule, m: float, p: Progress | None = None, bunch: bool = True
) -> float:
    p = p if p is not None else start(car.plan)
    return estimate(Walk(plan=car.plan, schedule=schedule, m=m, bunch=bunch), p, car.target.laps)


def _solve(
    car: Car,
    schedule: Schedule,
    p: Progress,
    tol: float,
    guess: float,
    bunch: bool = True,
    early: float = 0.0,
) -> tuple[float, float]:
    """The pace multiplier that brings the car to its last crossing at its target time.

    Returns it and how late (> 0) or early (< 0) the car then is. Where the
    estimate jumps (a car caught by a yellow just ahead of or just behind the
    safety car) the car comes out early and loses the surplus later.
    """
    tau = car.target.tau
    xtol = 3e-4 if early else 1e-6
    return _root(
        lambda m: _est(car, schedule, m, p, bunch) - tau,
        guess,
        0.002,
        _m_floor(car),
        tol,
        xtol,
        early,
        # Time at green pace is most of what is left: the slope of the estimate.
        slope=0.6 * max(tau - p.t, 1.0),
    )


def _m_floor(car: Car) -> float:
    """Lowest pace multiplier that keeps every green lap at or above the floor."""
    return FLOOR / car.pace.min_factor()


def _stops_ahead(car: Car, schedule: Schedule, m: float, p: Progress, bunch: bool) -> list[Stop]:
    """The stops the car makes from ``p`` on at pace ``m``."""
    walk = Walk(plan=car.plan, schedule=schedule, m=m, bunch=bunch, keep_stops=True)
    advance(walk, p.copy(), d_stop=float(car.target.laps))
    return walk.stops


def _add_time(
    car: Car,
    schedule: Schedule,
    p: Progress,
    m: float,
    pits: PitSettings,
    stop: Stop | None = None,
    bunch: bool = True,
) -> bool:
    """Lose the car's surplus at pace ``m`` standing in a stop ahead; False if there is none.

    The stop is one the car makes anyway (it becomes a repair), or an extra
    one as far from the others as the laps left allow.
    """
    laps = car.target.laps
    fixed = car.plan.rule.fixed
    if stop is None:
        planned = [s for s in _stops_ahead(car, schedule, m, p, bunch) if p.laps + 1 < s.lap < laps]
        if planned:
            stop = planned[len(planned) // 2]
        else:
            options = range(p.laps + 2, laps)
            if not options:
                return False
            taken = [s.lap for s in _stops_ahead(car, schedule, m, p, bunch)] + [p.laps]
            lap = max(options, key=lambda k: min(abs(k - s) for s in taken))
            stop = Stop(
                lap=lap, service_ms=sum(pits.stationary_s) * 500, lane_ms=sum(pits.lane_s) * 500
            )
        fixed[stop.lap] = stop
    # One estimate: the surplus at this pace is the time to stand; the pace
    # solved afterwards takes up what the yellows make of it.
    early = car.target.tau - _est(car, schedule, m, p, bunch)
    stop.extra_ms += max(0.0, early)
    stop.reason = stop.reason or "repairs"
    return True


# -- the race ---------------------------------------------------------------------


class _Infeasible(SynthesisError):
    """A car cannot reach its recorded laps in this layout of the race."""

    def __init__(self, message: str, car: str) -> None:
        super().__init__(message)
        self.car = car


def _feasible(
    recording: Recording,
    race: str,
    seed: int,
    settings: SynthSettings,
    m_w: float,
    only: set[str],
) -> bool:
    try:
        _layout(recording, race, seed, settings, m_w, only=only)
    except _Infeasible:
        return False
    return True


@dataclass
class _Layout:
    cars: dict[str, Car]
    winner: Car
    schedule: Schedule
    end_ms: float
    chequered: float
    winner_pace: float


def synthesise(
    recording: Recording,
    *,
    seed: int = 0,
    race: str | None = None,
    settings: SynthSettings | None = None,
) -> Synthesis:
    """Events of a results-only race recording, reproducing its classification.

    The winner's green pace is drawn at random; when some car's recorded
    laps need the winner to have lapped slower than that (its reference lap
    says it is too slow for them), the slowest such pace is found by
    bisection: a slower winner leaves less to make up between yellows.
    """
    settings = settings or SynthSettings()
    race = race or recording.facts.id
    m_w = _rng(seed, race, "winner").uniform(*settings.natural_pace)
    tight: set[str] = set()
    while True:
        try:
            layout = _layout(recording, race, seed, settings, m_w)
            break
        except _Infeasible as exc:
            if exc.car in tight:
                raise SynthesisError(str(exc)) from exc
            # Only the cars found too slow so far need solving while searching.
            tight.add(exc.car)
            lo, hi = m_w, settings.winner_pace_max
            if not _feasible(recording, race, seed, settings, hi, tight):
                raise SynthesisError(str(exc)) from exc
            for _ in range(settings.winner_pace_steps):
                mid = 0.5 * (lo + hi)
                if _feasible(recording, race, seed, settings, mid, tight):
                    hi = mid
                else:
                    lo = mid
            m_w = hi
    tol = settings.solve_tol_ms
    for car in layout.cars.values():
        if car is not layout.winner:
            _run(car, layout.schedule, settings, tol, bunch=True)
    _retire_times(layout, seed, race)
    notes = read_notes(recording)
    events = _events(
        recording, race, layout.cars, layout.schedule, layout.chequered, seed, settings, notes
    )
    return Synthesis(
        events=events,
        end_ms=layout.end_ms,
        chequered_ms=layout.chequered,
        schedule=layout.schedule,
        cars=layout.cars,
        notes=notes,
    )


def _make_cars(
    recording: Recording, race: str, seed: int, settings: SynthSettings, notes: Reading
) -> dict[str, Car]:
    all_targets = targets(recording)
    if not all_targets:
        raise SynthesisError(f"{race}: no car started")
    refs = reference_laps(recording, settings.pace)
    marks = _sector_marks(recording, settings)
    grid = list(recording.grid) or [e.number for e in recording.entries]
    slot = {n: i for i, n in enumerate(grid)}
    qual_driver = {q.number: q.driver for q in recording.qualifying if q.driver}
    pole = min((refs[t.number] for t in all_targets if t.number in refs), default=90_000)
    unscheduled = {i.car: i for i in notes.of("unscheduled_stop")}
    damaged = {i.car for i in notes.of("damage")}
    cars: dict[str, Car] = {}
    for t in all_targets:
        entry = recording.entry(t.number)
        drivers = [d.name for d in entry.drivers] if entry and entry.drivers else [f"#{t.number}"]
        stop_note = unscheduled.get(t.number)
        if stop_note is not None and stop_note.driver_change and len(drivers) == 1:
            # The note says the driver changed; the recording names one driver.
            drivers.append(CO_DRIVER.format(car=t.number))
        fastest = 0
        if qual_driver.get(t.number) in drivers:
            fastest = drivers.index(qual_driver[t.number])
        ref = float(refs.get(t.number, pole * 1.1))
        pace = draw_pace(
            ref,
            t.cls,
            len(drivers),
            fastest,
            t.laps + 3,
            _rng(seed, race, t.number, "pace"),
            settings.pace,
        )
        if t.number in damaged and t.laps > 2:
            pace = _damaged(pace, t.laps, _rng(seed, race, t.number, "damage"), settings)
        car_seed = f"{seed}:{race}:{t.number}"
        rule = StopRule(
            laps=t.laps if t.finisher else t.laps + 1,
            window=window_laps(t.cls, ref * (1 + pace.base), settings.pits),
            n_drivers=len(drivers),
            seed=car_seed,
            settings=settings.pits,
        )
        plan = CarPlan(
            number=t.number,
            pace=pace,
            start_ms=slot.get(t.number, len(grid)) * settings.grid_gap_s * 1000,
            rule=rule,
            first_driver=random.Random(f"{car_seed}:first").randrange(len(drivers)),
            catch_factor=settings.cautions.catch_factor,
            sector_marks=marks,
        )
        if stop_note is not None and t.laps >= 4:
            _unscheduled_stop(
                plan, t, stop_note, _rng(seed, race, t.number, "unscheduled"), settings
            )
        cars[t.number] = Car(target=t, drivers=drivers, plan=plan)
    return cars


def _damaged(pace: CarPace, laps: int, rng: random.Random, settings: SynthSettings) -> CarPace:
    """The pace of a car damaged on the opening lap: slower laps from lap 2, fading out."""
    n = min(rng.randint(*settings.damage_laps), laps - 1)
    loss = rng.uniform(*settings.damage_loss)
    noise = list(pace.noise)
    for k in range(n):
        lap = 2 + k
        if lap < len(noise):
            noise[lap] += loss * (1.0 - k / n)
    return dataclasses.replace(pace, noise=tuple(noise))


def _unscheduled_stop(
    plan: CarPlan, t: Target, note: Incident, rng: random.Random, settings: SynthSettings
) -> None:
    """The unscheduled stop a note tells of, on a lap of the car's race drawn at random."""
    lo = max(2, int(t.laps * settings.unscheduled_at[0]))
    hi = max(lo, min(t.laps - 2, int(t.laps * settings.unscheduled_at[1])))
    lap = rng.randint(lo, hi)
    pits = settings.pits
    cause = f"unscheduled: {note.cause}" if note.cause else "unscheduled"
    plan.rule.fixed[lap] = Stop(
        lap=lap,
        service_ms=rng.uniform(*pits.stationary_s) * 1000,
        lane_ms=rng.uniform(*pits.lane_s) * 1000,
        reason=cause,
        force_change=note.driver_change,
    )


@dataclass
class _Frame:
    """What laying out a race around its winner shares: the cars, the winner and its
    pace, the safety car's lap and the winner's own draws."""

    recording: Recording
    race: str
    seed: int
    settings: SynthSettings
    notes: Reading
    cars: dict[str, Car]
    winner: Car
    m_w: float
    fcy_ms: float
    wrng: random.Random
    """Draws of the winner's layout, in order: each interruption's lap share, then its
    last crossing past the time."""

    def schedule(self, periods: list[Neutral]) -> Schedule:
        return Schedule(periods=periods, fcy_ms=self.fcy_ms, settings=self.settings.cautions)


def _layout(
    recording: Recording,
    race: str,
    seed: int,
    settings: SynthSettings,
    m_w: float,
    only: set[str] | None = None,
) -> _Layout:
    """Everything but the drive: the schedule, the targets, each car's plan and pace.

    Raises ``_Infeasible`` when a car cannot make its recorded laps. With
    ``only``, the pace of the other cars (but the winner) is left unsolved.
    """
    notes = read_notes(recording)
    cars = _make_cars(recording, race, seed, settings, notes)
    finishers = [c for c in cars.values() if c.target.finisher]
    if not finishers:
        raise SynthesisError(f"{race}: no car was running at the finish")
    winner = finishers[0]
    pole = min(c.pace.reference_ms for c in cars.values())
    frame = _Frame(
        recording=recording,
        race=race,
        seed=seed,
        settings=settings,
        notes=notes,
        cars=cars,
        winner=winner,
        m_w=m_w,
        fcy_ms=pole * settings.cautions.fcy_lap_factor,
        wrng=_rng(seed, race, "winner", "layout"),
    )
    schedule, end_ms, tau_w = _race_schedule(frame)
    winner.target.tau = tau_w
    winner.target.m_guess = m_w
    tol = settings.solve_tol_ms

    # The winner first: the safety car picks it up at every yellow.
    _prepare(winner, schedule, settings, seed, race, tol)
    chequered = _drive_winner(winner, schedule, settings)

    natural: dict[str, float] = {}
    _finish_targets(frame, finishers, schedule, chequered, natural)
    _retire_targets(frame, schedule, chequered, natural)
    _aim_guesses(cars, natural)

    for car in cars.values():
        if car is not winner and (only is None or car.target.number in only):
            _prepare(car, schedule, settings, seed, race, tol)
    return _Layout(
        cars=cars,
        winner=winner,
        schedule=schedule,
        end_ms=end_ms,
        chequered=chequered,
        winner_pace=m_w,
    )


def _race_schedule(frame: _Frame) -> tuple[Schedule, float, float]:
    """The neutralisations, when time runs out and the winner's last crossing.

    The recorded interruptions come first, then the crashes the notes time,
    then as many yellows as the winner's laps need to fill the race (a race
    whose length the result does not pin down gets a natural share of yellow
    and ends where the winner does).
    """
    settings = frame.settings
    cs = settings.cautions
    winner, m_w = frame.winner, frame.m_w
    fixed, red_total = _interruptions(frame)
    schedule = frame.schedule(fixed)
    t_fixed = _est(winner, schedule, m_w)

    # When time runs out, and the yellows that make the winner's laps fill the race.
    ref_w = winner.pace.reference_ms
    g_w = ref_w * (1 + winner.pace.base)
    loss_per_ms = max(0.05, 1.0 - m_w * g_w / frame.fcy_ms)
    duration_s = frame.recording.facts.length.duration_s
    if duration_s is not None:
        end_ms = _time_up(duration_s * 1000.0, fixed, red_total, t_fixed, settings)
        tau_w = end_ms + frame.wrng.uniform(*settings.winner_overrun) * FLOOR * ref_w
        crashes = _rng(frame.seed, frame.race, "crashes")
        if _crash_yellows(frame.notes, frame.cars, fixed, end_ms, crashes, cs):
            schedule = frame.schedule(sorted(fixed, key=lambda p: p.start))
            fixed = list(schedule.periods)
            t_fixed = _est(winner, schedule, m_w)
        yellow = (tau_w - t_fixed) / loss_per_ms
    else:
        yellow = settings.natural_yellow_share * t_fixed / (1 - settings.natural_yellow_share)
        end_ms = 0.0
        tau_w = 0.0
    horizon = end_ms if end_ms else t_fixed + yellow * loss_per_ms
    placed = place_yellows(yellow, horizon, fixed, _rng(frame.seed, frame.race, "yellows"), cs)
    schedule = frame.schedule(sorted([*fixed, *placed], key=lambda p: p.start))
    if end_ms and placed:
        _fit_yellows(frame, schedule, fixed, placed, horizon, tau_w)
    if not end_ms:
        tau_w = _est(winner, schedule, m_w)
        end_ms = tau_w
    return schedule, end_ms, tau_w


def _interruptions(frame: _Frame) -> tuple[list[Neutral], float]:
    """The interruptions the race facts record, placed at the winner's pace, and the
    total red-flag time.

    Each starts partway round the lap the facts give (a random share of it);
    a red flag is followed by a restart behind the safety car, and one on the
    opening lap names the cars the result has out there.
    """
    cs = frame.settings.cautions
    plan = frame.winner.plan
    fixed: list[Neutral] = []
    red_total = 0.0
    for stop_ in sorted(frame.recording.facts.interruptions, key=lambda i: i.lap):
        frac = frame.wrng.uniform(0.15, 0.5)
        p = start(plan)
        probe = frame.schedule(list(fixed))
        advance(Walk(plan=plan, schedule=probe, m=frame.m_w), p, d_stop=stop_.lap + frac)
        begin = p.t
        end = begin + stop_.duration_s * 1000
        if stop_.kind == "red_flag":
            fixed.append(
                Neutral(
                    "red",
                    begin,
                    end,
                    bunch=False,
                    reason=stop_.reason,
                    cars=_out_at(frame.cars, stop_.lap) if stop_.lap == 0 else (),
                    provenance=stop_.provenance,
                )
            )
            fixed.append(
                Neutral(
                    "fcy",
                    end,
                    end + cs.restart_laps * frame.fcy_ms,
                    bunch=False,
                    reason="restart behind the safety car",
                    provenance=stop_.provenance,
                )
            )
            red_total += stop_.duration_s * 1000
        else:
            fixed.append(
                Neutral("fcy", begin, end, reason=stop_.reason, provenance=stop_.provenance)
            )
    return fixed, red_total


def _time_up(
    scheduled: float,
    fixed: list[Neutral],
    red_total: float,
    t_fixed: float,
    settings: SynthSettings,
) -> float:
    """When time runs out: the scheduled length, unless the winner could not have made
    its laps in it; then the clock stood still for (part of) the red flag."""
    if t_fixed > scheduled and red_total > 0:
        # The result shows the clock stood still for part of the red flag.
        racing = t_fixed - _red_span(fixed)
        return min(scheduled + red_total, t_fixed + settings.natural_yellow_share * racing)
    return scheduled


def _fit_yellows(
    frame: _Frame,
    schedule: Schedule,
    fixed: list[Neutral],
    placed: list[Neutral],
    horizon: float,
    tau_w: float,
) -> None:
    """Stretch or shrink the placed yellows so that the winner, at its own pace, takes
    the flag just when it should.

    The yellow time was estimated knowing nothing of stops made cheaply under
    yellow, nor of the spread of lap times; each yellow keeps within its room.
    """
    room = _yellow_room(placed, fixed, horizon, frame.settings.cautions)

    def late(k: float) -> float:
        schedule.periods = _scaled(fixed, placed, k, room)
        return _est(frame.winner, schedule, frame.m_w, bunch=False) - tau_w

    k, _ = _root(late, 1.0, 0.1, 0.0, frame.settings.solve_tol_ms, 1e-4, early=1000.0)
    schedule.periods = _scaled(fixed, placed, k, room)


def _drive_winner(winner: Car, schedule: Schedule, settings: SynthSettings) -> float:
    """Drive the winner and return when it takes the chequered flag.

    The safety car picks the winner up at every bunching yellow, so its place
    on the track is fixed as each such yellow starts.
    """

    def place_safety_car(idx: int, p: Progress) -> None:
        period = schedule.periods[idx]
        if period.kind == "fcy" and period.bunch:
            schedule.sc[idx] = p.d + 0.002

    _run(winner, schedule, settings, settings.solve_tol_ms, bunch=False, on_start=place_safety_car)
    assert winner.progress is not None
    return winner.progress.t


def _finish_targets(
    frame: _Frame,
    finishers: list[Car],
    schedule: Schedule,
    chequered: float,
    natural: dict[str, float],
) -> None:
    """Every other running car's last crossing: its recorded gap to the winner, or where
    its own pace brings it (noted in ``natural``).

    Cars on one lap keep their classification order, at least the finishing gap
    apart, within the window after the flag.
    """
    settings, winner, race = frame.settings, frame.winner, frame.race
    gap = settings.finish_gap_ms
    groups: dict[int, list[Car]] = {}
    for car in finishers:
        groups.setdefault(car.target.laps, []).append(car)
    for group in groups.values():
        rest = [c for c in group if c is not winner]
        if not rest:
            continue
        window_ms = settings.finish_window * FLOOR * min(c.pace.reference_ms for c in group)
        if window_ms <= gap * (len(rest) + 1):
            raise SynthesisError(f"{race}: too many cars on lap {group[0].target.laps} to finish")
        for car in rest:
            known = car.target.gap_ms if winner in group else None
            if known is not None:
                car.target.tau = chequered + known
                continue
            m = _rng(frame.seed, race, car.target.number, "finish").uniform(*settings.natural_pace)
            car.target.tau = _est(car, schedule, m)
            car.target.m_guess = m
            natural[car.target.number] = car.target.tau
        first = chequered + gap
        last = chequered + window_ms
        for i, car in enumerate(rest):
            car.target.tau = min(max(car.target.tau, first + i * gap), last - (len(rest) - i) * gap)
        for above, car in itertools.pairwise(rest):
            car.target.tau = max(car.target.tau, above.target.tau + gap)


def _retire_targets(
    frame: _Frame, schedule: Schedule, chequered: float, natural: dict[str, float]
) -> None:
    """Each retired car's last crossing: where its own pace brings it (noted in
    ``natural``), at least a margin before the flag, and just before the crash the
    notes time when they do; whether it retires in the pit lane."""
    settings = frame.settings
    retired = [c for c in frame.cars.values() if not c.target.finisher]
    latest: dict[str, float] = {}
    for car in retired:
        rrng = _rng(frame.seed, frame.race, car.target.number, "retire")
        car.retire_in_pits = rrng.random() < settings.retire_in_pits_p and car.target.laps > 0
        if car.target.laps == 0:
            continue
        m = rrng.uniform(*settings.natural_pace)
        latest[car.target.number] = (
            chequered - settings.retire_margin_laps * car.pace.reference_ms * 1.1
        )
        if car.crash is not None:
            # Out in the crash the notes time: its last crossing comes just before it.
            car.retire_in_pits = False
            before = rrng.uniform(*settings.crash_before) * car.pace.reference_ms
            latest[car.target.number] = min(latest[car.target.number], car.crash_ms - before)
        natural[car.target.number] = _est(car, schedule, m)
        car.target.tau = min(natural[car.target.number], latest[car.target.number])
        if car.crash is not None:
            car.target.tau = latest[car.target.number]
        car.target.m_guess = m
    _keep_retired_order(retired, latest, settings.finish_gap_ms)


def _keep_retired_order(retired: list[Car], latest: dict[str, float], gap: float) -> None:
    """Cars out on the same lap keep their recorded order: each after the one above,
    none past its latest crossing."""
    by_laps: dict[int, list[Car]] = {}
    for car in retired:
        if car.target.laps > 0:
            by_laps.setdefault(car.target.laps, []).append(car)
    for group in by_laps.values():
        for above, car in itertools.pairwise(group):
            car.target.tau = max(car.target.tau, above.target.tau + gap)
        bound = float("inf")
        for car in reversed(group):
            car.target.tau = min(car.target.tau, latest[car.target.number], bound - gap)
            bound = car.target.tau


def _aim_guesses(cars: dict[str, Car], natural: dict[str, float]) -> None:
    """Where a target moved off a car's natural time, start the solver from a pace
    scaled to match (green running is most of the time)."""
    for number, t_nat in natural.items():
        target = cars[number].target
        target.m_guess *= 1.0 + (target.tau - t_nat) / (0.6 * max(target.tau, 1.0))


def _out_at(cars: dict[str, Car], lap: int) -> tuple[str, ...]:
    """The cars the result has out on ``lap`` (laps completed), in its order."""
    return tuple(
        c.target.number for c in cars.values() if not c.target.finisher and c.target.laps == lap
    )


def _crash_yellows(
    notes: Reading,
    cars: dict[str, Car],
    fixed: list[Neutral],
    end_ms: float,
    rng: random.Random,
    cs: CautionSettings,
) -> bool:
    """Add to ``fixed`` the yellow of each crash the notes time ("with 19 minutes left").

    The car stops there; the yellow starts as it does. A crash that falls inside
    another neutralisation (or a minute from one) stops the car with no yellow
    of its own. Returns whether a yellow was added.
    """
    added = False
    for incident in notes.of("crash"):
        car = cars.get(incident.car)
        if car is None or car.target.finisher or incident.minutes_left is None:
            continue
        start_ms = end_ms - incident.minutes_left * 60_000
        if start_ms <= 0 or start_ms >= end_ms:
            continue
        car.crash = incident
        car.crash_ms = start_ms
        length = rng.uniform(*cs.incident_yellow_s) * 1000
        end = max(
            start_ms + 60_000, min(start_ms + length, end_ms - cs.incident_green_after_s * 1000)
        )
        if any(p.start - 60_000 < end and start_ms < p.end + 60_000 for p in fixed):
            continue  # the race is neutralised already: the car stops, no new yellow
        fixed.append(
            Neutral(
                "fcy",
                start_ms,
                end,
                reason=_crash_reason(incident),
                cars=(incident.car,),
                provenance=incident.provenance,
            )
        )
        added = True
    return added


def _crash_reason(incident: Incident, *, short: bool = False) -> str:
    """The note's words without the time: "The #02 ... car hit the chicane tyre barrier";
    ``short``: from the verb on ("hit the chicane tyre barrier")."""
    text = re.sub(
        r"\s*,?\s*with \d+(?:\.\d+)? minutes? (?:left|to go|remaining)", "", incident.text
    )
    text = text.strip().rstrip(".")
    if short:
        # "The #02 Extreme Speed Motorsports car hit ...": what follows "car" (or
        # the car's number) from the first word in lower case on.
        after = re.split(rf"#{re.escape(incident.car)}\b", text, maxsplit=1)[-1]
        after = re.split(r"\b(?:car|entry)\b", after, maxsplit=1)[-1]
        m = re.search(r"\b[a-z].*$", after)
        if m:
            text = m.group(0)
    return text


def _yellow_room(
    placed: list[Neutral], fixed: list[Neutral], horizon: float, cs: CautionSettings
) -> list[float]:
    """How far each placed yellow may reach: short of the next period, or of the final green."""
    last_end = horizon - max(cs.final_green_min_s * 1000, cs.final_green_share * horizon)
    starts = sorted(p.start for p in [*placed, *fixed])
    room: list[float] = []
    for p in placed:
        later = [s for s in starts if s > p.start]
        limit = (later[0] - cs.min_green_s * 500) if later else last_end
        room.append(max(p.end, min(limit, max(last_end, p.end))))
    return room


def _scaled(
    fixed: list[Neutral], placed: list[Neutral], k: float, room: list[float]
) -> list[Neutral]:
    """The periods with each placed yellow's length times ``k`` (within its room)."""
    out = list(fixed)
    for p, limit in zip(placed, room, strict=True):
        end = min(p.start + max(60_000.0, k * (p.end - p.start)), limit)
        out.append(Neutral(p.kind, p.start, end, bunch=p.bunch, reason=p.reason))
    return sorted(out, key=lambda p: p.start)


def _retire_times(layout: _Layout, seed: int, race: str) -> None:
    """When each retired car is given up: cars out on the same lap in their recorded order."""
    previous: dict[int, float] = {}
    for car in layout.cars.values():
        if car.target.finisher or car.progress is None:
            continue
        when = car.progress.t
        if car.crash is not None:
            when = max(when, car.crash_ms)
        if car.retire_in_pits:
            when += _rng(seed, race, car.target.number, "garage-time").uniform(30_000, 240_000)
            when = min(when, layout.chequered - 1000.0)
        when = max(when, car.progress.t)
        if car.target.laps == 0:
            # Out on the opening lap: reported in the order of the result.
            when = max(when, previous.get(0, 0.0) + 300.0)
            previous[0] = when
        car.retire_ms = when


def _prepare(
    car: Car,
    schedule: Schedule,
    settings: SynthSettings,
    seed: int,
    race: str,
    tol: float,
) -> None:
    """The car's starting pace; a repair stop where its laps say it lost time."""
    t = car.target
    if t.laps == 0:
        car.d_stop = _rng(seed, race, t.number, "crash").uniform(0.02, 0.1)
        car.m_history.append(1.0)
        return
    m0, late = _solve(car, schedule, start(car.plan), tol, t.m_guess, early=EARLY_MS)
    if late > tol:
        m0 = _tighten(car, schedule, tol, race)
    if m0 > settings.pace_cap:
        grng = _rng(seed, race, t.number, "garage")
        m_g = grng.uniform(*settings.garage_pace)
        repair = _repair_stop(car, schedule, m_g, grng, settings.pits)
        _add_time(car, schedule, start(car.plan), m_g, settings.pits, repair)
        for _ in range(4):
            m0, late = _solve(car, schedule, start(car.plan), tol, m_g, early=EARLY_MS)
            if late <= tol or repair.extra_ms <= 0:
                break
            # Too long a repair: the pace jumped (a stop now under a yellow, or not)
            # and even the floor brings the car late. Stand that much less, and a
            # second more, so that the car is early rather than late.
            repair.extra_ms = max(0.0, repair.extra_ms - late - 1000.0)
    car.m_history.append(m0)
    if t.finisher:
        car.d_stop = float(t.laps)
    elif car.retire_in_pits:
        lap = t.laps + 1
        car.plan.rule.fixed[lap] = Stop(
            lap=lap, service_ms=3_600_000.0, lane_ms=24_000.0, reason="retired"
        )
        car.d_stop = lap - LANE_IN + 1e-6
    elif car.crash is not None:
        # Partway round the next lap when the crash comes: short of it, at green pace.
        lap_ms = m0 * car.pace.reference_ms * (1 + car.pace.base)
        car.d_stop = t.laps + min(0.9, max(0.02, 0.6 * (car.crash_ms - t.tau) / lap_ms))
    else:
        car.d_stop = t.laps + _rng(seed, race, t.number, "where").uniform(0.1, 0.9)


def _tighten(car: Car, schedule: Schedule, tol: float, race: str) -> float:
    """Make a car that its reference lap calls too slow for its laps drive closer to it.

    Scales down everything that makes its green laps slower than the
    reference (traffic, the slower drivers, lap-to-lap spread) just as much
    as its result needs; the floor stays where it is.
    """
    full = car.plan.pace
    t = car.target

    def late_at(scale: float) -> float:
        """How late the car is at that scale, lapping as quick as the floor lets it."""
        car.plan.pace = dataclasses.replace(full, scale=scale)
        return _est(car, schedule, _m_floor(car)) - t.tau

    if late_at(0.0) > tol:
        raise _Infeasible(
            f"{race}: car #{t.number} cannot complete {t.laps} laps by "
            f"{t.tau / 1000:.0f} s without lapping quicker than {FLOOR:.3f} of its reference lap",
            t.number,
        )
    lo, hi = 0.0, 1.0
    for _ in range(6):
        mid = 0.5 * (lo + hi)
        if late_at(mid) <= tol:
            lo = mid
        else:
            hi = mid
    late_at(lo)
    m, _ = _solve(car, schedule, start(car.plan), tol, 1.0, early=EARLY_MS)
    return m


def _run(
    car: Car,
    schedule: Schedule,
    settings: SynthSettings,
    tol: float,
    *,
    bunch: bool,
    on_start: Callable[[int, Progress], None] | None = None,
) -> None:
    """Drive the car to its end; once the last neutralisation is over, pick the pace
    that brings it to its last crossing exactly on time."""
    car.walk = walk = Walk(
        plan=car.plan, schedule=schedule, m=car.m_history[-1], bunch=bunch, record=car.record
    )
    car.progress = p = start(car.plan)
    periods = schedule.periods
    for idx, period in enumerate(periods):
        if p.d >= car.d_stop:
            break
        advance(walk, p, t_stop=period.start, d_stop=car.d_stop)
        if on_start is not None and p.d < car.d_stop:
            on_start(idx, p)
        advance(walk, p, t_stop=period.end, d_stop=car.d_stop)
        if any(q.start >= period.end for q in periods[idx + 1 :]):
            continue  # the estimate is the drive itself until the last neutralisation
        if p.d >= car.d_stop or car.target.laps == 0 or p.laps >= car.target.laps:
            continue
        m, _ = _solve(car, schedule, p, tol, walk.m, bunch)
        if m > settings.pace_cap:
            fixed = car.plan.rule.fixed
            saved = {lap: (stop, stop.extra_ms, stop.reason) for lap, stop in fixed.items()}
            if _add_time(car, schedule, p, settings.pace_cap, settings.pits, None, bunch):
                m_stop, late = _solve(car, schedule, p, tol, settings.pace_cap, bunch)
                if late <= tol:
                    m = m_stop
                else:
                    # A stop costs more than the car has to lose this late in the race
                    # (a late yellow closed the field up): it laps slower instead.
                    fixed.clear()
                    for lap, (stop, extra_ms, reason) in saved.items():
                        stop.extra_ms, stop.reason = extra_ms, reason
                        fixed[lap] = stop
        walk.m = m
        car.m_history.append(m)
    if p.d < car.d_stop:
        advance(walk, p, d_stop=car.d_stop)


def _red_span(periods: list[Neutral]) -> float:
    return sum(p.end - p.start for p in periods)


def _repair_stop(
    car: Car, schedule: Schedule, m: float, rng: random.Random, pits: PitSettings
) -> Stop:
    """The stop where the car loses its deficit: its routine stop nearest a random lap,
    or one of its own."""
    laps = car.target.laps
    lo, hi = max(2, int(laps * 0.15)), max(3, int(laps * 0.85))
    lap = min(rng.randint(lo, max(lo, hi)), max(1, laps - 1))
    planned = [s for s in _stops_ahead(car, schedule, m, start(car.plan), True) if s.lap < laps]
    near = sorted((abs(s.lap - lap), s.lap, s) for s in planned if abs(s.lap - lap) <= 6)
    if near:
        stop = near[0][2]
    else:
        stop = Stop(
            lap=lap,
            service_ms=rng.uniform(*pits.stationary_s) * 1000,
            lane_ms=rng.uniform(*pits.lane_s) * 1000,
        )
    stop.reason = stop.reason or "repairs"
    car.plan.rule.fixed[stop.lap] = stop
    return stop


# -- events -------------------------------------------------------------------------


def _deep_in_yellow(schedule: Schedule, t: float, margin: float) -> bool:
    return any(p.kind == "fcy" and p.start + margin < t < p.end - margin for p in schedule.periods)


def _flag_at(schedule: Schedule, t_ms: int, chequered: float) -> FlagState:
    """The flag at the line at ``t_ms``, as the flag events (in whole ms) give it."""
    if t_ms >= round(chequered):
        return "chequered"
    for period in schedule.periods:
        if round(period.start) <= t_ms < round(period.end):
            return "red" if period.kind == "red" else "fcy"
        if round(period.start) > t_ms:
            break
    return "green"


def _events(
    recording: Recording,
    race: str,
    cars: dict[str, Car],
    schedule: Schedule,
    chequered: float,
    seed: int,
    settings: SynthSettings,
    notes: Reading,
) -> list[Event]:
    lines = recording.facts.timing_lines
    drafts: list[Event] = []
    story = _Story.of(recording, race, cars, notes)
    say = story.say
    drafts.append(Flag(race=race, seq=1, t_ms=0, flag="green", reason="start"))
    drafts.append(say(0, "flag", "Green flag: the race is started", (), story.result_provenance))
    for period in schedule.periods:
        start, end = round(period.start), round(period.end)
        drafts.append(Flag(race=race, seq=1, t_ms=start, flag=period.kind, reason=period.reason))
        drafts.append(story.flag_message(period, start))
        following = [p for p in schedule.periods if p.start == period.end]
        if not following:
            drafts.append(Flag(race=race, seq=1, t_ms=end, flag="green", reason="restart"))
            drafts.append(say(end, "flag", "Green flag: racing resumes", (), period.provenance))
    drafts.append(Flag(race=race, seq=1, t_ms=round(chequered), flag="chequered"))
    winner = story.winner
    drafts.append(
        say(
            round(chequered),
            "flag",
            f"Chequered flag: #{winner} wins" if winner else "Chequered flag",
            (winner,) if winner else (),
            story.result_provenance,
        )
    )
    last = round(chequered)
    for car in cars.values():
        car_events = _car_events(car, race, lines, schedule, chequered, seed, settings, story)
        if car_events:
            last = max(last, max(e.t_ms for e in car_events))
        drafts.extend(car_events)
    drafts.extend(story.incident_messages(cars))
    for told in notes.told:
        drafts.append(
            say(0 if told.when == "before" else last, told.category, told.text, told.cars,
                told.provenance)
        )  # fmt: skip
    drafts.insert(0, session_opened(recording, race=race))
    closed = session_closed(recording, race=race, t_ms=last)
    laps_of = {c.target.number: c.target.laps for c in cars.values()}
    rows = [
        replace(r, laps=laps_of[r.car]) if r.laps == 0 and laps_of.get(r.car) else r
        for r in closed.classification
    ]
    drafts.append(replace(closed, classification=rows))
    return assemble(drafts, race=race, lines=lines, session="race", grid=list(recording.grid))


def _car_events(
    car: Car,
    race: str,
    lines: int,
    schedule: Schedule,
    chequered: float,
    seed: int,
    settings: SynthSettings,
    story: _Story,
) -> list[Event]:
    """One car's events: its drive as recorded, then its finish or its retirement."""
    rec = list(car.record)
    rng = _rng(seed, race, car.target.number, "sectors")
    times = _shown_times(car, rec, schedule, settings, rng)
    out = _drive_events(car, race, lines, rec, times, schedule, chequered, story)
    out.extend(_end_events(car, race, story))
    return out


def _shown_times(
    car: Car,
    rec: list[Record],
    schedule: Schedule,
    settings: SynthSettings,
    rng: random.Random,
) -> list[float]:
    """The time shown for each record of the drive.

    Intermediate crossings wander a little within their lap, and so do the
    line crossings behind the safety car, which would otherwise all take the
    same time to the millisecond (display only: the order of the cars and
    every lap that decides the result stay as driven). A crossing never moves
    more than 0.4 of the way to its neighbours.
    """
    times = [r[1] for r in rec]
    margin = settings.yellow_wander_ms * 4
    for i, r in enumerate(rec):
        if r[0] == SECTOR:
            sd = settings.sector_noise * car.pace.reference_ms
        elif r[0] == LINE and _deep_in_yellow(schedule, r[1], margin):
            sd = settings.yellow_wander_ms
        else:
            continue
        prev = times[i - 1] if i > 0 else 0.0
        nxt = times[i + 1] if i + 1 < len(times) else r[1] + 1.0
        t = r[1] + rng.gauss(0.0, sd)
        t = min(max(t, r[1] - 0.4 * (r[1] - prev)), r[1] + 0.4 * (nxt - r[1]))
        times[i] = t
    return times


def _drive_events(
    car: Car,
    race: str,
    lines: int,
    rec: list[Record],
    times: list[float],
    schedule: Schedule,
    chequered: float,
    story: _Story,
) -> list[Event]:
    """The sector, lap and pit events of the drive, at the times shown.

    Sector and lap times are differences of the shown (whole-millisecond)
    crossings, so that they add up to what the clock shows; a lap with fewer
    crossings than the timing lines has its first sectors unknown (``None``).
    """
    number = car.target.number
    stops = car.walk.stops if car.walk is not None else []
    out: list[Event] = []
    lap_start = 0
    last_mark = 0
    sectors: list[int | None] = []
    pit_in_ms = 0
    at_wheel = car.drivers[car.plan.first_driver]
    for (kind, _, lap, extra, driver), t in zip(rec, times, strict=True):
        t_ms = round(t)
        if kind == SECTOR:
            ms = t_ms - last_mark
            sectors.append(ms)
            out.append(
                Sector(
                    race=race,
                    seq=1,
                    t_ms=t_ms,
                    car=number,
                    lap=lap,
                    sector=extra,
                    sector_ms=ms,
                    position=1,
                )
            )
            last_mark = t_ms
        elif kind == LINE:
            sectors.append(t_ms - last_mark)
            while len(sectors) < lines:
                sectors.insert(0, None)
            out.append(
                Lap(
                    race=race,
                    seq=1,
                    t_ms=t_ms,
                    car=number,
                    lap=lap,
                    lap_ms=t_ms - lap_start,
                    sectors_ms=sectors[-lines:],
                    position=1,
                    driver=car.drivers[driver],
                    flag=_flag_at(schedule, t_ms, chequered),
                    in_pit=bool(extra),
                )
            )
            lap_start = last_mark = t_ms
            sectors = []
        elif kind == PIT_IN:
            pit_in_ms = t_ms
            out.append(PitIn(race=race, seq=1, t_ms=t_ms, car=number, lap=lap))
        elif kind == PIT_OUT:
            stop = stops[extra]
            out.extend(_pit_out_events(car, race, stop, lap, pit_in_ms, t_ms, at_wheel, story))
            at_wheel = car.drivers[stop.driver]
    return out


def _pit_out_events(
    car: Car,
    race: str,
    stop: Stop,
    lap: int,
    pit_in_ms: int,
    t_ms: int,
    at_wheel: str,
    story: _Story,
) -> list[Event]:
    """Leaving the pits: the time in the lane and at a standstill, who drives on, and what
    race control says of the stop (``at_wheel``: who drove in)."""
    return [
        PitOut(
            race=race,
            seq=1,
            t_ms=t_ms,
            car=car.target.number,
            lap=lap,
            pit_ms=t_ms - pit_in_ms,
            stationary_ms=round(stop.standing_ms),
            driver=car.drivers[stop.driver],
            driver_change=stop.change,
        ),
        *story.stop_messages(car, stop, pit_in_ms, t_ms, at_wheel),
    ]


def _end_events(car: Car, race: str, story: _Story) -> list[Event]:
    """How the car's race ends: a finish, or a retirement with its reason and message.

    A crash the notes tell of names the reason; otherwise an opening-lap
    retirement takes the opening crash's words, and any other is told by
    where the car stopped.
    """
    number = car.target.number
    if car.target.finisher:
        t_end = car.progress.t if car.progress is not None else 0.0
        return [Finish(race=race, seq=1, t_ms=round(t_end), car=number, lap=car.target.laps)]
    reason = "retired in the pit lane" if car.retire_in_pits else "stopped on track"
    if car.target.laps == 0:
        reason = story.opening_crash or "accident on the opening lap"
    if car.crash is not None:
        reason = _crash_reason(car.crash, short=True)
    return [
        Retire(
            race=race,
            seq=1,
            t_ms=round(car.retire_ms),
            car=number,
            lap=car.target.laps,
            reason=reason,
        ),
        story.retirement(car, round(car.retire_ms), reason),
    ]


_MESSAGE_PROVENANCE: dict[str, MessageProvenance] = {
    "article": "article",
    "report": "report",
    "inferred": "inferred",
    "timing": "timing",
}


def _provenance(value: str) -> MessageProvenance:
    """A recording's provenance as a message's: a fact no source gives is ``inferred``."""
    return _MESSAGE_PROVENANCE.get(value, "inferred")


@dataclass
class _Story:
    """What the race-control feed says of a synthesised race, and where each fact comes from."""

    race: str
    notes: Reading
    winner: str | None
    result_provenance: MessageProvenance
    row_provenance: dict[str, MessageProvenance]
    opening_crash: str | None
    """Why the red flag on the opening lap came out, when the facts say."""
    crash_cars: tuple[str, ...]
    """The cars the opening-lap crash note names."""

    @classmethod
    def of(cls, recording: Recording, race: str, cars: dict[str, Car], notes: Reading) -> _Story:
        rows = sorted(recording.classification, key=lambda r: r.position)
        winner = next((r for r in rows if r.number is not None and r.number in cars), None)
        opening = next(
            (
                i.reason
                for i in recording.facts.interruptions
                if i.kind == "red_flag" and i.lap == 0
            ),
            None,
        )
        crash_cars: tuple[str, ...] = ()
        for incident in notes.of("start_crash"):
            crash_cars += (incident.car, *incident.others)
        return cls(
            race=race,
            notes=notes,
            winner=winner.number if winner is not None else None,
            result_provenance=_provenance(winner.provenance) if winner else "inferred",
            row_provenance={
                r.number: _provenance(r.provenance) for r in rows if r.number is not None
            },
            opening_crash=opening,
            crash_cars=crash_cars,
        )

    def say(
        self,
        t_ms: int,
        category: MessageCategory,
        text: str,
        cars: Iterable[str] = (),
        provenance: str = "model",
    ) -> RaceControl:
        return RaceControl(
            race=self.race,
            seq=1,
            t_ms=t_ms,
            lap=0,
            category=category,
            text=text,
            cars=list(cars),
            provenance=_provenance(provenance) if provenance != "model" else "model",
        )

    def flag_message(self, period: Neutral, t_ms: int) -> RaceControl:
        """What the feed says as a yellow or a red flag comes out: the flag and its cause."""
        reason = period.reason or "on track incident"
        cars = period.cars
        provenance = period.provenance
        if period.kind == "red":
            text = f"Red flag: {reason}"
            if cars:
                text += " (" + ", ".join(f"#{c}" for c in cars) + " out)"
                if set(cars) - set(self.crash_cars):
                    # Which cars: the result's reading, not a source's word.
                    provenance = "inferred"
        elif reason.startswith("restart"):
            text = "Restart behind the safety car"
        else:
            text = f"Full course yellow: {_lower_first(reason)}"
        return self.say(t_ms, "flag", text, cars, provenance)

    def stop_messages(
        self, car: Car, stop: Stop, pit_in_ms: int, out_ms: int, at_wheel: str
    ) -> list[RaceControl]:
        """An unscheduled stop and its driver change, or a long stop for repairs."""
        number = car.target.number
        out: list[RaceControl] = []
        note = next((i for i in self.notes.of("unscheduled_stop") if i.car == number), None)
        if stop.reason is not None and stop.reason.startswith("unscheduled") and note:
            cause = f": {note.cause}" if note.cause else ""
            out.append(
                self.say(pit_in_ms, "pit", f"#{number} in the pits, unscheduled{cause}",
                         (number,), note.provenance)
            )  # fmt: skip
            if stop.change:
                out.append(
                    self.say(out_ms, "pit",
                             f"#{number} driver change: {at_wheel} hands over to "
                             f"{car.drivers[stop.driver]}", (number,), note.provenance)
                )  # fmt: skip
        elif stop.reason == "repairs" and stop.extra_ms >= 60_000:
            minutes = round(stop.standing_ms / 60_000)
            out.append(
                self.say(pit_in_ms, "pit", f"#{number} into the garage for repairs",
                         (number,), "model")
            )  # fmt: skip
            out.append(
                self.say(out_ms, "pit",
                         f"#{number} back out after {minutes} min in the garage", (number,),
                         "model")
            )  # fmt: skip
        return out

    def retirement(self, car: Car, t_ms: int, reason: str) -> RaceControl:
        number = car.target.number
        provenance: str = self.row_provenance.get(number, "inferred")
        if car.crash is not None:
            provenance = car.crash.provenance
            text = f"#{number} out after {car.target.laps} laps: {reason}"
        elif car.target.laps == 0:
            provenance = "report" if number in self.crash_cars else "inferred"
            text = f"#{number} out: {reason}"
            if "opening lap" not in reason:
                text += " on the opening lap"
        else:
            # The lap is the result's; where and why the car stopped, the model's.
            text = f"#{number} retires after {car.target.laps} laps ({reason}; cause not reported)"
        return self.say(t_ms, "retirement", text, (number,), provenance)

    def incident_messages(self, cars: dict[str, Car]) -> list[RaceControl]:
        """The opening-lap crash and the cars it caught; a crash the notes time."""
        out: list[RaceControl] = []
        lap0 = [c for c in cars.values() if not c.target.finisher and c.target.laps == 0]
        t0 = min((round(c.retire_ms) for c in lap0), default=None)
        for incident in self.notes.of("start_crash"):
            if t0 is None:
                break
            what = self.opening_crash or "crash on the opening lap"
            named = ", ".join(f"#{c}" for c in (incident.car, *incident.others))
            out.append(
                self.say(max(0, t0 - 2), "incident", f"{what[:1].upper()}{what[1:]}: {named} out",
                         (incident.car, *incident.others), incident.provenance)
            )  # fmt: skip
        caught = [*self.notes.of("ran_on"), *self.notes.of("damage")]
        for incident in caught:
            if t0 is None or incident.car not in cars:
                continue
            text = (
                f"#{incident.car} damaged in the opening-lap crash, runs on"
                if incident.kind == "damage"
                else f"#{incident.car} caught up in the opening-lap crash, runs on"
            )
            out.append(
                self.say(max(0, t0 - 1), "incident", text, (incident.car,), incident.provenance)
            )
        for car in cars.values():
            if car.crash is not None:
                out.append(
                    # Just before the yellow it brings out: the story in its order.
                    self.say(round(car.crash_ms) - 1, "incident", _crash_reason(car.crash),
                             (car.target.number,), car.crash.provenance)
                )  # fmt: skip
        return out


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:4] == "The " else text
