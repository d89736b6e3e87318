"""The article importer on articles it has not seen: facts only from sentences that
state them, cut-off tables refused by line, no race written without a result, and
hostile input (long lines, huge files) bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from chequered.cli.main import main
from simulator.importers.article import (
    MAX_INPUT_BYTES,
    NO_RACE_RESULT,
    UNKNOWN_SERIES,
    ImportResult,
    import_article,
    read_prose,
)
from simulator.recording import io as recording_io
from tests.conftest import REPLAYS, TESTS_DATA

ARTICLES = TESTS_DATA / "articles"
CUT = ARTICLES / "alms-2013-round-2-cut-off.txt"
MONTEREY = REPLAYS / "sources" / "alms-2013-monterey.txt"
CUT_LINE = len(CUT.read_text(encoding="utf-8").splitlines())


def _import(text: str) -> ImportResult:
    return import_article(text, race_id="x-race", qualifying_id="x-qualifying")


# -- facts from the sentences that state them -------------------------------------


@pytest.mark.parametrize(
    ("sentence", "round_", "season", "series"),
    [
        ("The four-hour race was the second round of the 2013 season.", 2, 2013, None),
        (
            "It was the second round of the 2013 season of the American Le Mans Series.",
            2,
            2013,
            "American Le Mans Series",
        ),
        ("It was the third round of the 2013 American Le Mans Series season.", 3, 2013,
         "American Le Mans Series"),
        ("The race was round 4 of the 2014 FIA World Endurance Championship, held in May.", 4,
         2014, "FIA World Endurance Championship"),
        ("It was the first round of the 2013 championship.", 1, 2013, None),
    ],
)  # fmt: skip
def test_a_series_is_a_name_never_a_common_word(
    sentence: str, round_: int, season: int, series: str | None
) -> None:
    facts = read_prose(sentence)
    assert (facts.round, facts.season, facts.series) == (round_, season, series)


def test_the_series_comes_from_a_sentence_that_names_it() -> None:
    result = _import(CUT.read_text(encoding="utf-8"))
    assert result.qualifying is not None
    facts = result.qualifying.facts
    assert (facts.round, facts.season, facts.series) == (2, 2013, "American Le Mans Series")
    assert not any("names no series" in p.message for p in result.problems)


@pytest.mark.parametrize(
    "sentence",
    [
        "It was the second of ten scheduled sports car races of 2013 American Le Mans Series.",
        "The race was part of the schedule for the 2013 American Le Mans Series.",
        "It was the fifteenth year the event was held as part of the American Le Mans Series.",
    ],
)
def test_sentences_that_place_the_race_in_its_series(sentence: str) -> None:
    facts = read_prose(f"The race was the second round of the 2013 season. {sentence}")
    assert (facts.round, facts.series) == (2, "American Le Mans Series")


def test_an_article_that_names_no_series_says_so() -> None:
    text = CUT.read_text(encoding="utf-8")
    for said in (
        "The 2013 Sports Car Grand Prix of Example was the second of ten scheduled sports car "
        "races of 2013 American Le Mans Series. ",
        "the race was part of the schedule for the 2013 American Le Mans Series schedule",
        "held as part of the American Le Mans Series",
    ):
        assert said in text
        text = text.replace(said, "")
    result = _import(text)
    assert result.qualifying is not None
    assert result.qualifying.facts.series == UNKNOWN_SERIES
    assert result.qualifying.facts.round == 2
    assert any(p.severity == "warning" and "names no series" in p.message for p in result.problems)


# -- a table cut off mid-row ------------------------------------------------------


def test_a_row_cut_off_mid_cell_is_a_garbled_table_reported_by_line() -> None:
    result = _import(CUT.read_text(encoding="utf-8"))
    cut = [p for p in result.errors if p.line == CUT_LINE]
    assert len(cut) == 1
    assert "garbled" in cut[0].message and "3 of the header's 6 cells" in cut[0].message
    assert "--partial" in cut[0].message
    # Not taken as car #52 with a truncated team name.
    assert result.qualifying is not None
    assert [q.number for q in result.qualifying.qualifying] == ["12", "16", "6", "551", "552", "05"]
    assert all(e.number != "52" for e in result.qualifying.entries)


def test_a_row_without_its_closing_bar_is_cut_off() -> None:
    text = MONTEREY.read_text(encoding="utf-8")
    row = "| 12 | PC | #8 BAR1 Motorsports | Kyle Marcelli | 1:19.436 | 12 |"
    assert row in text
    result = _import(text.replace(row, row[:-2]))
    assert any("closing '|'" in p.message for p in result.errors)


def test_merged_remark_cells_are_not_a_cut_off_row() -> None:
    text = MONTEREY.read_text(encoding="utf-8")
    row = "| - | GT | #06 CORE Autosport | Patrick Long | No Time | 36 |"
    assert row in text
    result = _import(text.replace(row, "| - | GT | #06 CORE Autosport | Patrick Long | No Time |"))
    assert result.errors == []


def test_a_cut_off_race_row_is_refused_too() -> None:
    lines = MONTEREY.read_text(encoding="utf-8").splitlines()
    race = next(i for i, line in enumerate(lines) if line.startswith("==Race"))
    at = next(i for i, line in enumerate(lines) if i > race and line.startswith("| 29 |"))
    lines[at] = lines[at][:40]
    result = _import("\n".join(lines))
    errors = [p for p in result.errors if p.line == at + 1]
    assert len(errors) == 1 and errors[0].session == "race"


# -- no race result ---------------------------------------------------------------


def test_an_article_without_a_race_table_yields_no_race() -> None:
    result = _import(CUT.read_text(encoding="utf-8"))
    no_result = [p for p in result.errors if p.message.startswith(NO_RACE_RESULT)]
    assert len(no_result) == 1 and "no race result table" in no_result[0].message


def test_cli_refuses_the_cut_off_article_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alms-2013-example-race.json"
    assert main(["import", str(CUT), "-o", str(out)]) == 2
    assert list(tmp_path.iterdir()) == []
    err = capsys.readouterr().err
    assert f"{CUT}: line {CUT_LINE}: qualifying table" in err
    assert NO_RACE_RESULT in err and "nothing written" in err


def test_cli_partial_writes_what_could_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "alms-2013-example-race.json"
    assert main(["import", str(CUT), "-o", str(out), "--partial"]) == 0
    qualifying = recording_io.load(tmp_path / "alms-2013-example-qualifying.json")
    assert [r.number for r in qualifying.classification] == ["12", "16", "6", "551", "552", "05"]
    race = recording_io.load(out)
    assert race.classification == [] and race.facts.series == "American Le Mans Series"


def test_cli_qualifying_alone_needs_no_race_result(tmp_path: Path) -> None:
    text = CUT.read_text(encoding="utf-8").rsplit("\n", 1)[0]  # the cut row left out
    article = tmp_path / "article.txt"
    article.write_text(text, encoding="utf-8")
    out = tmp_path / "x-qualifying.json"
    assert main(["import", str(article), "-o", str(out), "--session", "qualifying"]) == 0
    assert main(["import", str(article), "-o", str(tmp_path / "x-race.json")]) == 2


# -- hostile input ----------------------------------------------------------------

LONG = 250_000


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "line",
    [
        "a" * LONG,
        "=" * LONG,
        "= " + "a" * LONG,
        "a-" * (LONG // 2),
        "a." * (LONG // 2),
        "1" * LONG,
        "1 mi A " * (LONG // 7),
        "first round of the 2013 " * (LONG // 24),
        "held at A" * (LONG // 9),
        "| 1 | P1 | " + "1:" * (LONG // 2) + " |",
    ],
    ids=["letters", "equals", "heading", "hyphens", "dots", "digits", "miles", "round", "held",
         "cell"],
)  # fmt: skip
def test_a_250_kb_line_is_read_in_linear_time(tmp_path: Path, line: str) -> None:
    text = MONTEREY.read_text(encoding="utf-8").replace(
        "== Background ==", line + "\n\n== Background =="
    )
    article = tmp_path / "article.txt"
    article.write_text(text, encoding="utf-8")
    out = tmp_path / "alms-2013-monterey-race.json"
    status = main(["import", str(article), "-o", str(out)])
    if status == 0:
        # The long line changed nothing the article states.
        committed = recording_io.load(REPLAYS / "alms-2013-monterey-race.json")
        assert recording_io.load(out).classification == committed.classification


def test_a_long_sentence_is_skipped_with_a_warning() -> None:
    text = MONTEREY.read_text(encoding="utf-8").replace(
        "== Background ==", "x" * 5000 + "\n\n== Background =="
    )
    result = _import(text)
    assert any("5000 characters" in p.message and p.line == 5 for p in result.problems)
    assert result.errors == []


def test_a_too_large_file_is_refused_unread_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    article = tmp_path / "huge.txt"
    with article.open("wb") as f:
        f.truncate(MAX_INPUT_BYTES + 1)  # sparse: nothing to write, nothing to read
    status = main(["import", str(article), "-o", str(tmp_path / "x-race.json")])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(
        f"chequered import: {article}: {MAX_INPUT_BYTES + 1} bytes is too large"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.txt"]
