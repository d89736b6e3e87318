"""Import and replay of a 12-hour Al Kamel lap export (about 2.5 MB), against a 2 s target.

The export is generated here, deterministically, by running each car of the
Laguna Seca 2022 race through its real laps back to back for 12 hours, with
copies of the field under new numbers until the file passes 2.5 MB. Nothing
generated is written into the repository.

    python -m bench.bench_timing [--hours 12] [--min-mb 2.5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import csv
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from chequered.cli.timing import save_imported
from simulator.importers.alkamel import Imported, decode, format_time, import_timing, parse_time
from simulator.timeline.timing_replay import replay

SOURCE = (
    Path(__file__).resolve().parent.parent
    / "tests"
    / "data"
    / "timing"
    / "2022_07-weathertech-raceway-laguna-seca_race"
)
TARGET_S = 2.0
T = TypeVar("T")


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        table = list(csv.reader(handle))
    return table[0], table[1:]


def generate(hours: float, min_bytes: int) -> tuple[bytes, bytes]:
    """A lap export and its results: every car loops its real laps for ``hours``."""
    header, rows = _rows(SOURCE.with_name(SOURCE.name + "-laps.csv"))
    res_header, res_rows = _rows(SOURCE.with_name(SOURCE.name + "-results.csv"))
    col = {h.strip(): i for i, h in enumerate(header)}
    rcol = {h.strip(): i for i, h in enumerate(res_header)}
    per_car: dict[str, list[list[str]]] = {}
    for row in rows:
        per_car.setdefault(row[col["NUMBER"]], []).append(row)
    results_of = {r[rcol["NUMBER"]]: r for r in res_rows}
    end_ms = int(hours * 3_600_000)

    out_rows: list[list[str]] = []
    results: list[tuple[int, int, list[str]]] = []
    size = 0
    copy = 0
    while size < min_bytes:
        for number, laps in per_car.items():
            if copy and size >= min_bytes:
                break  # the copies only fill the field up to the size asked for
            car = number if copy == 0 else f"{chr(ord('A') + copy - 1)}{number}"
            elapsed = 0
            lap_no = 0
            best: tuple[int, int] | None = None
            done = False
            while not done:
                for row in laps:
                    lap_ms = parse_time(row[col["LAP_TIME"]]) or 0
                    elapsed += lap_ms
                    lap_no += 1
                    new = list(row)
                    new[col["NUMBER"]] = car
                    new[col["LAP_NUMBER"]] = str(lap_no)
                    new[col["ELAPSED"]] = format_time(elapsed)
                    new[col["HOUR"]] = format_time(elapsed + 43_630_014)
                    flag = row[col["FLAG_AT_FL"]]
                    new[col["FLAG_AT_FL"]] = "GF" if flag == "FF" else flag
                    if lap_no == 1:
                        new[col["PIT_TIME"]] = ""
                    if best is None or lap_ms < best[0]:
                        best = (lap_ms, lap_no)
                    if elapsed >= end_ms:
                        new[col["FLAG_AT_FL"]] = "FF"
                        done = True
                    out_rows.append(new)
                    size += sum(len(c) + 1 for c in new) + 1
                    if done:
                        break
            assert best is not None
            result = list(results_of[number])
            result[rcol["NUMBER"]] = car
            result[rcol["LAPS"]] = str(lap_no)
            result[rcol["TOTAL_TIME"]] = format_time(elapsed)
            result[rcol["FL_TIME"]] = format_time(best[0])
            result[rcol["FL_LAPNUM"]] = str(best[1])
            results.append((lap_no, elapsed, result))
        copy += 1
    results.sort(key=lambda r: (-r[0], r[1]))
    leader_laps, leader_t, _ = results[0]
    prev: tuple[int, int] | None = None
    for pos, (laps_done, t, result) in enumerate(results, start=1):
        result[rcol["POSITION"]] = str(pos)
        result[rcol["STATUS"]] = "Classified"
        result[rcol["GAP_FIRST"]] = _gap(leader_laps, leader_t, laps_done, t) if prev else "-"
        result[rcol["GAP_PREVIOUS"]] = _gap(prev[0], prev[1], laps_done, t) if prev else "-"
        prev = (laps_done, t)
    return _csv(header, out_rows), _csv(res_header, [r for _, _, r in results])


def _gap(ahead_laps: int, ahead_t: int, laps: int, t: int) -> str:
    if ahead_laps == laps:
        return "+" + format_time(t - ahead_t)
    n = ahead_laps - laps
    return f"{n} Lap" if n == 1 else f"{n} Laps"


def _csv(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    return ("\ufeff" + buffer.getvalue()).encode()


CPU: dict[str, float] = {}
"""Best CPU time of each measured step (less sensitive than wall time to a busy machine)."""


def best_of(repeat: int, fn: Callable[[], T], name: str = "") -> tuple[float, T]:
    """Best wall time of ``repeat`` runs (and the best CPU time, in ``CPU[name]``)."""
    times: list[float] = []
    cpu: list[float] = []
    result: T | None = None
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    assert result is not None
    CPU[name] = min(cpu)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=12.0)
    parser.add_argument("--min-mb", type=float, default=2.5)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    laps_bytes, results_bytes = generate(args.hours, int(args.min_mb * 1_000_000))
    laps_name = "2022_12-hour-weathertech-raceway-laguna-seca_race-laps.csv"
    results_name = "2022_12-hour-weathertech-raceway-laguna-seca_race-results.csv"

    def do_import() -> Imported:
        return import_timing(
            decode(laps_bytes),
            decode(results_bytes),
            laps_name=laps_name,
            results_name=results_name,
        )

    import_s, imported = best_of(args.repeat, do_import, "import")
    rec = imported.recording
    replay_s, events = best_of(args.repeat, lambda: replay(rec, race=rec.facts.id), "replay")

    with tempfile.TemporaryDirectory() as tmp:
        laps_path = Path(tmp) / laps_name
        results_path = Path(tmp) / results_name
        laps_path.write_bytes(laps_bytes)
        results_path.write_bytes(results_bytes)
        out = Path(tmp) / "out.json"

        def end_to_end() -> int:
            # What `chequered import-timing` does: read, import, check, save atomically.
            got = import_timing(
                decode(laps_path.read_bytes()),
                decode(results_path.read_bytes()),
                laps_name=str(laps_path),
                results_name=str(results_path),
            )
            save_imported(got, out)
            return out.stat().st_size

        cli_s, json_size = best_of(args.repeat, end_to_end, "cli")

    from simulator.timeline import build as timeline

    timeline_s, _ = best_of(args.repeat, lambda: timeline.build(rec, seed=0), "timeline")

    hours = (rec.facts.length.duration_s or 0) / 3600
    print(
        f"lap file: {len(laps_bytes) / 1e6:.2f} MB, {len(rec.laps)} laps, "
        f"{len(rec.entries)} cars, {hours:.1f} h; "
        f"recording JSON {json_size / 1e6:.2f} MB; {len(events)} events"
    )
    rows = [
        ("import (parse + build recording)", import_s, CPU["import"]),
        ("import-timing end to end (read, import, check, save)", cli_s, CPU["cli"]),
        ("replay (events, assembled)", replay_s, CPU["replay"]),
        ("timeline.build (dispatches to the replay)", timeline_s, CPU["timeline"]),
    ]
    ok = True
    print(f"  {'step':<54} {'wall':>7} {'cpu':>7}  (target < {TARGET_S:.0f} s wall)")
    for name, seconds, cpu in rows:
        verdict = "ok" if seconds < TARGET_S else "OVER"
        ok = ok and seconds < TARGET_S
        print(f"  {name:<54} {seconds:6.3f}s {cpu:6.3f}s  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
