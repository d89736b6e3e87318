"""One car's way round the track: distance against time under green, yellow and red.

Distance is counted in laps from the start line. Under green a car covers a
lap in its own lap time (times a pace multiplier the solver chooses); under
a yellow it laps at the safety car's pace, faster while it closes up on the
queue; under a red flag it drives to the line and waits for its restart; in
the pit lane it keeps the lane's speed limit and stands in its box. Stops
are decided as the car nears the pit entry, by the fuel rule of
``simulator.pitstops``, so that the solver's estimates and the final drive
make the same stops. The same walk serves both: estimates record nothing.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from simulator.timeline.cautions import Schedule
from simulator.timeline.pace import CarPace
from simulator.timeline.pitstops import Stop, StopRule

LANE_IN = 0.07
"""Pit lane entry, in laps before the finish line (the line is crossed in the lane)."""
LANE_BOX = 0.03
"""The pit boxes, in laps before the line."""
LANE_OUT = 0.04
"""Pit lane exit, in laps after the line."""

# Records of a drive: (kind, t, lap, a, b).
SECTOR = 0  # lap in progress; a = sector completed (1-based)
LINE = 1  # laps completed; a = 1 when crossed in the pit lane; b = driver of the lap
PIT_IN = 2  # laps completed
PIT_OUT = 3  # laps completed; a = index of the stop in ``Walk.stops``
Record = tuple[int, float, int, int, int]


@dataclass
class CarPlan:
    """What shapes a car's drive apart from the pace multiplier."""

    number: str
    pace: CarPace
    start_ms: float
    """Time after the green flag at which the car crosses the start line."""
    rule: StopRule
    first_driver: int
    catch_factor: float
    sector_marks: tuple[float, ...] = ()
    """Distance into the lap of each intermediate timing line."""

    def lap_ms(self, lap: int, stint_first: int, driver: int) -> float:
        return self.pace.lap_ms(lap, lap - stint_first + 1, driver)

    def green_ms(self, a: int, b: int, stint_first: int, driver: int) -> float:
        """Nominal time of laps ``a``..``b`` of one stint (closed form)."""
        pace = self.pace
        s = pace.settings
        n = b - a + 1
        if n <= 0:
            return 0.0
        cum = pace.cumulative_noise()
        last = len(cum) - 1
        noise = cum[min(b, last)] - cum[min(a - 1, last)]
        k0 = a - stint_first
        k1 = b - stint_first + 1
        wear = (k1 * (k1 + 1) - k0 * (k0 + 1)) / 2
        total = (
            n * (1.0 + pace.scale * (pace.base + pace.drivers[driver]))
            + pace.scale * noise
            + s.wear_per_lap * wear
        )
        if a <= 1 <= b:
            total += s.start_lap
        elif a <= stint_first <= b:
            total += s.out_lap
        return pace.reference_ms * total


@dataclass
class Progress:
    """Where a car is: time, distance, its stint and the state of a stop or a red flag."""

    t: float
    d: float = 0.0
    laps: int = 0
    in_lane: bool = False
    stop: Stop | None = None
    """The stop under way (from the pit entry to the lane exit)."""
    at_box: bool = False
    wait_until: float = 0.0
    hold_pending: bool = False
    red_start: float = 0.0
    red_end: float = 0.0
    catching: bool = False
    x: float = 0.0
    target: float = 0.0
    pidx: int = 0
    entered: int = -1
    """Index of the period whose start this car has gone through."""
    started: bool = False
    stint_first: int = 1
    driver: int = 0
    lap_driver: int = 0
    """Driver who started the lap under way."""
    fuel: float = 0.0
    n_stops: int = 0
    skip_fixed: int = -1
    """A repair stop already made earlier (the car ran out of fuel just short of it)."""
    g_lap: int = -1
    g_ms: float = 0.0
    """Nominal time of lap ``g_lap`` (a cache)."""

    def copy(self) -> Progress:
        q = Progress.__new__(Progress)
        q.__dict__.update(self.__dict__)
        return q


@dataclass
class Walk:
    """The fixed inputs of a walk: the car's plan, the schedule and the pace multiplier."""

    plan: CarPlan
    schedule: Schedule
    m: float
    bunch: bool = False
    record: list[Record] | None = None
    keep_stops: bool = False
    """Keep the stops made even without recording the drive."""
    stops: list[Stop] = field(default_factory=list)
    """Stops made, when recording or keeping them."""


_INF = math.inf


