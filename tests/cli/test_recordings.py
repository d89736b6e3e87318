"""``chequered import`` and ``chequered races`` through the real command line entry point."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chequered.cli.main import main
from chequered.cli.recordings import SCHEMA_PATH, output_paths, schema_text
from simulator.recording import io as recording_io
from simulator.recording.format import Recording
from tests.conftest import REPLAYS, REPO, TESTS_DATA

SOURCES = REPLAYS / "sources"
DATA = TESTS_DATA
BALTIMORE_ARGS = [
    str(SOURCES / "alms-2013-baltimore.txt"),
    "--merge",
    str(SOURCES / "alms-2013-baltimore-classification.csv"),
    "--facts",
    str(SOURCES / "alms-2013-baltimore-facts.toml"),
]


def test_output_paths() -> None:
    paths = output_paths("replays/x-2013-y-race.json", "both")
    assert paths == {
        "race": Path("replays/x-2013-y-race.json"),
        "qualifying": Path("replays/x-2013-y-qualifying.json"),
    }
    assert output_paths("a.json", "both")["qualifying"] == Path("a-qualifying.json")
    assert output_paths("q.json", "qualifying") == {"qualifying": Path("q.json")}


def test_import_monterey_reproduces_the_committed_recordings(tmp_path: Path) -> None:
    out = tmp_path / "alms-2013-monterey-race.json"
    status = main(["import", str(SOURCES / "alms-2013-monterey.txt"), "-o", str(out)])
    assert status == 0
    for name in ("alms-2013-monterey-race.json", "alms-2013-monterey-qualifying.json"):
        assert (tmp_path / name).read_bytes() == (REPLAYS / name).read_bytes(), name


def test_import_never_replaces_a_recording_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alms-2013-monterey-race.json"
    qualifying = tmp_path / "alms-2013-monterey-qualifying.json"
    # Only the file not named on the command line exists: it is still protected.
    qualifying.write_text("mine")
    args = ["import", str(SOURCES / "alms-2013-monterey.txt"), "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(qualifying) in err and "--force" in err
    assert qualifying.read_text() == "mine" and not out.exists()
    assert main([*args, "--force"]) == 0
    assert qualifying.read_text() != "mine" and out.exists()
    assert main(args) == 2  # now both exist


def test_garbled_table_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b-race.json"
    status = main(["import", str(SOURCES / "alms-2013-baltimore.txt"), "-o", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert "alms-2013-baltimore.txt: line 55: race table 'Race results' (lines 55-120)" in err
    assert "columns position, car number, laps, class are missing" in err
    assert "(lines 57-118)" in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_partial_writes_what_could_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b-race.json"
    status = main(["import", str(SOURCES / "alms-2013-baltimore.txt"), "-o", str(out), "--partial"])
    assert status == 0
    race = recording_io.load(out)
    qualifying = recording_io.load(tmp_path / "b-qualifying.json")
    assert race.classification == [] and len(race.qualifying) == 32
    assert len(qualifying.classification) == 32
    assert "garbled" in capsys.readouterr().err


def test_qualifying_session_alone_ignores_the_race_table(tmp_path: Path) -> None:
    out = tmp_path / "q.json"
    args = ["import", str(SOURCES / "alms-2013-baltimore.txt"), "-o", str(out)]
    status = main([*args, "--session", "qualifying"])
    assert status == 0
    assert recording_io.load(out).facts.session == "qualifying"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.json"]


@pytest.fixture(scope="module")
def baltimore(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Recording]:
    folder = tmp_path_factory.mktemp("baltimore")
    out = folder / "alms-2013-baltimore-race.json"
    assert main(["import", *BALTIMORE_ARGS, "-o", str(out)]) == 0
    return folder, recording_io.load(out)


def test_baltimore_merge_reproduces_the_committed_recordings(
    baltimore: tuple[Path, Recording],
) -> None:
    folder, _ = baltimore
    for name in ("alms-2013-baltimore-race.json", "alms-2013-baltimore-qualifying.json"):
        assert (folder / name).read_bytes() == (REPLAYS / name).read_bytes(), name


def test_baltimore_race_is_complete_and_consistent(baltimore: tuple[Path, Recording]) -> None:
    _, race = baltimore
    facts = race.facts
    assert facts.length.duration_s == 7200 and facts.round == 7 and facts.date == "2013-08-31"
    (red,) = facts.interruptions
    assert (red.kind, red.lap, red.duration_s, red.provenance) == ("red_flag", 0, 4500, "report")
    assert len(race.grid) == 31
    assert "7" not in race.grid and "67" in race.grid
    assert race.grid[-1] == "56"  # sent to the back for ride height
    rows = [r for r in race.classification if r.status != "dns"]
    assert {r.number for r in rows} == set(race.grid)
    assert all(r.number and r.cls and r.laps is not None for r in rows)
    classified = [r for r in rows if r.status == "classified"]
    counts: dict[str, int] = {}
    for r in classified:
        assert r.cls is not None
        counts[r.cls] = counts.get(r.cls, 0) + 1
    assert counts == {"P1": 2, "P2": 2, "PC": 3, "GT": 7, "GTC": 6}
    laps = [r.laps or 0 for r in classified]
    assert laps == sorted(laps, reverse=True) and laps[0] == 41
    by_car = {r.number: r for r in race.classification}
    assert by_car["6"].position == 1 and by_car["6"].provenance == "report"
    assert by_car["44"].laps == 39 and by_car["22"].laps == 39
    assert by_car["9"].laps == 27 and by_car["9"].status == "retired"
    # Out with 19 of about 73 racing minutes left: 41 * 54/73 laps.
    assert by_car["02"].laps == 30 and by_car["02"].status == "retired"
    for car in ("551", "62"):
        assert by_car[car].laps == 0
    crash_gt = [r for r in rows if r.laps == 0 and r.cls == "GT"]
    assert len(crash_gt) == 3 and "48" not in {r.number for r in crash_gt}
    assert (by_car["48"].laps or 0) > 1
    # Retired cars whose laps no source gives never tie with the car out below them.
    retired = [r.laps for r in rows if r.status == "retired" and r.laps]
    assert retired == [33, 32, 31, 30, 28, 27]
    dns = by_car["7"]
    assert (dns.status, dns.provenance, dns.laps) == ("dns", "report", None)


def test_baltimore_merge_keeps_provenance(baltimore: tuple[Path, Recording]) -> None:
    _, race = baltimore
    by_position = {r.position: r for r in race.classification}
    # reported in the CSV -> report; laps a rule filled are marked as such.
    assert by_position[3].number == "552" and by_position[3].provenance == "report"
    assert by_position[3].laps_provenance == "inferred"
    assert by_position[1].laps_provenance is None
    # inferred in the CSV -> inferred.
    assert by_position[12].number == "05" and by_position[12].provenance == "inferred"
    # unknown in the CSV: the car now comes from the rule, so the row is inferred.
    assert by_position[16].provenance == "inferred"
    assert by_position[16].note is not None and "rule C1" in by_position[16].note
    assert all(r.provenance in ("report", "inferred") for r in race.classification)
    # Report notes are marked as such.
    grid_note = next(n for n in race.notes if n.effect == "grid_to_back")
    assert grid_note.cars == ["56"] and grid_note.provenance == "report"


def test_merge_without_facts_explains_what_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without the reports' facts, #7 (grid 27 in the article) counts as a starter: one
    # starter too many for the rows, which the rule refuses rather than guess.
    out = tmp_path / "b-race.json"
    status = main(["import", *BALTIMORE_ARGS[:3], "-o", str(out)])
    assert status == 2
    err = capsys.readouterr().err
    assert (
        "alms-2013-baltimore-classification.csv: cannot reconstruct: 11 rows name no car "
        "but 12 starters have no row (#52 #8 #06 #17 #48 #45 #30 #66 #7 #68 #11 #67)"
    ) in err
    assert "non_starters" in err
    assert not out.exists()


def test_merge_rejects_a_csv_that_contradicts_the_article(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_text = (SOURCES / "alms-2013-baltimore-classification.csv").read_text()
    bad = csv_text.replace("2,P1,16,Mazda MZR-R", "2,P1,16,Toyota RV8K").replace(
        "8,GT,55,", "8,GT,555,"
    )
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(bad)
    args = [str(SOURCES / "alms-2013-baltimore.txt"), "--merge", str(csv_path)]
    status = main(["import", *args, "-o", str(tmp_path / "r.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert "bad.csv: line 3: position 2: engine 'Toyota RV8K" in err
    assert "bad.csv: line 9: position 8: car #555 is not entered" in err


def test_import_of_a_missing_file_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["import", "no/such/article.txt", "-o", "x.json"])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err == "chequered import: no/such/article.txt: cannot read: No such file or directory"


def test_races_lists_every_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (
        "alms-2013-monterey-race.json",
        "alms-2013-baltimore-race.json",
        "alms-2013-baltimore-qualifying.json",
    ):
        shutil.copy(REPLAYS / name, tmp_path / name)
    shutil.copy(DATA / "recordings" / "with-laps.json", tmp_path / "timed-race.json")
    assert main(["races", "--dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "SESSION",
        "DATE",
        "CIRCUIT",
        "LENGTH",
        "CLASSES",
        "CARS",
        "DATA",
        "YELLOW",
    ]
    by_name = {line.split()[0]: line for line in lines[1:]}
    # The share of laps under yellow: a synthesised race's says so (seed 0).
    share = {name: line.split()[-2:] for name, line in by_name.items()}
    assert share["alms-2013-monterey-race"][1] == "synth"
    assert 25 <= int(share["alms-2013-monterey-race"][0].rstrip("%")) <= 35
    assert share["alms-2013-baltimore-race"][1] == "synth"
    assert by_name["alms-2013-baltimore-qualifying"].endswith(" -")
    assert by_name["timed-race"].split()[-1].endswith("%")
    assert "synthesised races (seed 0)" in lines[-1]
    monterey = by_name["alms-2013-monterey-race"]
    assert "2013-05-11" in monterey and "Mazda Raceway Laguna Seca 3.602 km" in monterey
    assert " 4h " in monterey and "P1 P2 PC GT GTC" in monterey and "36/36" in monterey
    assert "article 36; no lap timing" in monterey
    baltimore = by_name["alms-2013-baltimore-race"]
    assert "32/31" in baltimore and "report 14, inferred 18" in baltimore and " 2h " in baltimore
    assert "qualifying" in by_name["alms-2013-baltimore-qualifying"]
    timed = by_name["timed-race"]
    assert "timing 2; laps 4" in timed and "20min" in timed


def test_races_reports_a_broken_file_and_lists_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(REPLAYS / "alms-2013-monterey-race.json", tmp_path / "good.json")
    (tmp_path / "broken.json").write_text("{")
    assert main(["races", "--dir", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert "good" in captured.out
    assert "broken.json: not JSON" in captured.err


def test_committed_schema_is_the_generated_one() -> None:
    assert (REPO / SCHEMA_PATH).read_text(encoding="utf-8") == schema_text(), (
        "regenerate with: chequered recording-schema -o docs/schema/recording.schema.json"
    )


def test_a_recording_that_would_not_load_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (SOURCES / "alms-2013-monterey.txt").read_text(encoding="utf-8")
    article = tmp_path / "zero.txt"
    # A grid slot 0 is read as printed, and the format does not allow it.
    article.write_text(text.replace("| Neel Jani | 1:13.429 | 1 |", "| Neel Jani | 1:13.429 | 0 |"))
    out = tmp_path / "zero-race.json"
    assert main(["import", str(article), "-o", str(out), "--session", "race"]) == 2
    err = capsys.readouterr().err
    assert f"{out}: not a valid recording: Expected `int` >= 1" in err
    assert "$.qualifying[0].grid" in err and "not written" in err
    assert not out.exists()
