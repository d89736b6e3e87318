"""Compare a synthesised Monterey 2013 race with the real Laguna Seca 2022 timing.

    python -m bench.realism_report [--seeds 10] [--csv PATH] [--race NAME]

Prints a Markdown table (the one in docs/TIMELINE.md): green-flag laps over
each car's best, stint lengths, pit lane times, laps under yellow.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from simulator.recording import io as recording_io
from simulator.timeline import build as timeline
from simulator.timeline import realism

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CSV = REPO.parent / "shared/data/imsa/2022_07-weathertech-raceway-laguna-seca_race-laps.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--race", default="alms-2013-monterey-race")
    args = parser.parse_args()
    real = realism.from_alkamel_csv(args.csv.read_text(encoding="utf-8-sig"))
    recording = recording_io.load(recording_io.find(args.race))
    rows: list[realism.LapRow] = []
    for seed in range(args.seeds):
        rows.extend(realism.from_events(timeline.build(recording, seed=seed), run=f"{seed}:"))
    print(
        realism.report(
            realism.summarise(real),
            realism.summarise(rows),
            real_name="Laguna Seca 2022 (real)",
            synthetic_name=f"{args.race}, seeds 0-{args.seeds - 1}",
        )
    )


if __name__ == "__main__":
    main()
