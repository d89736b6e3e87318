"""``chequered validate`` explains every problem of a recording, each naming file and row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from chequered.cli.main import main
from simulator.recording import io as recording_io
from simulator.recording.format import LapRecord
from simulator.recording.validate import validate
from tests.conftest import REPLAYS, TESTS_DATA

DATA = TESTS_DATA / "recordings"
MONTEREY = REPLAYS / "alms-2013-monterey-race.json"

Doc = dict[str, Any]


def _monterey() -> Doc:
    doc: Doc = json.loads(MONTEREY.read_text(encoding="utf-8"))
    return doc


def _row(doc: Doc, number: str, section: str = "classification") -> Doc:
    return next(r for r in doc[section] if r["number"] == number)


def _validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Callable[[Doc], None]
) -> tuple[str, list[str]]:
    doc = _monterey()
    change(doc)
    path = tmp_path / "bad-race.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    status = main(["validate", str(path)])
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("chequered validate:")]
    assert lines and all(line.startswith(f"{path}: ") for line in lines)
    return str(path), lines


def _one(lines: list[str], *parts: str) -> str:
    found = [line for line in lines if all(p in line for p in parts)]
    assert len(found) == 1, (parts, lines)
    return found[0]


def test_every_committed_recording_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in REPLAYS.glob("*.json"))
    assert main(["validate", *files]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok") == len(files)


def test_unknown_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "93")["cls"] = "GTE"

    _, lines = _validate(tmp_path, capsys, change)
    line = _one(lines, "$.classification[35] (car #93)", "unknown class 'GTE'")
    assert "known classes: GT, GTC, P1, P2, PC" in line
    _one(lines, "$.classification[35] (car #93)", "class GTE differs from the entry's class GT")


def test_duplicate_car_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "06", "entries")["number"] = "6"

    _, lines = _validate(tmp_path, capsys, change)
    line = _one(lines, "(car #6)", "duplicate car number #6")
    assert "$.entries[" in line and "each car is entered once" in line
    # The real #06 is now missing from the entries, and every row naming it says so.
    _one(lines, "$.classification[17] (car #06)", "results row for car #06, which is not entered")
    _one(lines, "(car #06)", "grid names car #06, which is not entered")


def test_laps_that_contradict_the_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "02")["laps"] = 90  # retired at 34th, but 85 laps for the 33rd

    _, lines = _validate(tmp_path, capsys, change)
    line = _one(lines, "$.classification[33] (car #02)", "laps contradict the order")
    assert "position 34 (retired) has 90 laps, more than position 33 (car #55, retired)" in line


def test_classified_car_behind_a_car_with_fewer_laps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "52")["laps"] = 147

    _, lines = _validate(tmp_path, capsys, change)
    line = _one(lines, "$.classification[4] (car #52)", "stands behind")
    assert "position 5 with 147 laps stands behind position 3 (car #551) with 146 laps" in line
    assert "fix the laps or the order" in line


def test_results_row_for_a_car_not_entered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "17")["number"] = "171"

    _, lines = _validate(tmp_path, capsys, change)
    line = _one(lines, "$.classification[9] (car #171)", "results row for car #171")
    assert "which is not entered; add an entry or correct the number" in line
    _one(lines, "(car #17)", "started but has no classification row")


def test_grid_naming_unknown_cars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(doc: Doc) -> None:
        doc["grid"].append("777")
        doc["grid"].append("12")

    _, lines = _validate(tmp_path, capsys, change)
    _one(lines, "$.grid[36] (car #777)", "grid names car #777, which is not entered")
    _one(lines, "$.grid[37] (car #12)", "car #12 is on the grid twice")


def test_note_naming_a_car_not_entered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def change(doc: Doc) -> None:
        doc["notes"][0]["cars"] = ["0", "660"]

    _, lines = _validate(tmp_path, capsys, change)
    _one(lines, "$.notes[0]", "note names car #660, which is not entered")


def test_every_problem_is_reported_not_only_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def change(doc: Doc) -> None:
        _row(doc, "93")["cls"] = "GTE"
        _row(doc, "52")["laps"] = 147
        doc["grid"].append("777")
        doc["facts"]["circuit"]["length_km"] = 4.0
        doc["facts"]["length"] = {"duration_s": 14400, "laps": 150}

    _, lines = _validate(tmp_path, capsys, change)
    _one(lines, "(car #93)", "unknown class 'GTE'")
    _one(lines, "(car #52)", "stands behind")
    _one(lines, "(car #777)", "not entered")
    _one(lines, "$.facts.circuit", "length_km 4.0 and length_mi 2.238 disagree")
    _one(lines, "$.facts.length", "set duration_s or laps, not both")


def test_malformed_json_names_line_and_column(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "malformed.json"
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: line 18 column 3: not valid JSON" in err
    assert "fix the syntax at that place" in err


def test_wrong_types_are_each_reported(capsys: pytest.CaptureFixture[str]) -> None:
    path = DATA / "wrong-types.json"
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    _one(lines, f"{path}: $.facts.circuit.turns:", "got `str`")
    _one(lines, f"{path}: $.entries[1].number (car #16):", "Expected `str`, got `int`")
    _one(lines, f"{path}: $.qualifying[0].best_ms (car #12):", "Expected `int` >= 0")
    _one(lines, f"{path}: $.classification[2].laps (car #551):", "got `str`")
    assert all("correct this value" in line for line in lines[:-1])


def test_not_a_recording_and_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listing = tmp_path / "list.json"
    listing.write_text("[1, 2]")
    assert main(["validate", str(listing), str(tmp_path / "none.json")]) == 2
    err = capsys.readouterr().err
    assert f"{listing}: $: a recording is a JSON object" in err
    assert f"{tmp_path / 'none.json'}: file: cannot read: No such file or directory" in err
    assert "2 of 2 file(s) have problems" in err


def test_missing_sections_and_unknown_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "thin.json"
    path.write_text(json.dumps({"classes": ["GT"], "entrys": []}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: $: missing required section 'facts'" in err
    assert f"{path}: $: missing required section 'entries'" in err
    assert f"{path}: $.entrys: unknown section 'entrys'" in err


def test_lap_records_that_go_back_in_time() -> None:
    recording = recording_io.load(DATA / "with-laps.json")
    assert validate(recording) == []
    laps = list(recording.laps)
    laps.append(LapRecord(number="1", lap=2, lap_ms=1, sectors_ms=[], elapsed_ms=5))
    laps.append(LapRecord(number="9", lap=1, lap_ms=1, sectors_ms=[], elapsed_ms=5))
    issues = validate(replace(recording, laps=laps))
    messages = [f"{i.where}: {i.message}" for i in issues]
    assert any(
        m.startswith("$.laps[4] (car #1): lap 2 at 5 ms comes after lap 2") for m in messages
    )
    assert any(m.startswith("$.laps[5] (car #9): car #9 is not in the entries") for m in messages)
