"""Synthesis of a whole recorded race, against a 0.5 s target for Monterey 2013 (4 h, 36 cars).

Each seed is built ``--repeat`` times with ``timeline.build`` (recording to
numbered, positioned event log); the figure is the median over the seeds of
each seed's best, wall and CPU time, with the worst seed beside it. Also
run by ``python -m bench timeline``.

    python -m bench.bench_timeline [--race alms-2013-monterey-race] [--seeds 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from simulator.recording import io as recording_io
from simulator.timeline import build as timeline

TARGET_S = 0.5


def measure(race: str, seeds: int, repeat: int) -> tuple[int, list[float], list[float]]:
    """Events of seed 0, and per seed the best wall and CPU seconds of ``repeat`` builds."""
    recording = recording_io.load(recording_io.find(race))
    walls: list[float] = []
    cpus: list[float] = []
    events = 0
    for seed in range(seeds):
        best_wall = best_cpu = float("inf")
        for _ in range(repeat):
            w0, c0 = time.perf_counter(), time.process_time()
            log = timeline.build(recording, seed=seed)
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        walls.append(best_wall)
        cpus.append(best_cpu)
        if seed == 0:
            events = len(log)
    return events, walls, cpus


def run(quick: bool = False) -> dict[str, Any]:
    """For ``python -m bench``: Monterey's synthesis against the target, Baltimore beside it."""
    from bench.workload import figure

    seeds, repeat = (3, 1) if quick else (10, 3)
    figures = []
    for race in ("alms-2013-monterey-race", "alms-2013-baltimore-race"):
        events, walls, cpus = measure(race, seeds, repeat)
        target = TARGET_S if race == "alms-2013-monterey-race" else None
        figures.append(
            figure(
                f"timeline.build {race} ({events} events), median of seeds 0-{seeds - 1}",
                statistics.median(walls),
                "s",
                target=target,
                higher_is_better=False,
                note=f"worst seed {max(walls):.3f} s",
            )
        )
        figures.append(
            figure(
                f"the same, CPU time (worst seed {max(cpus):.3f} s)",
                statistics.median(cpus),
                "s",
                higher_is_better=False,
            )
        )
    return {
        "name": "timeline",
        "command": f"python -m bench.bench_timeline --seeds {seeds} --repeat {repeat}",
        "figures": figures,
        "quick": quick,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--race", default="alms-2013-monterey-race")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    events, walls, cpus = measure(args.race, args.seeds, args.repeat)
    median = statistics.median(walls)
    print(f"{args.race}: {events} events (seed 0), seeds 0-{args.seeds - 1}, best of {args.repeat}")
    print(f"  wall median {median:.3f} s, worst {max(walls):.3f} s")
    print(f"  cpu  median {statistics.median(cpus):.3f} s, worst {max(cpus):.3f} s")
    verdict = "meets" if median <= TARGET_S else "misses"
    print(f"  {verdict} the {TARGET_S} s target (median wall)")


if __name__ == "__main__":
    main()
