"""Long-lived data and the garbage collector.

CPython's full collections walk every object the collector tracks. A service
holds many long-lived ones (a producer's timelines, a gateway's 2,000
connections: a quarter of a million objects), so each full collection paused it
for 0.1 to 0.8 s, and every message waited: at 100 races and 2,000 clients
those pauses were most of the latency's p99 (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import gc
import time
from typing import Any

THAW_S = 600.0
"""How often ``calm`` lets a full collection walk everything again (and free the
reference cycles that died among the frozen objects)."""


def settle() -> None:
    """Collect once, then leave every object alive now out of later collections.

    A process calls it once its long-lived data is built (a producer's
    timelines). Frozen objects (``gc.freeze``) are still freed by reference
    counting.
    """
    gc.collect()
    gc.freeze()


class _Calm:
    def __init__(self, thaw_s: float) -> None:
        self.thaw_s = thaw_s
        self.thawed_at = time.monotonic()

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = time.monotonic()
        if now - self.thawed_at >= self.thaw_s:
            # The next full collection walks everything once, and frees the cycles
            # (closed connections) that died among the frozen objects.
            gc.unfreeze()
            self.thawed_at = now
        else:
            gc.freeze()


_installed: _Calm | None = None


def calm(thaw_s: float = THAW_S) -> None:
    """After each full collection, freeze what survived it: the next one walks only
    what came since, so a service's long-lived objects stop costing a pause each
    time. Every ``thaw_s`` one full collection walks everything again. For a
    service's process (the CLI's commands, the load test's processes); once per
    process."""
    global _installed
    if _installed is None:
        _installed = _Calm(thaw_s)
        gc.callbacks.append(_installed)
