"""Every benchmark in one command: ``python -m bench [NAME ...] [--quick]``.

Runs each benchmark module (its ``run(quick)`` when it has one, else its
``main()`` with its output kept), writes ``bench/results/<name>.json`` with the
machine it ran on, and prints one table of every figure against its target.
``loadtest`` is the target load test (100 races at 60x, 2,000 clients, 60 s).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

BENCHES: dict[str, str] = {
    "stages": "bench.bench_stages",
    "fold": "bench.bench_fold",
    "timeline": "bench.bench_timeline",
    "timing": "bench.bench_timing",
    "codec": "bench.bench_codec",
    "broker": "bench.bench_broker",
    "pipeline": "bench.bench_pipeline",
    "fanout": "bench.bench_fanout",
    "memory": "bench.bench_memory",
    "sockets": "bench.bench_sockets",
    "loadtest": "bench.run",
}
"""Name to module; ``loadtest`` is run by this module itself."""

LOADTEST_TARGET = {"races": 100, "speed": 60.0, "clients": 2000, "duration_s": 60.0}
LOADTEST_QUICK = {"races": 10, "speed": 60.0, "clients": 200, "duration_s": 15.0}
P99_TARGET_MS = 100.0
"""The target's p99, emission to websocket receipt (the aim is 50 ms)."""


def loadtest_bench(quick: bool = False) -> dict[str, Any]:
    """The load test of the targets, as a benchmark: p99 latency and loss."""
    from loadtest import run as loadtest

    shape = LOADTEST_QUICK if quick else LOADTEST_TARGET
    out = RESULTS / f"loadtest-{shape['races']}x{shape['speed']:g}-{shape['clients']}"
    config = loadtest.LoadConfig(
        races=int(shape["races"]),
        speed=shape["speed"],
        clients=int(shape["clients"]),
        duration_s=shape["duration_s"],
        out=out,
        progress=sys.stderr,
    )
    report = loadtest.run(config)
    lat = report["latency_ms"]
    loss = report["loss"]
    ev = report["events"]
    ws = report["websocket"]
    procs = report["processes"]
    from bench.workload import figure

    command = (
        f"chequered loadtest --races {shape['races']} --speed {shape['speed']:g} "
        f"--clients {shape['clients']} --duration {shape['duration_s']:g}"
    )
    faults = loss["gaps"] + loss["duplicates"] + loss["overlaps"] + loss["clients_behind"]
    target = not quick
    return {
        "name": "loadtest",
        "command": command,
        "report": str(out / "report.json"),
        "summary": {
            "latency_ms": lat,
            "loss": loss,
            "events": {k: v for k, v in ev.items() if k != "per_race"},
            "websocket": ws,
            "processes": procs,
            "cpu_share": report["cpu_share"],
            "unit_cost_us": report["unit_cost_us"],
            "timing": report["timing"],
        },
        "verdict": report["verdict"]["line"],
        "figures": [
            figure(
                f"{command}: p99 latency, emission to websocket receipt",
                lat["p99"],
                "ms",
                target=P99_TARGET_MS if target else None,
                higher_is_better=False,
                note=f"p50 {lat['p50']} ms, p99.9 {lat['p99.9']} ms, max {lat['max']} ms",
            ),
            figure(
                f"{command}: gaps + duplicates + clients left behind",
                faults,
                "count",
                target=0 if target else None,
                higher_is_better=False,
                note=f"resyncs {loss['resyncs']}, clients connected {ws['connected']}",
            ),
            figure(f"{command}: events produced", ev["produced_per_s"], "events/s"),
            figure(f"{command}: websocket messages delivered", ws["messages_per_s"], "msgs/s"),
        ],
    }


def run(quick: bool = False) -> dict[str, Any]:
    return loadtest_bench(quick)


def _run_one(name: str, quick: bool) -> dict[str, Any]:
    module = importlib.import_module(BENCHES[name])
    if name == "loadtest":
        return loadtest_bench(quick)
    runner: Callable[..., Any] | None = getattr(module, "run", None)
    if runner is not None:
        result: dict[str, Any] = runner(quick=quick)
        return result
    main: Callable[[], Any] | None = getattr(module, "main", None)
    if main is None:
        raise RuntimeError(f"{BENCHES[name]} has neither run() nor main()")
    # A benchmark that prints its own table: keep what it printed.
    saved = sys.argv
    sys.argv = [BENCHES[name]]
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            status = main()
    finally:
        sys.argv = saved
    return {
        "name": name,
        "status": status if isinstance(status, int) else 0,
        "output": buffer.getvalue(),
        "figures": [],
    }


def _fmt(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def table(results: list[dict[str, Any]]) -> str:
    """Every figure, its target and verdict, and its ratio to each baseline."""
    rows = [("bench", "figure", "value", "target", "met", "vs baselines")]
    for result in results:
        for fig in result.get("figures", []):
            target = fig.get("target")
            cmp = "<=" if fig.get("better") == "lower" else ">="
            rows.append(
                (
                    result["name"],
                    fig["what"][:70],
                    f"{_fmt(fig['value'])} {fig['unit']}",
                    "" if target is None else f"{cmp} {_fmt(target)}",
                    "" if target is None else ("yes" if fig["met"] else "NO"),
                    ", ".join(f"{k}: x{v:g}" for k, v in fig.get("ratios", {}).items()),
                )
            )
        if result.get("error"):
            rows.append((result["name"], "FAILED: " + result["error"][:60], "", "", "NO", ""))
        elif result.get("output"):
            rows.append((result["name"], "(see its output in the results file)", "", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHES)}"
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    names = args.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    from loadtest.run import machine_info

    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    results: list[dict[str, Any]] = []
    failed = False
    for name in names:
        print(f"== {name}", file=sys.stderr, flush=True)
        load_before = os.getloadavg()
        started = time.time()
        try:
            result = _run_one(name, args.quick)
        except Exception as exc:
            traceback.print_exc()
            result = {"name": name, "error": f"{type(exc).__name__}: {exc}", "figures": []}
            failed = True
        result.setdefault("name", name)
        result["quick"] = args.quick
        result["seconds"] = round(time.time() - started, 1)
        result["machine"] = machine
        result["load_average_before"] = [round(x, 2) for x in load_before]
        result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
        result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
        suffix = "-quick" if args.quick else ""
        (args.out / f"{name}{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
        results.append(result)
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB, "
        f"Python {machine['python']}, {machine['mosquitto']}"
    )
    print(table(results))
    missed = [f for r in results for f in r.get("figures", []) if f.get("met") is False]
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
