"""Pit stops: fuel windows per class, when a car stops, how long it stands, who drives next.

A car stops when its fuel window runs out, or earlier under a yellow once
it is far enough into its stint (a stop behind the safety car costs less),
and never when it can reach the flag on the fuel it has. Drivers take turns,
so every driver of the crew drives once there are enough stints. Pure: no I/O.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class PitSettings:
    window_min: dict[str, float] | None = None
    """Longest stint per class, in minutes of green running; default below."""
    default_window_min: float = 48.0
    min_stint_laps: int = 5
    """No routine stop sooner than this after the last one."""
    fcy_stint_share: float = 0.55
    """Under a yellow a car stops once this share of its window is used up."""
    yellow_fuel: float = 0.5
    """Fuel of a lap behind the safety car, in green laps."""
    stationary_s: tuple[float, float] = (26.0, 36.0)
    """Fuel and tyres, uniform."""
    driver_change_s: tuple[float, float] = (3.0, 7.0)
    """Added when the driver changes, uniform."""
    lane_s: tuple[float, float] = (22.0, 26.0)
    """Driving through the pit lane at the speed limit, entry to exit."""
    double_stint_p: float = 0.35
    """Chance that a driver stays in for another stint (when the crew's shares allow)."""
    garage_min_s: float = 120.0
    """A repair shorter than this is folded into a routine stop."""


DEFAULT_WINDOW_MIN: dict[str, float] = {
    "P1": 45.0,
    "P2": 45.0,
    "PC": 46.0,
    "GT": 52.0,
    "GTC": 55.0,
}


def window_laps(cls: str, lap_ms: float, settings: PitSettings) -> int:
    """Longest stint of a class in laps, for a car lapping in ``lap_ms``."""
    table = settings.window_min or DEFAULT_WINDOW_MIN
    minutes = table.get(cls, settings.default_window_min)
    return max(settings.min_stint_laps + 1, int(minutes * 60_000 / lap_ms))


@dataclass
class Stop:
    """A stop at the end of ``lap``; the line is crossed in the lane, after the box."""

    lap: int
    service_ms: float
    """Standing for fuel and tyres."""
    lane_ms: float
    """Driving through the lane, entry to exit, without standing still."""
    driver: int = 0
    """Driver (index into the entry's list) who leaves the box."""
    change: bool = False
    change_ms: float = 0.0
    """Added to the standing time when the driver changes."""
    extra_ms: float = 0.0
    """Time in the garage on top of a routine stop (repairs)."""
    reason: str | None = None
    force_change: bool = False
    """The driver changes whatever the turn (a note says so)."""

    @property
    def standing_ms(self) -> float:
        return self.service_ms + (self.change_ms if self.change else 0.0) + self.extra_ms


class StintState(Protocol):
    """What the rule reads and keeps of a car's progress."""

    laps: int
    fuel: float
    stint_first: int
    n_stops: int
    driver: int
    skip_fixed: int


@dataclass
class StopRule:
    """When one car stops and who drives on: asked as the car nears the pit entry each lap."""

    laps: int
    """Laps the car is to complete: no stop for fuel it will not need."""
    window: float
    """Fuel window, in green laps."""
    n_drivers: int
    seed: str
    settings: PitSettings
    fixed: dict[int, Stop] = field(default_factory=dict)
    """Stops the result calls for (repairs, retiring in the pits), by lap."""
    _cache: dict[int, tuple[float, float, float, float]] = field(default_factory=dict, repr=False)

    def decide(self, p: StintState, lap: int, under_yellow: bool) -> Stop | None:
        """The stop to make at the end of ``lap``, if any."""
        s = self.settings
        # Fuel in green laps' worth: a lap behind the safety car burns less.
        p.fuel += s.yellow_fuel if under_yellow else 1.0
        fixed = self.fixed.get(lap)
        if fixed is not None and p.skip_fixed != lap:
            return self._begin(p, fixed, lap)
        left = self.laps - lap
        if left <= 0 or p.fuel + left <= self.window:
            return None  # the flag, or enough fuel to reach it
        ahead = min((k for k in self.fixed if k > lap and k != p.skip_fixed), default=None)
        if ahead is not None and p.fuel + (ahead - lap) <= self.window:
            return None  # enough fuel to reach the repair stop, where it refuels
        stint = lap - p.stint_first + 1
        must = p.fuel + 1.0 > self.window
        early = (
            under_yellow
            and stint >= s.min_stint_laps
            and p.fuel >= max(s.min_stint_laps, s.fcy_stint_share * self.window)
        )
        if not (must or early):
            return None
        if (
            ahead is not None
            and ahead - lap <= s.min_stint_laps
            and self.fixed[ahead].reason not in (None, "retired")
        ):
            # Out of fuel just short of a repair or unscheduled stop: it is made now.
            repair = self.fixed[ahead]
            p.skip_fixed = ahead
            stop = Stop(
                lap=lap,
                service_ms=repair.service_ms,
                lane_ms=repair.lane_ms,
                extra_ms=repair.extra_ms,
                reason=repair.reason,
                force_change=repair.force_change,
            )
            return self._begin(p, stop, lap)
        service, lane, _, _ = self._draws(p.n_stops)
        return self._begin(p, Stop(lap=lap, service_ms=service, lane_ms=lane), lap)

    def _draws(self, index: int) -> tuple[float, float, float, float]:
        """The random parts of the car's ``index``-th stop: the same whatever the drive."""
        draws = self._cache.get(index)
        if draws is None:
            s = self.settings
            rng = random.Random(f"{self.seed}:stop:{index}")
            draws = (
                rng.uniform(*s.stationary_s) * 1000,
                rng.uniform(*s.lane_s) * 1000,
                rng.random(),
                rng.uniform(*s.driver_change_s) * 1000,
            )
            self._cache[index] = draws
        return draws

    def _begin(self, p: StintState, stop: Stop, lap: int) -> Stop:
        """Every driver in turn, then double stints at random."""
        _, _, stay, change_ms = self._draws(p.n_stops)
        n = max(1, self.n_drivers)
        nxt = (p.driver + 1) % n
        if p.n_stops + 1 >= n and stay < self.settings.double_stint_p:
            nxt = p.driver
        if stop.force_change:
            nxt = (p.driver + 1) % n
        stop.driver = nxt
        stop.change = nxt != p.driver
        stop.change_ms = change_ms
        stop.lap = lap
        p.n_stops += 1
        return stop

    def free_laps(self, p: StintState, under_yellow: bool) -> int:
        """Last lap the car can complete with no stop to decide on the way."""
        k0 = p.laps
        limit = self.laps
        for lap in self.fixed:
            if k0 < lap <= limit:
                limit = lap - 1
        if p.fuel + (self.laps - k0) <= self.window:
            return limit  # enough fuel to the flag
        inc = self.settings.yellow_fuel if under_yellow else 1.0
        # A routine stop comes up where the tank would run dry ...
        must = k0 + math.floor((self.window - 1.0 - p.fuel) / inc) + 1
        limit = min(limit, must - 1)
        if under_yellow:
            # ... or, under a yellow, once the stint is long enough to come in early.
            s = self.settings
            threshold = max(s.min_stint_laps, s.fcy_stint_share * self.window)
            early = k0 + max(1, math.ceil((threshold - p.fuel) / inc))
            early = max(early, p.stint_first + s.min_stint_laps - 1)
            limit = min(limit, early - 1)
        return limit
