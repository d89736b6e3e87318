"""CPU time per event and per frame of every stage, all measured in one load test.

One run of the real pipeline (producer, Mosquitto, projector, gateway and the
load test's websocket clients, each in processes of their own) replays the
2013 Monterey race at 60x, at the scale target's load (100 races, 2,000
clients). Each process's CPU time over the same window (from
just before the races resume to the end of the drain) is divided by the work
that stage did in it: the events the producer published and the projector
folded (its MQTT work included: it is the same process), the frames the
gateway sent and the clients received. Beside them: the mean delta frame the
clients got. Each figure is held against its budget; the whole run's CPU split
over the stages is in the result too.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.workload import DEFAULT_RECORDING, figure

SHAPE = {"races": 100, "speed": 60.0, "clients": 2000, "duration_s": 30.0}
"""The scale target's load, where the budgets are set: each stage is busy, its batches
are large (at 25 races and 200 clients every stage spends a half to twice as much per
unit, for a lower latency)."""
QUICK = {"races": 6, "speed": 60.0, "clients": 40, "duration_s": 10.0}

BUDGET_US = {
    "producer_per_event": 20.0,
    "projector_per_event": 60.0,
    "gateway_per_frame": 10.0,
    "clients_per_frame": 10.0,
}
"""CPU time per unit each stage may take (µs), from the scale target (PERFORMANCE.md)."""
DELTA_BYTES_BUDGET = 300.0
"""Mean websocket delta frame (bytes) at Monterey 60x."""

WHAT = {
    "producer_per_event": "producer CPU per event published",
    "projector_per_event": "projector CPU per event folded (its MQTT work included)",
    "gateway_per_frame": "gateway CPU per websocket frame sent",
    "clients_per_frame": "load-test client CPU per websocket frame received",
    "broker_per_event": "Mosquitto CPU per event (in and out, standings too)",
}


def run(quick: bool = False, *, projectors: int = 1, gateways: int = 1) -> dict[str, Any]:
    from loadtest import run as loadtest

    shape = QUICK if quick else SHAPE
    with tempfile.TemporaryDirectory(prefix="chequered-bench-stages-") as scratch:
        config = loadtest.LoadConfig(
            races=int(shape["races"]),
            speed=shape["speed"],
            clients=int(shape["clients"]),
            duration_s=shape["duration_s"],
            recording=DEFAULT_RECORDING,
            out=Path(scratch),
            progress=sys.stderr,
            projectors=projectors,
            gateways=gateways,
        )
        report = loadtest.run(config)
    costs: dict[str, float | None] = report["unit_cost_us"]
    kernel: dict[str, float | None] = report["unit_cost_system_us"]
    ws = report["websocket"]
    command = (
        f"chequered loadtest --races {shape['races']} --speed {shape['speed']:g} "
        f"--clients {shape['clients']} --duration {shape['duration_s']:g}"
        + (f" --projectors {projectors}" if projectors > 1 else "")
        + (f" --gateways {gateways}" if gateways > 1 else "")
    )
    figures = []
    for key, what in WHAT.items():
        value = costs.get(key)
        if value is None:
            continue
        figures.append(
            figure(
                what,
                value,
                "µs",
                target=BUDGET_US.get(key),
                higher_is_better=False,
                note=command
                + (f"; of which {kernel[key]:g} µs system time" if kernel.get(key) else ""),
            )
        )
    figures.append(
        figure(
            "mean websocket delta, Monterey 60x, encoded (uncompressed clients)",
            ws["mean_delta_bytes"],
            "bytes",
            higher_is_better=False,
            note=f"{ws['deltas']:,} deltas of {ws['messages']:,} frames; {command}; the "
            f"budget of {DELTA_BYTES_BUDGET:g} bytes is the frame on the wire, which a client "
            "that asks for permessage-deflate gets (python -m bench fold)",
        )
    )
    return {
        "name": "stages",
        "command": command,
        "unit_cost_us": costs,
        "unit_cost_system_us": kernel,
        "budget_us": BUDGET_US,
        "cpu_share": report["cpu_share"],
        "processes": report["processes"],
        "events": {k: v for k, v in report["events"].items() if k != "per_race"},
        "websocket": ws,
        "latency_ms": report["latency_ms"],
        "loss": report["loss"],
        "verdict": report["verdict"],
        "figures": figures,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
