"""Codec throughput: events and batches encoded and decoded with the wire contract.

Beside each msgspec figure, the same work with the standard library's json
(to builtins and back), so that the ratio says what the typed codec buys.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bench.workload import best_of, figure, race_events
from chequered.contract import events as ev

BATCH_EVENTS = 100
REPEAT = 5


def run(quick: bool = False) -> dict[str, Any]:
    events = race_events()
    if quick:
        events = events[:5000]
    n = len(events)
    repeat = 2 if quick else REPEAT
    singles = [ev.encode(e) for e in events]
    batches = [
        ev.Batch(race=events[0].race, events=events[i : i + BATCH_EVENTS])
        for i in range(0, n, BATCH_EVENTS)
    ]
    batch_payloads = [ev.encode(b) for b in batches]
    builtins = [msgspec.to_builtins(e) for e in events]
    stdlib_payloads = [json.dumps(b).encode() for b in builtins]

    enc = best_of(repeat, lambda: [ev.encode(e) for e in events])
    dec = best_of(repeat, lambda: [ev.decode(p) for p in singles])
    enc_batch = best_of(repeat, lambda: [ev.encode(b) for b in batches])
    dec_batch = best_of(repeat, lambda: [ev.unbatch(ev.decode(p)) for p in batch_payloads])
    std_enc = best_of(repeat, lambda: [json.dumps(msgspec.to_builtins(e)).encode() for e in events])
    std_dec = best_of(repeat, lambda: [json.loads(p) for p in stdlib_payloads])

    figures = [
        figure(
            "encode one event per message",
            n / enc,
            "events/s",
            baselines={"stdlib json": n / std_enc},
        ),
        figure(
            "decode and validate one event per message",
            n / dec,
            "events/s",
            baselines={"stdlib json (no validation)": n / std_dec},
        ),
        figure(f"encode batches of {BATCH_EVENTS}", n / enc_batch, "events/s"),
        figure(
            f"decode, validate and unbatch batches of {BATCH_EVENTS}", n / dec_batch, "events/s"
        ),
    ]
    return {
        "name": "codec",
        "events": n,
        "mean_event_bytes": round(sum(map(len, singles)) / n, 1),
        "mean_batch_bytes": round(sum(map(len, batch_payloads)) / len(batch_payloads), 1),
        "figures": figures,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
