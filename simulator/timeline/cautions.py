"""Full-course yellows and red flags: when they fall and how the field drives under them.

A schedule is a list of neutralised periods in race time, the same for every
car. Under a yellow everyone laps at the safety car's pace and the cars
behind close up on it; under a red flag the cars drive to the line and wait
there for the restart, which is run behind the safety car. Pure: no I/O.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

NeutralKind = Literal["fcy", "red"]


@dataclass(frozen=True)
class CautionSettings:
    fcy_lap_factor: float = 1.9
    """A lap behind the safety car, over the pole time (Laguna Seca 2022: 1.8-1.9)."""
    catch_factor: float = 1.35
    """A car closing up on the queue laps at this share of its green pace."""
    compression: float = 0.3
    """Under a yellow the field closes to this share of its spread on the road."""
    duration_s: tuple[float, float] = (540.0, 1500.0)
    """Length of a yellow, uniform."""
    min_green_s: float = 420.0
    """Green running between two neutralisations at least."""
    first_after_s: float = 300.0
    """No yellow in the first minutes."""
    final_green_share: float = 0.12
    """The last part of the race (share of its length) is never neutralised."""
    final_green_min_s: float = 900.0
    """... and at least this long."""
    max_share: float = 0.6
    """Yellows never cover more than this share of the race."""
    restart_laps: float = 2.0
    """Laps behind the safety car after a red flag."""
    red_stagger: float = 0.2
    """Cars leave a red flag this share of their arrival spread apart."""
    incident_yellow_s: tuple[float, float] = (240.0, 600.0)
    """Length of the yellow a crash in the notes brings out, uniform."""
    incident_green_after_s: float = 300.0
    """Such a yellow ends at least this long before time runs out."""


@dataclass(frozen=True)
class Neutral:
    kind: NeutralKind
    start: float
    end: float
    bunch: bool = True
    """The field closes up behind the safety car (not after a standing restart)."""
    reason: str | None = None
    cars: tuple[str, ...] = ()
    """The cars that brought it out, when known."""
    provenance: str = "model"
    """Where its cause comes from: a recording's facts or notes, or the model."""


@dataclass
class Schedule:
    """Neutralised periods in time order and the safety car's pace."""

    periods: list[Neutral]
    fcy_ms: float
    settings: CautionSettings
    sc: dict[int, float] = field(default_factory=dict)
    """Safety car distance (laps) at the start of each bunching yellow, once known."""

    def index_at(self, t: float) -> int:
        """Index of the first period that ends after ``t``."""
        for i, p in enumerate(self.periods):
            if p.end > t:
                return i
        return len(self.periods)

    def flag_at(self, t: float) -> str:
        for p in self.periods:
            if p.start <= t < p.end:
                return p.kind
            if p.start > t:
                break
        return "green"

    def neutral_ms(self) -> float:
        return sum(p.end - p.start for p in self.periods)


def place_yellows(
    total_ms: float,
    race_end_ms: float,
    fixed: list[Neutral],
    rng: random.Random,
    settings: CautionSettings,
) -> list[Neutral]:
    """Yellows adding up to about ``total_ms``, placed at random between the fixed periods.

    They keep ``min_green_s`` of green around each other and the fixed
    periods, stay out of the first minutes and of the final green stretch.
    """
    s = settings
    last_end = race_end_ms - max(s.final_green_min_s * 1000, s.final_green_share * race_end_ms)
    total_ms = min(total_ms, s.max_share * race_end_ms)
    if total_ms <= 0 or last_end <= s.first_after_s * 1000:
        return []
    lo, hi = s.duration_s[0] * 1000, s.duration_s[1] * 1000
    durations: list[float] = []
    left = total_ms
    while left >= lo * 0.5:
        d = min(rng.uniform(lo, hi), left)
        durations.append(d)
        left -= d
    if durations:
        durations[-1] += left
    else:
        durations.append(left)
    gap = s.min_green_s * 1000
    # Free windows between the fixed periods, then yellows dropped into them in order.
    windows: list[tuple[float, float]] = []
    cursor = s.first_after_s * 1000
    for p in sorted(fixed, key=lambda p: p.start):
        if p.start - gap > cursor:
            windows.append((cursor, min(p.start - gap, last_end)))
        cursor = max(cursor, p.end + gap)
    if cursor < last_end:
        windows.append((cursor, last_end))
    windows = [(a, b) for a, b in windows if b > a]
    room = sum(b - a for a, b in windows)
    need = sum(durations) + gap * max(0, len(durations) - 1)
    while durations and need > room:
        # Too many yellows for the time there is: merge the two shortest.
        durations.sort()
        if len(durations) == 1:
            durations[0] = max(lo * 0.5, room)
            break
        merged = durations.pop(0) + durations.pop(0)
        durations.append(merged)
        need = sum(durations) + gap * max(0, len(durations) - 1)
        if need > room and len(durations) == 1:
            durations[0] = room
    rng.shuffle(durations)
    # Spread the spare green time at random between the yellows.
    spare = max(0.0, room - sum(durations) - gap * max(0, len(durations) - 1))
    cuts = sorted(rng.random() for _ in range(len(durations) + 1))
    shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=False)][: len(durations)]
    out: list[Neutral] = []
    wi = 0
    t = windows[0][0] if windows else 0.0
    for d, share in zip(durations, shares, strict=True):
        t += spare * share
        while wi < len(windows) and t + d > windows[wi][1]:
            wi += 1
            if wi < len(windows):
                t = max(t, windows[wi][0])
        if wi >= len(windows):
            break
        t = max(t, windows[wi][0])
        out.append(Neutral("fcy", t, t + d, reason=rng.choice(_REASONS)))
        t += d + gap
    return out


_REASONS = (
    "car stopped on track",
    "debris",
    "accident",
    "car in the gravel",
    "oil on track",
)
