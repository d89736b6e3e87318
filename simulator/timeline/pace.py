"""Race pace of each car: a reference lap from qualifying, and lap times around it.

The reference is the car's qualifying best, or its class median when it set
none. A green race lap is the reference times a factor for traffic, the
driver at the wheel, tyre wear through the stint and lap-to-lap noise; the
factors come from the real Laguna Seca 2022 timing (``docs/TIMELINE.md``).
Pure: no I/O.
"""

from __future__ import annotations

import itertools
import random
import statistics
from dataclasses import dataclass
from functools import cached_property

from simulator.recording.format import Recording

FLOOR = 0.995
"""No green lap is quicker than this share of the car's reference lap."""


@dataclass(frozen=True)
class PaceSettings:
    """Shape of a car's green-flag laps, as shares of its reference lap."""

    race_offset: float = 0.004
    """Race trim, fuel load and traffic over a qualifying lap, for every car."""
    class_offset: dict[str, float] | None = None
    """Extra offset per class (prototypes lap more traffic); default below."""
    driver_spread: tuple[float, float] = (0.003, 0.018)
    """A crew's other drivers are this much slower than its quickest, uniform."""
    wear_per_lap: float = 0.0003
    """Tyre wear, net of fuel burn, per lap into a stint."""
    out_lap: float = 0.010
    """Cold tyres on the first racing lap after a stop."""
    start_lap: float = 0.045
    """The rolling start and the first-lap queue."""
    noise_sd: float = 0.011
    """Lap-to-lap spread (half-normal, always slower)."""
    traffic_p: float = 0.16
    """Chance that a lap is held up in traffic ..."""
    traffic_loss: tuple[float, float] = (0.015, 0.05)
    """... and by how much."""
    missing_margin: float = 0.0
    """Added to the class median for a car without a qualifying time."""
    fallback_kmh: float = 150.0
    """Reference speed for a car whose class has no time at all."""


DEFAULT_CLASS_OFFSET: dict[str, float] = {
    "P1": 0.016,
    "P2": 0.014,
    "PC": 0.010,
    "GT": 0.006,
    "GTC": 0.006,
}


def reference_laps(recording: Recording, settings: PaceSettings | None = None) -> dict[str, int]:
    """Reference lap (ms) of every entry: its qualifying best, else its class median.

    The timeline never runs a green lap quicker than ``FLOOR`` times this.
    """
    settings = settings or PaceSettings()
    best: dict[str, int] = {}
    for row in recording.qualifying:
        if row.best_ms is not None and row.remark is None:
            best[row.number] = row.best_ms
    by_class: dict[str, list[int]] = {}
    for entry in recording.entries:
        if entry.number in best:
            by_class.setdefault(entry.cls, []).append(best[entry.number])
    everyone = sorted(best.values())
    out: dict[str, int] = {}
    for entry in recording.entries:
        if entry.number in best:
            out[entry.number] = best[entry.number]
            continue
        times = by_class.get(entry.cls)
        if times:
            base = statistics.median(times)
        elif everyone:
            base = everyone[-1] * 1.03
        else:
            km = recording.facts.circuit.length_km
            base = km / settings.fallback_kmh * 3_600_000
        out[entry.number] = round(base * (1.0 + settings.missing_margin))
    return out


@dataclass(frozen=True)
class CarPace:
    """Everything that shapes one car's green laps, drawn once per seed."""

    reference_ms: float
    base: float
    """Share over the reference common to all of the car's laps."""
    drivers: tuple[float, ...]
    """Extra share per driver (index as in the entry's driver list)."""
    noise: tuple[float, ...]
    """Extra share per lap (index = lap number; 0 unused)."""
    settings: PaceSettings
    scale: float = 1.0
    """Share of the slowing factors (offset, drivers, spread) applied; below 1 for a car
    whose result shows it raced closer to its reference lap than most."""

    def factor(self, lap: int, stint_lap: int, driver: int) -> float:
        """Green lap time over the reference lap (never below 1.0)."""
        s = self.settings
        slow = self.base + self.drivers[driver]
        if lap < len(self.noise):
            slow += self.noise[lap]
        # Every term is >= 0: a lap is never quicker than the reference.
        f = 1.0 + self.scale * slow + s.wear_per_lap * stint_lap
        if lap == 1:
            f += s.start_lap
        elif stint_lap == 1:
            f += s.out_lap
        return f

    def lap_ms(self, lap: int, stint_lap: int, driver: int) -> float:
        return self.reference_ms * self.factor(lap, stint_lap, driver)

    @cached_property
    def _cumulative_noise(self) -> list[float]:
        return list(itertools.accumulate(self.noise))

    def cumulative_noise(self) -> list[float]:
        """``cumulative_noise()[k]``: the noise of laps 1..k added up."""
        return self._cumulative_noise

    def min_factor(self) -> float:
        """The quickest any lap of this car can be, over the reference."""
        slow = self.base + min(self.drivers) + min(self.noise[1:], default=0.0)
        return max(1.0, 1.0 + self.scale * slow + self.settings.wear_per_lap)


def draw_pace(
    reference_ms: float,
    cls: str,
    n_drivers: int,
    fastest: int,
    laps: int,
    rng: random.Random,
    settings: PaceSettings,
) -> CarPace:
    """The car's pace: class offset, driver spread and per-lap noise for ``laps`` laps."""
    offsets = settings.class_offset or DEFAULT_CLASS_OFFSET
    base = settings.race_offset + offsets.get(cls, 0.003)
    lo, hi = settings.driver_spread
    drivers = tuple(0.0 if i == fastest else rng.uniform(lo, hi) for i in range(max(1, n_drivers)))
    noise = [0.0]
    for _ in range(laps + 2):
        v = abs(rng.gauss(0.0, settings.noise_sd))
        if rng.random() < settings.traffic_p:
            v += rng.uniform(*settings.traffic_loss)
        noise.append(v)
    return CarPace(
        reference_ms=reference_ms,
        base=base,
        drivers=drivers,
        noise=tuple(noise),
        settings=settings,
    )
