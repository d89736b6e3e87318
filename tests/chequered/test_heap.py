"""The collector policy of a service's process (``chequered.heap``)."""

from __future__ import annotations

import gc

from chequered import heap


def test_a_full_collection_freezes_what_survived_and_a_thaw_lets_all_be_walked() -> None:
    keep = [[n] for n in range(1000)]  # long-lived objects the collector tracks
    calm = heap._Calm(thaw_s=3600.0)
    try:
        calm("stop", {"generation": 1, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() == 0, "only a full collection freezes"
        calm("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() >= len(keep)
        calm.thaw_s = 0.0  # due: the next full collection walks everything again
        calm("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_a_cycle_that_dies_frozen_is_freed_after_the_thaw() -> None:
    import weakref

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle: only the collector frees it
    alive = weakref.ref(a)
    calm = heap._Calm(thaw_s=3600.0)
    try:
        calm("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        del a, b
        gc.collect()
        assert alive() is not None, "frozen: kept until the thaw"
        calm.thaw_s = 0.0
        calm("stop", {"generation": 2, "collected": 0, "uncollectable": 0})
        gc.collect()
        assert alive() is None
    finally:
        gc.unfreeze()