def start(plan: CarPlan) -> Progress:
    return Progress(t=0.0, driver=plan.first_driver, lap_driver=plan.first_driver)


def advance(w: Walk, p: Progress, *, t_stop: float = _INF, d_stop: float = _INF) -> None:
    """Move the car until time ``t_stop`` or distance ``d_stop``, whichever comes first.

    ``d_stop`` at a whole lap stops as the car crosses the line (after recording it).
    """
    if p.d >= d_stop:
        return
    plan = w.plan
    sched = w.schedule
    periods = sched.periods
    n_periods = len(periods)
    v_fcy = 1.0 / sched.fcy_ms
    rho = sched.settings.compression
    stagger = sched.settings.red_stagger
    rec = w.record
    marks = plan.sector_marks if rec is not None else ()
    m = w.m

    if not p.started:
        if t_stop <= plan.start_ms:
            p.t = t_stop
            return
        p.t = max(p.t, plan.start_ms)
        p.started = True

    while True:
        t = p.t
        while p.pidx < n_periods and periods[p.pidx].end <= t:
            if p.entered == p.pidx:
                _leave_period(p, periods[p.pidx].kind)
            p.pidx += 1
        per = periods[p.pidx] if p.pidx < n_periods else None
        inside = per is not None and per.start <= t
        if t >= t_stop:
            # Stop before entering a period that starts now: the caller may
            # first have to place the safety car.
            return
        if inside and per is not None and p.entered != p.pidx:
            p.entered = p.pidx
            _enter_period(p, w, per.kind, per.bunch, per.start, per.end, rho)
        t_next = t_stop
        if per is not None:
            bound = per.end if inside else per.start
            if bound < t_next:
                t_next = bound
        yellow = inside and per is not None and per.kind == "fcy"
        red = inside and per is not None and per.kind == "red"
        waiting = p.wait_until > t

        if (
            rec is None
            and not waiting
            and not p.in_lane
            and not p.catching
            and not red
            and p.d == p.laps
        ):
            # Whole laps with no decision on them: jump over them at once.
            k0 = p.laps
            last = plan.rule.free_laps(p, yellow)
            if d_stop < last:
                last = math.floor(d_stop)
            if last > k0:
                if yellow:
                    j = min(last, k0 + math.floor((t_next - t) * v_fcy))
                    dt_j = (j - k0) / v_fcy
                else:
                    j, dt_j = _green_jump(plan, p, m, k0, last, t_next - t)
                if j > k0:
                    p.t = t + dt_j
                    p.d = float(j)
                    p.laps = j
                    p.fuel += (j - k0) * (plan.rule.settings.yellow_fuel if yellow else 1.0)
                    if j >= d_stop:
                        return
                    continue

        if waiting:
            v = 0.0
            if p.wait_until < t_next:
                t_next = p.wait_until
        elif p.in_lane:
            stop = p.stop
            v = (LANE_IN + LANE_OUT) / (stop.lane_ms if stop is not None else 24_000.0)
        elif red:
            v = v_fcy
        elif yellow:
            if p.catching:
                v = max(1.0 / (plan.catch_factor * m * _lap_ms(plan, p)), 1.05 * v_fcy)
            else:
                v = v_fcy
        else:
            v = 1.0 / (m * _lap_ms(plan, p))

        # Next distance checkpoint within this lap.
        d = p.d
        base = p.laps
        nxt = base + 1
        cp = float(nxt)
        code = 1  # 0 sector, 1 line, 2 pit entry (decide), 3 box, 4 lane exit, 6 stop
        sector_j = 0
        for j, mark in enumerate(marks, start=1):
            a = base + mark
            if a > d:
                if a < cp:
                    cp, code, sector_j = a, 0, j
                break
        if p.in_lane:
            stop = p.stop
            if stop is not None and stop.lap == base:
                a = base + LANE_OUT
                if d < a < cp:
                    cp, code = a, 4
            elif stop is not None and stop.lap == nxt and not p.at_box:
                a = nxt - LANE_BOX
                if d < a < cp:
                    cp, code = a, 3
        else:
            a = nxt - LANE_IN
            if d < a < cp:
                cp, code = a, 2
        if d < d_stop < cp:
            cp, code = d_stop, 6

        dt_d = (cp - d) / v if v > 0 else _INF
        dt_t = t_next - t
        dt_c = _INF
        if p.catching and v > v_fcy and not waiting:
            dt_c = (p.x - p.target) / (v - v_fcy)

        if dt_d <= dt_t and dt_d <= dt_c:
            p.t = t + dt_d
            if p.catching:
                p.x -= (v - v_fcy) * dt_d
            p.d = cp
            if code == 1:
                p.laps = nxt
                if rec is not None:
                    rec.append((LINE, p.t, nxt, 1 if p.in_lane else 0, p.lap_driver))
                p.lap_driver = p.driver
                if p.hold_pending:
                    p.hold_pending = False
                    p.catching = False
                    p.wait_until = p.red_end + stagger * (p.t - p.red_start)
                if nxt >= d_stop:
                    return
            elif code == 0:
                if rec is not None:
                    rec.append((SECTOR, p.t, nxt, sector_j, 0))
            elif code == 2:
                stop = plan.rule.decide(p, nxt, yellow)
                if stop is not None:
                    p.in_lane = True
                    p.stop = stop
                    p.at_box = False
                    p.catching = False
                    if rec is not None:
                        rec.append((PIT_IN, p.t, base, 0, 0))
            elif code == 3:
                stop = p.stop
                assert stop is not None
                p.wait_until = p.t + stop.standing_ms
                p.at_box = True
                p.driver = stop.driver
                p.fuel = 0.0
                p.stint_first = nxt + 1
                p.g_lap = -1
            elif code == 4:
                p.in_lane = False
                p.at_box = False
                if p.stop is not None and (rec is not None or w.keep_stops):
                    if rec is not None:
                        rec.append((PIT_OUT, p.t, base, len(w.stops), 0))
                    w.stops.append(p.stop)
                p.stop = None
                # Rejoins the queue where it is: no closing up past the cars it let by.
                p.catching = False
            elif code == 6:
                return
        elif dt_c <= dt_t:
            p.t = t + dt_c
            p.d = d + v * dt_c
            p.x = p.target
            p.catching = False
        else:
            p.t = t_next
            if not waiting:
                p.d = d + v * dt_t
                if p.catching:
                    p.x -= (v - v_fcy) * dt_t


