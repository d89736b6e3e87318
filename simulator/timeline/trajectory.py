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


# Checkpoints within a lap, where the car's state changes.
_AT_SECTOR = 0  # an intermediate timing line
_AT_LINE = 1  # the finish line: a lap completed
_AT_PIT_ENTRY = 2  # the pit lane entry: the car decides whether to stop
_AT_BOX = 3  # its pit box: it stands
_AT_LANE_EXIT = 4  # the pit lane exit: back on track
_AT_STOP = 6  # where the caller asked the walk to stop


def advance(w: Walk, p: Progress, *, t_stop: float = _INF, d_stop: float = _INF) -> None:
    """Move the car until time ``t_stop`` or distance ``d_stop``, whichever comes first.

    ``d_stop`` at a whole lap stops as the car crosses the line (after recording it).
    Each step runs at one speed up to the nearest of: the next checkpoint of
    the lap, the next change of flag (or the end of a wait), and the moment
    the car closes up on the safety car's queue.
    """
    if p.d >= d_stop:
        return
    plan = w.plan
    v_fcy = 1.0 / w.schedule.fcy_ms
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
        flags = _flags(w, p, t, t_stop)
        if flags is None:
            return
        t_next, yellow, red = flags
        waiting = p.wait_until > t

        # Whole laps with no decision on them: jump over them at once.
        if (
            rec is None
            and not waiting
            and not p.in_lane
            and not p.catching
            and not red
            and p.d == p.laps
            and _skip_free_laps(plan, p, m, yellow, t, t_next, d_stop, v_fcy)
        ):
            if p.laps >= d_stop:
                return
            continue

        v, t_next = _speed(plan, p, m, t_next, waiting, red, yellow, v_fcy)
        d = p.d
        cp, code, sector_j = _checkpoint(p, marks, d_stop)

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
            if _pass_checkpoint(w, p, code, sector_j, yellow, d_stop):
                return
        elif dt_c <= dt_t:
            # Closed up on the queue: from here it keeps the safety car's pace.
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


def _flags(w: Walk, p: Progress, t: float, t_stop: float) -> tuple[float, bool, bool] | None:
    """The flag the car runs under from ``t`` (yellow, red) and until when it holds, short
    of ``t_stop``; None at ``t_stop``. Goes through the ends and starts of periods on the
    way (the safety car's queue, a red flag's hold)."""
    periods = w.schedule.periods
    n_periods = len(periods)
    while p.pidx < n_periods and periods[p.pidx].end <= t:
        if p.entered == p.pidx:
            _leave_period(p, periods[p.pidx].kind)
        p.pidx += 1
    if t >= t_stop:
        # Stop before entering a period that starts now: the caller may
        # first have to place the safety car.
        return None
    if p.pidx >= n_periods:
        return t_stop, False, False
    per = periods[p.pidx]
    inside = per.start <= t
    if inside and p.entered != p.pidx:
        p.entered = p.pidx
        rho = w.schedule.settings.compression
        _enter_period(p, w, per.kind, per.bunch, per.start, per.end, rho)
    bound = per.end if inside else per.start
    t_next = bound if bound < t_stop else t_stop
    return t_next, inside and per.kind == "fcy", inside and per.kind == "red"


def _skip_free_laps(
    plan: CarPlan,
    p: Progress,
    m: float,
    yellow: bool,
    t: float,
    t_next: float,
    d_stop: float,
    v_fcy: float,
) -> bool:
    """Jump the car from the line over the whole laps the stop rule has no decision on,
    short of ``d_stop`` and of the next change of flag; whether it moved.

    Under yellow every lap takes the safety car's time; under green the laps
    are summed in closed form. Fuel burns as it would lap by lap.
    """
    k0 = p.laps
    last = plan.rule.free_laps(p, yellow)
    if d_stop < last:
        last = math.floor(d_stop)
    if last <= k0:
        return False
    if yellow:
        j = min(last, k0 + math.floor((t_next - t) * v_fcy))
        dt_j = (j - k0) / v_fcy
    else:
        j, dt_j = _green_jump(plan, p, m, k0, last, t_next - t)
    if j <= k0:
        return False
    p.t = t + dt_j
    p.d = float(j)
    p.laps = j
    p.fuel += (j - k0) * (plan.rule.settings.yellow_fuel if yellow else 1.0)
    return True


