"""The Al Kamel importer: messy but valid exports import, bad ones are refused clearly.

Bad input goes through the command line, as a user meets it: one line naming
the file and the line, exit status 2, and no output file (an existing one is
left as it was).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chequered.cli.main import main
from simulator.importers.alkamel import (
    Gap,
    Options,
    decode,
    import_timing,
    parse_gap,
    parse_time,
    read_table,
    scheduled_length,
)
from simulator.recording import io as recording_io
from simulator.recording.format import Recording
from tests.conftest import TESTS_DATA

DATA = TESTS_DATA / "timing"
LIME_ROCK = "2021_14-lime-rock-park_race"
LAGUNA = "2022_07-weathertech-raceway-laguna-seca_race"
LAGUNA_Q = "2022_07-weathertech-raceway-laguna-seca_qualifying"


# -- times and gaps ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("58.123", 58_123),
        ("1:16.970", 76_970),
        ("1:20:03.800", 4_803_800),
        ("0:00:46.160", 46_160),
        ("32:33.112", 1_953_112),
        ("1'58.056", 118_056),
        ("5:44'41.101", 20_681_101),
        ("1:16.97", 76_970),
        ("58", 58_000),
        ("+18.134", 18_134),
        ("24:01:00.500", 86_460_500),
    ],
)
def test_times_in_every_form_the_exports_use(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize(
    "text", ["", "abc", "1:75.000", "1:60:00.000", "1:2x.345", "1.2.3", "\u0661:\u0662\u0663.000"]
)
def test_what_is_not_a_time(text: str) -> None:
    assert parse_time(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("-", Gap()),
        ("", Gap()),
        ("+18.134", Gap(ms=18_134)),
        ("14.886", Gap(ms=14_886)),
        ("1 Lap", Gap(laps=1)),
        ("1 Laps", Gap(laps=1)),
        ("72 Laps", Gap(laps=72)),
        ("+2 laps", Gap(laps=2)),
        ("1:02.500", Gap(ms=62_500)),
        ("lots", None),
    ],
)
def test_gaps(text: str, expected: Gap | None) -> None:
    assert parse_gap(text) == expected


def test_scheduled_length_is_the_roundest_time_in_the_leaders_last_lap() -> None:
    # Laguna Seca 2022: the winner's last two crossings bracket 2h40.
    assert scheduled_length(9_589_230, 9_665_230) == 9600
    # A window holding only whole minutes that are not round: the nearest below.
    assert scheduled_length(5_258_000, 5_309_019) == 5280
    # A lap shorter than a minute with no whole minute in it: rounded down.
    assert scheduled_length(5_281_000, 5_309_019) == 5280
    assert scheduled_length(0, 1_800_500) == 1800


# -- tables --------------------------------------------------------------------------


def test_table_reads_bom_padded_headers_trailing_delimiter_and_crlf() -> None:
    text = "\ufeffNUMBER, LAP_NUMBER ,ELAPSED,\r\n7,1,1:40.000,\r\n7,2,3:20.000,\r\n"
    table = read_table(text, "x.csv")
    assert table.delimiter == ","
    assert table.columns == {"NUMBER": 0, "LAP_NUMBER": 1, "ELAPSED": 2}
    assert [(line, cells[:3]) for line, cells in table.rows] == [
        (2, ["7", "1", "1:40.000"]),
        (3, ["7", "2", "3:20.000"]),
    ]


def test_table_detects_semicolons_and_quotes() -> None:
    table = read_table('POS;TEAM;\n1;"Team; with a semicolon";\n', "x.csv")
    assert table.delimiter == ";"
    assert table.rows == [(2, ["1", "Team; with a semicolon", ""])]


# -- a WEC-style export: semicolons, apostrophes, other columns -----------------------

WEC_LAPS = (
    "\ufeffNUMBER; DRIVER_NUMBER; LAP_NUMBER; LAP_TIME; LAP_IMPROVEMENT; "
    "CROSSING_FINISH_LINE_IN_PIT; S1; S1_IMPROVEMENT; S2; S2_IMPROVEMENT; S3; S3_IMPROVEMENT; "
    "KPH; ELAPSED; HOUR;S1_LARGE;S2_LARGE;S3_LARGE;TOP_SPEED;DRIVER_NAME;PIT_TIME;CLASS;GROUP;"
    "TEAM;MANUFACTURER;FLAG_AT_FL;S1_SECONDS;S2_SECONDS;S3_SECONDS;\n"
    "7;1;1;1:40.000;0;;30.000;0;35.000;0;35.000;0;180.0;1:40.000;11:01:40.000;0:30.000;0:35.000;"
    "0:35.000;310.2;Mike CONWAY;;HYPERCAR;H;Toyota Gazoo Racing;Toyota;GF;30.000;35.000;35.000;\n"
    "7;1;2;1:40.000;0;B;30.000;0;35.000;0;35.000;0;180.0;3:20.000;11:03:20.000;0:30.000;0:35.000;"
    "0:35.000;310.2;Mike CONWAY;;HYPERCAR;H;Toyota Gazoo Racing;Toyota;SC;30.000;35.000;35.000;\n"
    "7;2;3;1:40.000;0;;30.000;0;35.000;0;35.000;0;180.0;5:00.000;11:05:00.000;0:30.000;0:35.000;"
    "0:35.000;310.2;Kamui KOBAYASHI;20.000;HYPERCAR;H;Toyota Gazoo Racing;Toyota;FF;30.000;"
    "35.000;35.000;\n"
    "92;1;1;1:50.000;0;;33.000;0;38.500;0;38.500;0;163.6;1:50.000;11:01:50.000;0:33.000;"
    "0:38.500;0:38.500;280.1;Klaus BACHLER;;LMGT3;;Manthey;Porsche;GF;33.000;38.500;38.500;\n"
    "92;1;2;1:50.000;0;;33.000;0;38.500;0;38.500;0;163.6;3:40.000;11:03:40.000;0:33.000;"
    "0:38.500;0:38.500;280.1;Klaus BACHLER;;LMGT3;;Manthey;Porsche;SC;33.000;38.500;38.500;\n"
    "92;1;3;1:50.000;0;;33.000;0;38.500;0;38.500;0;163.6;5:30.000;11:05:30.000;0:33.000;"
    "0:38.500;0:38.500;280.1;Klaus BACHLER;;LMGT3;;Manthey;Porsche;FF;33.000;38.500;38.500;\n"
)
WEC_RESULTS = (
    "\ufeffPOSITION;NUMBER;TEAM;DRIVER_1;DRIVER_2;DRIVER_3;DRIVER_4;VEHICLE;TYRES;CLASS;GROUP;"
    "DIVISION;STATUS;LAPS;TOTAL_TIME;GAP_FIRST;GAP_PREVIOUS;FL_LAPNUM;FL_TIME;FL_KPH;DRIVER_5;\n"
    "1;7;Toyota Gazoo Racing;Mike CONWAY;Kamui KOBAYASHI;;;Toyota TR010;M;HYPERCAR;H;;"
    "Classified;3;5'00.000;;;1;1'40.000;180.0;;\n"
    "2;92;Manthey;Klaus BACHLER;;;;Porsche 911 GT3 R;M;LMGT3;;;Classified;3;5'30.000;"
    "30.000;30.000;1;1'50.000;163.6;;\n"
)


def wec() -> Recording:
    return import_timing(
        WEC_LAPS,
        WEC_RESULTS,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    ).recording


def test_a_wec_style_export_imports() -> None:
    rec = wec()
    facts = rec.facts
    assert facts.id == "wec-2024-nowhere-park-race"
    assert facts.series == "FIA World Endurance Championship"
    assert facts.season == 2024
    assert facts.session == "race"
    # An unknown circuit: named from the file, its length from KPH x lap time.
    assert facts.circuit.name == "Nowhere Park"
    assert abs(facts.circuit.length_km - 5.0) < 0.002
    assert facts.length.duration_s == 300
    assert facts.start_time == "11:00:00"
    assert rec.classes == ["HYPERCAR", "LMGT3"]
    toyota = rec.entry("7")
    assert toyota is not None
    assert [d.name for d in toyota.drivers] == ["Mike CONWAY", "Kamui KOBAYASHI"]
    assert (toyota.chassis, toyota.tyre, toyota.team) == (
        "Toyota TR010",
        "M",
        "Toyota Gazoo Racing",
    )
    first = rec.classification[0]
    assert (first.total_ms, first.best_lap_ms, first.gap_ms) == (300_000, 100_000, None)
    assert rec.classification[1].gap_ms == 30_000
    # A safety car is a full-course yellow on the wire.
    assert [lap.flag for lap in rec.laps if lap.number == "7"] == ["GF", "FCY", "FF"]
    assert [lap.pit_ms for lap in rec.laps if lap.number == "7"] == [None, None, 20_000]


def test_classes_unknown_to_the_table_come_after_known_ones_by_best_lap() -> None:
    laps = WEC_LAPS.replace("HYPERCAR", "PROTO X").replace("LMGT3", "GT Y")
    results = WEC_RESULTS.replace("HYPERCAR", "PROTO X").replace("LMGT3", "GT Y")
    rec = import_timing(
        laps.replace(";92;", ";92;"),
        results,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    ).recording
    assert rec.classes == ["PROTO X", "GT Y"]
    swapped = WEC_RESULTS.replace("HYPERCAR", "LMGT3x").replace("LMGT3;", "GTP;")
    rec = import_timing(
        WEC_LAPS,
        swapped,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    ).recording
    assert rec.classes == ["GTP", "LMGT3x"]


def test_facts_come_from_the_folders_when_the_file_names_are_generic() -> None:
    folder = "FIA WEC/2023/05_SPA FRANCORCHAMPS/202305061200_Race/Hour 6"
    got = import_timing(
        WEC_LAPS,
        WEC_RESULTS,
        laps_name=f"{folder}/23_Analysis_Race_Hour 6.CSV",
        results_name=f"{folder}/03_Classification_Race_Hour 6.CSV",
    )
    facts = got.recording.facts
    assert (facts.id, facts.season, facts.date) == ("wec-2023-spa-race", 2023, "2023-05-06")
    assert facts.circuit.name == "Circuit de Spa-Francorchamps"
    # The sample's speeds say 5 km, not Spa's 7: the import says so.
    assert any("4.999 km lap, not the 7.004 km" in w for w in got.warnings)


def test_a_position_cell_holding_a_status() -> None:
    results = WEC_RESULTS.replace("2;92;", "NC;92;").replace(";LMGT3;;;Classified;", ";LMGT3;;;;")
    rec = import_timing(
        WEC_LAPS,
        results,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    ).recording
    row = rec.classification[1]
    assert (row.number, row.position, row.status) == ("92", 2, "not_classified")


def test_an_unknown_flag_is_taken_as_green_with_a_warning() -> None:
    got = import_timing(
        WEC_LAPS.replace(";SC;", ";ZZ;"),
        WEC_RESULTS,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    )
    assert [lap.flag for lap in got.recording.laps if lap.number == "7"] == ["GF", "GF", "FF"]
    flagged = [w for w in got.warnings if "FLAG_AT_FL 'ZZ'" in w]
    assert len(flagged) == 1 and "line 3" in flagged[0]


def test_the_date_comes_from_a_dated_hour_or_the_file_name() -> None:
    dated = WEC_LAPS.replace(";11:0", ";2024-06-15 23:5")
    rec = import_timing(
        dated,
        WEC_RESULTS,
        laps_name="2024_wec_nowhere-park_race-laps.csv",
        results_name="2024_wec_nowhere-park_race-results.csv",
    ).recording
    # 23:51:40 on lap 1 after 1:40 of racing: the session began at 23:50:00 that day.
    assert (rec.facts.date, rec.facts.start_time) == ("2024-06-15", "23:50:00")
    rec = import_timing(
        WEC_LAPS,
        WEC_RESULTS,
        laps_name="wec_nowhere-park_2024-06-15_race-laps.csv",
        results_name="wec_nowhere-park_2024-06-15_race-results.csv",
    ).recording
    assert (rec.facts.date, rec.facts.season, rec.facts.circuit.name) == (
        "2024-06-15",
        2024,
        "Nowhere Park",
    )
    assert imported(LAGUNA).facts.date is None  # "2022_07" is no date


def test_the_series_comes_from_the_name_the_columns_or_the_classes() -> None:
    rec = import_timing(
        WEC_LAPS,
        WEC_RESULTS,
        laps_name="nowhere-park_race-laps-2024.csv",
        results_name="nowhere-park_race-results-2024.csv",
    ).recording
    assert rec.facts.series == "FIA World Endurance Championship"  # HYPERCAR
    rec = import_timing(
        WEC_LAPS,
        WEC_RESULTS,
        laps_name="2024_elms_nowhere-park_race-laps.csv",
        results_name="2024_elms_nowhere-park_race-results.csv",
        options=Options(series="My Series", id="mine", circuit="Somewhere", lap_km=4.2),
    ).recording
    assert (rec.facts.series, rec.facts.id) == ("My Series", "mine")
    assert (rec.facts.circuit.name, rec.facts.circuit.length_km) == ("Somewhere", 4.2)


# -- the three real sessions: facts derived from the files ----------------------------


def imported(stem: str, **options: object) -> Recording:
    laps = DATA / f"{stem}-laps.csv"
    results = DATA / f"{stem}-results.csv"
    return import_timing(
        decode(laps.read_bytes()),
        decode(results.read_bytes()),
        laps_name=str(laps),
        results_name=str(results),
        options=Options(**options),  # type: ignore[arg-type]
    ).recording


def test_laguna_seca_race_facts() -> None:
    rec = imported(LAGUNA)
    facts = rec.facts
    assert facts.id == "imsa-2022-laguna-seca-race"
    assert facts.series == "IMSA WeatherTech SportsCar Championship"
    assert (facts.season, facts.session) == (2022, "race")
    assert facts.circuit.name == "WeatherTech Raceway Laguna Seca"
    assert (facts.circuit.length_km, facts.circuit.length_mi, facts.circuit.turns) == (
        3.602,
        2.238,
        11,
    )
    assert facts.length.duration_s == 2 * 3600 + 40 * 60
    assert facts.start_time == "12:07:10"
    assert facts.timing_lines == 3
    assert [(i.kind, i.lap) for i in facts.interruptions] == [("full_course_yellow", 24)]
    assert rec.classes == ["DPi", "LMP2", "GTDPRO", "GTD"]
    assert len(rec.entries) == 32 and len(rec.laps) == 3258
    wtr = rec.entry("10")
    assert wtr is not None
    assert wtr.team == "Konica Minolta Acura ARX-05"
    assert (wtr.cls, wtr.chassis, wtr.tyre) == ("DPi", "Acura DPi", "M")
    assert [(d.name, d.nationality) for d in wtr.drivers] == [
        ("Ricky Taylor", "USA"),
        ("Filipe Albuquerque", "PRT"),
    ]
    assert rec.entry("01") is not None and rec.entry("1") is not None  # different cars
    row = rec.classification[4]
    assert (row.number, row.gap_laps, row.total_ms, row.best_lap) == ("02", 1, 9_737_591, 44)
    assert all(r.provenance == "timing" for r in rec.classification)
    assert not rec.notes


def test_laguna_seca_qualifying_is_told_by_its_columns() -> None:
    rec = imported(LAGUNA_Q)
    assert rec.facts.session == "qualifying"
    assert rec.facts.id == "imsa-2022-laguna-seca-qualifying"
    # Session time zero is 12:50:00; the flag fell for the last group at 40:04.640.
    assert rec.facts.start_time == "12:50:00"
    assert rec.facts.length.duration_s == 40 * 60
    pole = rec.qualifying[0]
    assert (pole.number, pole.best_ms, pole.driver, pole.position) == (
        "10",
        73_924,
        "Ricky Taylor",
        1,
    )
    assert rec.qualifying[1].gap_ms == 89
    assert rec.classification[0].best_lap == 5 and rec.classification[0].laps == 9


def test_lime_rock_length_needs_the_flag_because_the_race_was_cut_short() -> None:
    # From the laps alone the race looks like 1h28; it was scheduled for 2h40 and
    # stopped by lightning, so the replay is imported with --duration 2h40.
    derived = imported(LIME_ROCK)
    assert derived.facts.length.duration_s == 88 * 60
    assert not derived.notes
    given = imported(LIME_ROCK, duration_s=9600)
    assert given.facts.length.duration_s == 9600
    assert "stopped after 1:28:29.019" in given.notes[0].text
    # The speeds are computed over the 1.474-mile layout IMSA uses.
    assert (given.facts.circuit.name, given.facts.circuit.length_mi) == ("Lime Rock Park", 1.474)
    assert given.classes == ["GTLM", "GTD"]


# -- the command line -------------------------------------------------------------------


def lines_of(stem: str, kind: str) -> list[str]:
    return (DATA / f"{stem}-{kind}.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)


def small_export(tmp_path: Path, cars: tuple[str, ...] = ("3", "4")) -> tuple[Path, Path]:
    """Lime Rock reduced to a few cars, written as the exports are (with the BOM)."""
    laps = lines_of(LIME_ROCK, "laps")
    results = lines_of(LIME_ROCK, "results")
    keep_laps = [laps[0]] + [r for r in laps[1:] if r.split(",")[0] in cars]
    keep_results = [results[0]] + [r for r in results[1:] if r.split(",")[1] in cars]
    laps_path = tmp_path / f"{LIME_ROCK}-laps.csv"
    results_path = tmp_path / f"{LIME_ROCK}-results.csv"
    write(laps_path, keep_laps)
    write(results_path, keep_results)
    return laps_path, results_path


def write(path: Path, lines: list[str]) -> None:
    path.write_bytes(("\ufeff" + "".join(lines)).encode())


def cli(
    capsys: pytest.CaptureFixture[str], laps: Path, results: Path, out: Path, *extra: str
) -> tuple[int, str]:
    status = main(["import-timing", str(laps), "--results", str(results), "-o", str(out), *extra])
    err = capsys.readouterr().err
    return status, err


def test_cli_imports_a_valid_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    out = tmp_path / "out" / "lime.json"
    status = main(
        [
            "import-timing",
            str(laps),
            "--results",
            str(results),
            "-o",
            str(out),
            "--duration",
            "2h40",
        ]
    )
    assert status == 0
    assert "2 cars, 200 laps" in capsys.readouterr().out
    rec = recording_io.load(out)
    assert rec.facts.length.duration_s == 9600
    assert {lap.number for lap in rec.laps} == {"3", "4"}


def test_cli_names_the_default_output_after_the_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    laps, results = small_export(tmp_path)
    monkeypatch.setenv("CHEQUERED_REPLAYS", str(tmp_path / "replays"))
    assert main(["import-timing", str(laps), "--results", str(results)]) == 0
    assert (tmp_path / "replays" / "imsa-2021-lime-rock-race.json").exists()


def assert_refused(status: int, err: str, out: Path, *needles: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.startswith("chequered import-timing:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.glob(".*") if p.is_file()]  # no temporary left over


def test_not_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _laps, results = small_export(tmp_path)
    readme = tmp_path / "notes.csv"
    readme.write_text("Some notes about the race\nnothing tabular here\n")
    out = tmp_path / "out.json"
    status, err = cli(capsys, readme, results, out)
    assert_refused(status, err, out, "notes.csv", "line 1", "not an Al Kamel lap export")
    # The results file given where the laps file belongs.
    status, err = cli(capsys, results, results, out)
    assert_refused(status, err, out, "results.csv", "line 1", "LAP_NUMBER")


def test_binary_and_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    junk = tmp_path / "junk.csv"
    junk.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "out.json"
    status, err = cli(capsys, junk, results, out)
    assert_refused(status, err, out, "junk.csv")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"\xef\xbb\xbf\n")
    status, err = cli(capsys, laps, empty, out)
    assert_refused(status, err, out, "empty.csv", "empty")


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, _ = small_export(tmp_path)
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, tmp_path / "nope.csv", out)
    assert_refused(status, err, out, "nope.csv", "cannot read")


def test_truncated_lap_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    data = laps.read_bytes()
    cut = data[: len(data) - 60]  # the last row loses its end, and its line break
    laps.write_bytes(cut)
    line = cut.count(b"\n") + 1
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, f"line {line}", "truncated")


def test_truncated_results_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    data = results.read_bytes()
    results.write_bytes(data[: data.index(b"Chevrolet Corvette C8.R", data.index(b"\n2,4,")) + 5])
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, results.name, "line 3", "truncated")


def test_lap_of_a_car_missing_from_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    laps, results = small_export(tmp_path)
    rows = lines_of(LIME_ROCK, "results")
    write(results, [rows[0]] + [r for r in rows[1:] if r.split(",")[1] == "3"])
    first_of_4 = next(
        i + 1
        for i, r in enumerate(laps.read_text(encoding="utf-8-sig").splitlines())
        if r.startswith("4,")
    )
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, f"line {first_of_4}", "car 4", "no row in")


def edit_laps(laps: Path, line: int, column: int, value: str) -> None:
    rows = laps.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    cells = rows[line - 1].split(",")
    cells[column] = value
    rows[line - 1] = ",".join(cells)
    write(laps, rows)


def test_duplicated_lap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    rows = laps.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    write(laps, [*rows[:6], rows[5], *rows[6:]])
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, "line 7", "lap 5 appears twice", "line 6")


def test_out_of_order_laps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    rows = laps.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    write(laps, [*rows[:4], rows[5], rows[4], *rows[6:]])
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, "line 6", "out of order")


def test_elapsed_running_backwards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    edit_laps(laps, 10, 13, "1:00.000")
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, "line 10", "ELAPSED")


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        (3, "1:2x.345", "LAP_TIME '1:2x.345' is not a time"),
        (13, "", "ELAPSED is empty"),
        (6, "22.6.21", "S1 '22.6.21' is not a time"),
        (2, "two", "LAP_NUMBER 'two' is not a whole number"),
        (0, "#3", "car number '#3'"),
    ],
)
def test_cells_that_do_not_parse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: int, value: str, needle: str
) -> None:
    laps, results = small_export(tmp_path)
    edit_laps(laps, 8, column, value)
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, "line 8", needle)


def test_unknown_status_in_the_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    write(
        results,
        [
            r.replace(",Classified,", ",Sideways,", 1) if i == 2 else r
            for i, r in enumerate(results.read_text(encoding="utf-8-sig").splitlines(keepends=True))
        ],
    )
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, results.name, "line 3", "STATUS 'Sideways'")


def test_a_row_wider_than_its_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    laps, results = small_export(tmp_path)
    edit_laps(laps, 4, 19, "Garcia, Antonio")
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out)
    assert_refused(status, err, out, laps.name, "line 4", "fields but the header has")


def test_race_results_without_total_times(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    laps = DATA / f"{LAGUNA_Q}-laps.csv"
    results = DATA / f"{LAGUNA_Q}-results.csv"
    out = tmp_path / "out.json"
    status, err = cli(capsys, laps, results, out, "--session", "race")
    assert_refused(status, err, out, results.name, "TOTAL_TIME", "--session qualifying")


def test_an_error_leaves_an_existing_output_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    laps, results = small_export(tmp_path)
    out = tmp_path / "out.json"
    out.write_text("previous recording")
    edit_laps(laps, 8, 3, "bad")
    status, _err = cli(capsys, laps, results, out)
    assert status == 2
    assert out.read_text() == "previous recording"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_output_is_replaced_only_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    laps, results = small_export(tmp_path)
    out = tmp_path / "out.json"
    out.write_text("previous recording")
    status, err = cli(capsys, laps, results, out)
    assert status == 2 and f"{out}: already exists" in err and "--force" in err
    assert out.read_text() == "previous recording"
    status, _err = cli(capsys, laps, results, out, "--force")
    assert status == 0 and out.read_text() != "previous recording"


def test_installed_command_exits_with_status_2(tmp_path: Path) -> None:
    laps, results = small_export(tmp_path)
    edit_laps(laps, 8, 3, "bad")
    out = tmp_path / "out.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "chequered"),
            "import-timing",
            str(laps),
            "--results",
            str(results),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"{laps}: line 8: LAP_TIME 'bad' is not a time" in done.stderr
    assert not out.exists()
