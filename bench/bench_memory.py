"""Projector memory with 1,000 concurrent races: the resident size of one projector process.

A fresh process holds one ``consumers.projector.Projector`` (the projector's
state and decisions, without the broker connection) and feeds it the Monterey
race's events, as the producer batches them, under 1,000 race ids, each race
to half distance (the fold's state per race does not grow with distance: it
holds cars, not laps). After every message it computes the publications, as
its flush does, so that each race also holds its last published board. The
figure is the process's resident set size at the end. Target: under 150 MB.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.workload import figure

TARGET_MB = 150.0
RACES = 1000
FRACTION = 0.5
BATCH_EVENTS = 500
"""As the producer batches events when far ahead of real time."""
TIMEOUT_S = 1800.0


def _rss() -> int:
    import psutil

    rss: int = psutil.Process().memory_info().rss
    return rss


def _child(conn: Connection, races: int, fraction: float) -> None:
    from bench.workload import race_events
    from broker.bus import Message
    from chequered.contract import topics
    from chequered.contract.events import Batch, encode
    from consumers.projector.service import Projector

    template = "mem-0000"
    events = race_events(template)
    events = events[: max(2, int(len(events) * fraction))]
    payloads = [
        encode(Batch(race=template, events=events[i : i + BATCH_EVENTS]))
        for i in range(0, len(events), BATCH_EVENTS)
    ]
    folded_per_race = len(events)
    del events
    gc.collect()
    projector = Projector()
    baseline = _rss()
    marker = f'"race":"{template}"'.encode()
    started = time.process_time()
    peak = baseline
    for r in range(1, races + 1):
        race = f"mem-{r:04d}"
        topic = topics.topic(race, topics.EVENTS)
        mine = f'"race":"{race}"'.encode()
        for payload in payloads:
            projector.handle(Message(topic, payload.replace(marker, mine)))
            projector.publications()
        projector.core.pending_acks.clear()
        if r % 100 == 0:
            peak = max(peak, _rss())
    cpu = time.process_time() - started
    gc.collect()
    end = _rss()
    conn.send(
        {
            "races": len(projector.standings.races),
            "events_per_race": folded_per_race,
            "messages_per_race": len(payloads),
            "baseline_rss": baseline,
            "rss": end,
            "peak_rss": max(peak, end),
            "cpu_s": cpu,
            "events_per_cpu_s": races * folded_per_race / cpu if cpu else 0.0,
            "applied": projector.metrics.applied.value,
        }
    )


def measure(races: int = RACES, fraction: float = FRACTION) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, races, fraction))
    proc.start()
    try:
        if not parent.poll(TIMEOUT_S):
            raise RuntimeError("the memory benchmark did not finish")
        result: dict[str, Any] = parent.recv()
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    return result


def run(quick: bool = False) -> dict[str, Any]:
    races = 100 if quick else RACES
    result = measure(races)
    mb = result["rss"] / 2**20
    per_race_kb = (result["rss"] - result["baseline_rss"]) / races / 1024
    return {
        "name": "memory",
        **result,
        "figures": [
            figure(
                f"projector process RSS with {races} races folded "
                f"({result['events_per_race']} events each)",
                mb,
                "MB",
                target=TARGET_MB if races == RACES else None,
                higher_is_better=False,
                note=f"{per_race_kb:.1f} KB per race above the empty projector's "
                f"{result['baseline_rss'] / 2**20:.1f} MB",
            )
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
