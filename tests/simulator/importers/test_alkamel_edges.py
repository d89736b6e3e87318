"""Official results as they come: what a classification may not know is imported as unknown.

IMSA classifies a car that did one lap with ``FL_LAPNUM`` 0 and no fastest
lap, a car that never crossed the line with 0 laps, a car with no drivers
named, and gives gaps in laps or in time. None of these refuses the race.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from chequered.cli.main import main
from chequered.contract.events import Lap, SessionClosed
from simulator.importers.alkamel import Options, decode, import_timing
from simulator.recording import io as recording_io
from simulator.recording.validate import validate
from simulator.timeline.timing_replay import replay
from tests.conftest import TESTS_DATA

DATA = TESTS_DATA / "timing"
LAGUNA = "2022_07-weathertech-raceway-laguna-seca_race"


def _export(tmp_path: Path) -> tuple[Path, Path]:
    """Laguna Seca with two cars added at the end of the classification: #97 classified
    with one lap and no fastest lap (FL_LAPNUM 0), #98 classified with no lap at all;
    neither names its drivers."""
    laps_text = (DATA / f"{LAGUNA}-laps.csv").read_text(encoding="utf-8-sig")
    results_text = (DATA / f"{LAGUNA}-results.csv").read_text(encoding="utf-8-sig")
    lap_rows = list(csv.reader(io.StringIO(laps_text)))
    header = [h.strip() for h in lap_rows[0]]
    first = next(r for r in lap_rows[1:] if r[header.index("NUMBER")].strip() == "10")
    extra_lap = list(first)
    extra_lap[header.index("NUMBER")] = "97"
    for column in ("DRIVER_NAME", "DRIVER_NUMBER", "PIT_TIME"):
        if column in header:
            extra_lap[header.index(column)] = ""
    result_rows = list(csv.reader(io.StringIO(results_text)))
    rh = result_rows[0]
    last = result_rows[-1]
    n = len(result_rows) - 1

    def row(position: int, car: str, laps: str, gap: str) -> list[str]:
        cells = [""] * len(last)
        values = {
            "POSITION": str(position),
            "NUMBER": car,
            "STATUS": "Classified",
            "LAPS": laps,
            "TOTAL_TIME": "",
            "GAP_FIRST": gap,
            "GAP_PREVIOUS": gap,
            "FL_LAPNUM": "0",
            "FL_TIME": "",
            "TEAM": "Late Entry Racing",
            "CLASS": "GTD",
            "VEHICLE": "Porsche 911 GT3 R",
        }
        for key, value in values.items():
            cells[rh.index(key)] = value
        return cells

    result_rows.append(row(n + 1, "97", "1", "116 Laps"))
    result_rows.append(row(n + 2, "98", "0", "117 Laps"))
    laps_path = tmp_path / f"{LAGUNA}-laps.csv"
    results_path = tmp_path / f"{LAGUNA}-results.csv"
    for path, rows in ((laps_path, [*lap_rows, extra_lap]), (results_path, result_rows)):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\r\n").writerows(rows)
        path.write_bytes(("\ufeff" + buffer.getvalue()).encode())
    return laps_path, results_path


def test_a_classification_that_does_not_know_everything_imports(tmp_path: Path) -> None:
    laps, results = _export(tmp_path)
    rec = import_timing(
        decode(laps.read_bytes()),
        decode(results.read_bytes()),
        laps_name=str(laps),
        results_name=str(results),
        options=Options(),
    ).recording
    rec = recording_io.loads(recording_io.dumps(rec))
    rows = {r.number: r for r in rec.classification}
    one = rows["97"]
    assert (one.laps, one.best_lap, one.best_lap_ms, one.status) == (1, None, None, "classified")
    assert one.gap_laps == 116 and one.gap_ms is None
    none = rows["98"]
    assert (none.laps, none.best_lap, none.best_lap_ms, none.total_ms) == (0, None, None, None)
    assert rec.entry("98") is not None and rec.entry("98").drivers == []  # type: ignore[union-attr]
    assert [i for i in validate(rec) if i.severity == "error"] == []
    events = replay(rec, race="laguna")
    assert sum(1 for e in events if isinstance(e, Lap) and e.car == "97") == 1
    closed = events[-1]
    assert isinstance(closed, SessionClosed)
    assert [r.car for r in closed.classification][-2:] == ["97", "98"]
    assert closed.classification[-1].laps == 0


def test_the_command_writes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = _export(tmp_path)
    out = tmp_path / "laguna.json"
    status = main(["import-timing", str(laps), "--results", str(results), "-o", str(out)])
    assert status == 0, capsys.readouterr().err
    assert recording_io.load(out).classification[-1].number == "98"