def _speed(
    plan: CarPlan,
    p: Progress,
    m: float,
    t_next: float,
    waiting: bool,
    red: bool,
    yellow: bool,
    v_fcy: float,
) -> tuple[float, float]:
    """The car's speed in laps per ms, and until when it holds (a wait may end sooner).

    Standing (in its box, or held after a red flag) it does not move; in the
    lane it keeps the limit; under red it drives to the line at the safety
    car's pace; under yellow it laps at that pace, quicker while it closes up
    on the queue; under green at its own lap time times the pace multiplier.
    """
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
    return v, t_next


def _checkpoint(p: Progress, marks: tuple[float, ...], d_stop: float) -> tuple[float, int, int]:
    """The next checkpoint within the lap: its distance, what it is and, for a timing
    line, which sector it completes.

    The pit lane has its own: the box on the lap the stop is due, the exit on
    the lap after the line; on track the pit entry, where the car decides.
    """
    d = p.d
    base = p.laps
    nxt = base + 1
    cp = float(nxt)
    code = _AT_LINE
    sector_j = 0
    for j, mark in enumerate(marks, start=1):
        a = base + mark
        if a > d:
            if a < cp:
                cp, code, sector_j = a, _AT_SECTOR, j
            break
    if p.in_lane:
        stop = p.stop
        if stop is not None and stop.lap == base:
            a = base + LANE_OUT
            if d < a < cp:
                cp, code = a, _AT_LANE_EXIT
        elif stop is not None and stop.lap == nxt and not p.at_box:
            a = nxt - LANE_BOX
            if d < a < cp:
                cp, code = a, _AT_BOX
    else:
        a = nxt - LANE_IN
        if d < a < cp:
            cp, code = a, _AT_PIT_ENTRY
    if d < d_stop < cp:
        cp, code = d_stop, _AT_STOP
    return cp, code, sector_j


def _pass_checkpoint(
    w: Walk, p: Progress, code: int, sector_j: int, yellow: bool, d_stop: float
) -> bool:
    """What happens as the car reaches the checkpoint (already at its distance): records,
    laps, stops, the hold after a red flag; whether the walk ends there."""
    rec = w.record
    base = p.laps
    nxt = base + 1
    if code == _AT_LINE:
        p.laps = nxt
        if rec is not None:
            rec.append((LINE, p.t, nxt, 1 if p.in_lane else 0, p.lap_driver))
        p.lap_driver = p.driver
        if p.hold_pending:
            # Behind a red flag the cars stop at the line and leave in turn.
            p.hold_pending = False
            p.catching = False
            p.wait_until = p.red_end + w.schedule.settings.red_stagger * (p.t - p.red_start)
        return nxt >= d_stop
    if code == _AT_SECTOR:
        if rec is not None:
            rec.append((SECTOR, p.t, nxt, sector_j, 0))
    elif code == _AT_PIT_ENTRY:
        stop = w.plan.rule.decide(p, nxt, yellow)
        if stop is not None:
            p.in_lane = True
            p.stop = stop
            p.at_box = False
            p.catching = False
            if rec is not None:
                rec.append((PIT_IN, p.t, base, 0, 0))
    elif code == _AT_BOX:
        stop = p.stop
        assert stop is not None
        p.wait_until = p.t + stop.standing_ms
        p.at_box = True
        p.driver = stop.driver
        p.fuel = 0.0
        p.stint_first = nxt + 1
        p.g_lap = -1
    elif code == _AT_LANE_EXIT:
        p.in_lane = False
        p.at_box = False
        if p.stop is not None and (rec is not None or w.keep_stops):
            if rec is not None:
                rec.append((PIT_OUT, p.t, base, len(w.stops), 0))
            w.stops.append(p.stop)
        p.stop = None
        # Rejoins the queue where it is: no closing up past the cars it let by.
        p.catching = False
    elif code == _AT_STOP:
        return True
    return False


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
