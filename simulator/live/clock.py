"""The replay clock: maps race time to wall time at a chosen speed.

Pure and immutable: every operation takes the wall time ``now`` (seconds)
explicitly and returns a new clock. Speed is race seconds per wall second,
from ``MIN_SPEED`` to ``MAX_SPEED``, or ``None`` for as fast as possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from chequered.contract.control import MAX_SPEED, MIN_SPEED


class SpeedError(ValueError):
    """A speed outside the range the clock accepts."""


def check_speed(speed: float | None) -> float | None:
    """Return ``speed`` if the clock accepts it, else raise ``SpeedError`` naming the fault."""
    if speed is None:
        return None
    if isinstance(speed, bool) or not isinstance(speed, int | float):
        raise SpeedError(f"speed must be a number or null, not {type(speed).__name__}")
    if not math.isfinite(speed) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise SpeedError(f"speed {speed!r} is outside {MIN_SPEED:g}..{MAX_SPEED:g}")
    return float(speed)


@dataclass(frozen=True, slots=True)
class ReplayClock:
    """Race time as a piecewise-linear function of wall time.

    At wall time ``anchor`` the race clock read ``origin_ms``; while running
    it advances ``speed`` race seconds per wall second. Paused, it stands at
    ``origin_ms``. As fast as possible (``speed is None``), there is no pace:
    every event is due at once and ``origin_ms`` follows the events emitted
    (``advanced``), so that pausing stops the race where the stream is.
    """

    speed: float | None = 1.0
    paused: bool = False
    origin_ms: float = 0.0
    anchor: float = 0.0

    @classmethod
    def started(
        cls, now: float, *, speed: float | None = 1.0, paused: bool = False, at_ms: float = 0.0
    ) -> ReplayClock:
        return cls(speed=check_speed(speed), paused=paused, origin_ms=at_ms, anchor=now)

    @property
    def as_fast_as_possible(self) -> bool:
        return self.speed is None

    def race_ms(self, now: float) -> float:
        """The race clock at wall time ``now`` (never before ``origin_ms``)."""
        if self.paused or self.speed is None:
            return self.origin_ms
        return self.origin_ms + max(0.0, now - self.anchor) * self.speed * 1000.0

    def horizon_ms(self, now: float) -> float:
        """Race time up to which events are due at ``now``: infinite when running flat out."""
        if self.speed is None and not self.paused:
            return math.inf
        return self.race_ms(now)

    def wall_at(self, t_ms: float) -> float | None:
        """Wall time at which the race clock reaches ``t_ms``; None while paused short of it.

        A time the clock has already passed (or any time, flat out) is due at
        ``anchor``, which is never later than the present.
        """
        if t_ms <= self.origin_ms:
            return self.anchor
        if self.paused:
            return None
        if self.speed is None:
            return self.anchor
        return self.anchor + (t_ms - self.origin_ms) / (self.speed * 1000.0)

    def advanced(self, t_ms: float) -> ReplayClock:
        """Flat out, the race clock is where the stream is: move it to ``t_ms``."""
        if self.speed is None and t_ms > self.origin_ms:
            return replace(self, origin_ms=t_ms)
        return self

    def pause(self, now: float) -> ReplayClock:
        if self.paused:
            return self
        return replace(self, origin_ms=self.race_ms(now), anchor=now, paused=True)

    def resume(self, now: float) -> ReplayClock:
        if not self.paused:
            return self
        return replace(self, anchor=now, paused=False)

    def with_speed(self, speed: float | None, now: float) -> ReplayClock:
        """Change pace from ``now`` on; the race clock does not jump."""
        return replace(self, speed=check_speed(speed), origin_ms=self.race_ms(now), anchor=now)

    def seek(self, t_ms: float, now: float) -> ReplayClock:
        """Set the race clock to ``t_ms`` at ``now``, keeping speed and pause."""
        if t_ms < 0:
            raise ValueError(f"cannot seek to a negative race time ({t_ms} ms)")
        return replace(self, origin_ms=float(t_ms), anchor=now)
