"""What the benchmarks feed the code and how they write down a figure.

The workload is a real race: the 2013 Monterey recording through the
timeline, as the producer would replay it. A figure is a measured value with
its unit, the target it is held against (if any) and the baselines measured
beside it in the same run.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from chequered.contract.events import Event

DEFAULT_RECORDING = "alms-2013-monterey-race"

_cache: dict[tuple[str, int, str], list[Event]] = {}


def race_events(
    race: str = "bench-0001", *, seed: int = 0, recording: str = DEFAULT_RECORDING
) -> list[Event]:
    """The ordered events of one race, as the timeline builds them (cached per process)."""
    key = (recording, seed, race)
    if key not in _cache:
        from simulator.recording import io as recording_io
        from simulator.timeline import build as timeline

        rec = recording_io.load(recording_io.find(recording))
        _cache[key] = list(timeline.build(rec, seed=seed, race=race))
    return _cache[key]


def relabel(events: Sequence[Event], race: str) -> list[Event]:
    """The same events under another race id."""
    return [msgspec.structs.replace(e, race=race) for e in events]


def best_of(repeat: int, fn: Callable[[], Any]) -> float:
    """Least wall time of ``repeat`` calls, in seconds (the least disturbed run)."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def figure(
    what: str,
    value: float,
    unit: str,
    *,
    target: float | None = None,
    higher_is_better: bool = True,
    baselines: dict[str, float] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One measured figure; ``baselines`` maps a name to the same measure of a baseline.

    ``ratios`` says how many times better (> 1) or worse (< 1) the figure is
    than each baseline, whichever way "better" points for this unit.
    """
    out: dict[str, Any] = {
        "what": what,
        "value": round(value, 4),
        "unit": unit,
        "better": "higher" if higher_is_better else "lower",
    }
    if target is not None:
        out["target"] = target
        out["met"] = value >= target if higher_is_better else value <= target
    if baselines:
        out["baselines"] = {k: round(v, 4) for k, v in baselines.items()}
        out["ratios"] = {
            k: round((value / v) if higher_is_better else (v / value), 3)
            for k, v in baselines.items()
            if v and value
        }
    if note:
        out["note"] = note
    return out