def _lap_ms(plan: CarPlan, p: Progress) -> float:
    """Nominal time of the lap under way (kept until the lap or the stint changes)."""
    if p.g_lap != p.laps + 1:
        p.g_lap = p.laps + 1
        p.g_ms = plan.lap_ms(p.g_lap, p.stint_first, p.driver)
    return p.g_ms


def _green_jump(
    plan: CarPlan, p: Progress, m: float, k0: int, last: int, room: float
) -> tuple[int, float]:
    """Most whole green laps after ``k0`` (up to ``last``) that fit in ``room``, and their time."""
    first, driver = p.stint_first, p.driver
    total = m * plan.green_ms(k0 + 1, last, first, driver)
    if total <= room:
        return last, total
    # Start from the average lap and walk: the laps differ by a few per cent.
    j = k0 + int(room / (total / (last - k0)))
    j = min(max(j, k0), last - 1)
    dt = m * plan.green_ms(k0 + 1, j, first, driver)
    if dt <= room:
        while j + 1 <= last:
            nxt = m * plan.green_ms(k0 + 1, j + 1, first, driver)
            if nxt > room:
                break
            j, dt = j + 1, nxt
        return j, dt
    while j > k0:
        j -= 1
        dt = m * plan.green_ms(k0 + 1, j, first, driver)
        if dt <= room:
            return j, dt
    return k0, 0.0


def _enter_period(
    p: Progress, w: Walk, kind: str, bunch: bool, start: float, end: float, rho: float
) -> None:
    if kind == "red":
        p.catching = False
        p.hold_pending = True
        p.red_start = start
        p.red_end = end
        return
    if not (w.bunch and bunch) or p.in_lane:
        return
    sc = w.schedule.sc.get(p.pidx)
    if sc is None:
        return
    gap = sc - p.d
    if gap <= 0:
        # Level with or ahead of the car the safety car picks up: it just follows.
        return
    x = gap % 1.0
    p.x = x
    p.target = rho * x
    p.catching = x > p.target + 1e-9


def _leave_period(p: Progress, kind: str) -> None:
    p.catching = False
    if kind == "red":
        p.hold_pending = False


def estimate(w: Walk, p: Progress, laps: int) -> float:
    """Time at which the car completes ``laps`` laps from ``p`` (``p`` is left unchanged)."""
    q = p.copy()
    advance(w, q, d_stop=float(laps))
    return q.t
