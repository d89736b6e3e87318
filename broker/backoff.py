"""How long to wait before reconnecting to a lost broker: exponential, capped, full jitter.

Pure (no clock, no sleeping): the caller owns the waiting and hands in its own
random source, so tests get exact delays. Every service that reconnects (producer,
projector, gateway) uses this one helper, so a restarted broker sees its clients
come back spread over the whole wait instead of all at once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


def ceiling_s(attempt: int, first_s: float, cap_s: float) -> float:
    """The longest wait before retry number ``attempt`` (1-based): ``first_s`` doubling, capped."""
    if attempt < 1:
        raise ValueError(f"attempt must be 1 or more, not {attempt}")
    if first_s <= 0 or cap_s < first_s:
        raise ValueError(f"need 0 < first_s <= cap_s, got first_s={first_s}, cap_s={cap_s}")
    # min() before the power would overflow: 2.0 ** 1100 is inf, and inf * 0 is nan.
    doublings = min(attempt - 1, 64)
    return min(cap_s, first_s * 2.0**doublings)


def delay_s(
    attempt: int, first_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, ceiling_s(attempt))``.

    Full rather than partial jitter: many clients that lost the broker at the
    same moment come back spread over the whole window, which halves the
    peak load on a restarted broker compared with a 50-100 % jitter.
    """
    return ceiling_s(attempt, first_s, cap_s) * rand()


def delays(
    first_s: float, cap_s: float, rand: Callable[[], float] = random.random
) -> Iterator[float]:
    """The waits of one run of failures, without end: the first, the second, ..."""
    attempt = 0
    while True:
        attempt += 1
        yield delay_s(attempt, first_s, cap_s, rand)


@dataclass(slots=True)
class Backoff:
    """A reconnect loop's wait: ``next()`` after each failure, ``reset()`` on success.

    ``reset()`` belongs where the connection proved healthy (connected and
    subscribed), not merely opened: a broker that accepts and then drops every
    connection would otherwise be retried without a pause.
    """

    first_s: float
    """Longest wait after the first failure."""
    cap_s: float
    """Longest wait ever, however many failures in a row."""
    rand: Callable[[], float] = field(default=random.random, repr=False)
    """Uniform in [0, 1); a fixed one in tests."""
    attempt: int = 0
    """Failures since the last success."""

    def __post_init__(self) -> None:
        ceiling_s(1, self.first_s, self.cap_s)  # names a bad pair at once, not at the first failure

    def next(self) -> float:
        """The wait before the next attempt, one failure more."""
        self.attempt += 1
        return delay_s(self.attempt, self.first_s, self.cap_s, self.rand)

    def reset(self) -> None:
        self.attempt = 0
