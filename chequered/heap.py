"""Long-lived data and the garbage collector."""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then leave every object alive now out of later collections.

    A process calls it once its long-lived data is built: a producer's timelines
    are millions of objects, and each of CPython's full collections walks every
    object it tracks. With 100 Monterey timelines in, a full collection took 0.5
    to 0.8 s in the middle of a replay, and every event waited for it. Frozen
    objects (``gc.freeze``) are still freed by reference counting.
    """
    gc.collect()
    gc.freeze()
