"""The article importer reads both seed articles to exactly what their tables say."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.importers.article import (
    Article,
    ImportResult,
    car_numbers_in,
    import_article,
    note_effect,
    parse_time_ms,
    read_article,
    read_prose,
    split_drivers,
)
from simulator.recording.format import Driver, Recording
from tests.conftest import REPLAYS, TESTS_DATA

SOURCES = REPLAYS / "sources"
ARTICLES = TESTS_DATA / "articles"
MONTEREY = SOURCES / "alms-2013-monterey.txt"
BALTIMORE = SOURCES / "alms-2013-baltimore.txt"

# The Monterey race table as printed: position, class, car, laps ("DNF" rows retired).
MONTEREY_RACE = [
    (1, "P1", "6", 150),
    (2, "P1", "12", 150),
    (3, "P2", "551", 146),
    (4, "P2", "552", 146),
    (5, "PC", "52", 145),
    (6, "PC", "05", 145),
    (7, "PC", "18", 144),
    (8, "PC", "8", 144),
    (9, "GT", "3", 142),
    (10, "GT", "17", 142),
    (11, "GT", "56", 142),
    (12, "GT", "23", 142),
    (13, "GT", "91", 142),
    (14, "PC", "81", 142),
    (15, "GT", "48", 142),
    (16, "P2", "01", 142),
    (17, "PC", "7", 141),
    (18, "GT", "06", 140),
    (19, "GT", "62", 139),
    (20, "GTC", "30", 137),
    (21, "GTC", "27", 137),
    (22, "GTC", "22", 137),
    (23, "GTC", "66", 137),
    (24, "GTC", "11", 137),
    (25, "GTC", "10", 137),
    (26, "GT", "4", 136),
    (27, "GTC", "68", 135),
    (28, "GTC", "45", 134),
    (29, "PC", "9", 132),
    (30, "GTC", "44", 129),
    (31, "GTC", "99", 122),
    (32, "P1", "0", 104),
    (33, "GT", "55", 85),
    (34, "P2", "02", 64),
    (35, "P1", "16", 21),
    (36, "GT", "93", 12),
]


def _import(path: Path, slug: str) -> ImportResult:
    return import_article(
        path.read_text(encoding="utf-8"),
        race_id=f"{slug}-race",
        qualifying_id=f"{slug}-qualifying",
    )


@pytest.fixture(scope="module")
def monterey() -> ImportResult:
    return _import(MONTEREY, "alms-2013-monterey")


@pytest.fixture(scope="module")
def baltimore() -> ImportResult:
    return _import(BALTIMORE, "alms-2013-baltimore")


def _race(result: ImportResult) -> Recording:
    assert result.race is not None
    return result.race


def _qualifying(result: ImportResult) -> Recording:
    assert result.qualifying is not None
    return result.qualifying


# -- Monterey race ------------------------------------------------------------


def test_monterey_race_classification_is_the_table(monterey: ImportResult) -> None:
    race = _race(monterey)
    assert monterey.errors == []
    got = [(r.position, r.cls, r.number, r.laps) for r in race.classification]
    assert got == MONTEREY_RACE
    statuses = [r.status for r in race.classification]
    assert statuses == ["classified"] * 31 + ["retired"] * 5
    assert {r.provenance for r in race.classification} == {"article"}
    # The 70% rule is stated in the text but no row is marked NC: none is invented.
    assert "not_classified" not in statuses


def test_monterey_entries_carry_every_column(monterey: ImportResult) -> None:
    race = _race(monterey)
    assert len(race.entries) == 36
    six = race.entry("6")
    assert six is not None
    assert six.cls == "P1"
    assert six.team == "Muscle Milk Pickett Racing"
    assert six.team_nationality == "USA"
    assert six.drivers == [
        Driver(name="Klaus Graf", nationality="DEU"),
        Driver(name="Lucas Luhr", nationality="DEU"),
    ]
    assert six.chassis == "HPD ARX-03a"
    assert six.engine == "Honda 3.4 L V8"
    # Tyres were symbols that did not survive: unknown, not guessed.
    assert six.tyre is None

    twelve = race.entry("12")
    assert twelve is not None and twelve.team_nationality == "SUI"
    assert twelve.drivers[1] == Driver(name="Neel Jani", nationality="SUI")

    lizard = race.entry("45")
    assert lizard is not None
    assert lizard.drivers == [
        Driver(name="Spencer Pumpelly", nationality="USA"),
        Driver(name="Seth Neiman", nationality="USA"),
        Driver(name="Nelson Canache, Jr.", nationality="VEN"),
    ]
    assert lizard.chassis == "Porsche 997 GT3 Cup"

    core = race.entry("06")
    assert core is not None and race.entry("6") is not core
    assert core.cls == "GT" and core.team == "CORE Autosport"
    assert core.drivers == [
        Driver(name="Patrick Long", nationality="USA"),
        Driver(name="Tom Kimber-Smith", nationality="GBR"),
    ]

    esm = race.entry("01")
    assert esm is not None and esm.cls == "P2" and esm.chassis == "HPD ARX-03b"
    assert esm.engine == "Honda HR28TT 2.8 L Turbo V6"
    ed = race.entry("02")
    assert ed is not None and ed.drivers[0] == Driver(name="Ed Brown", nationality="USA")

    dyson = race.entry("16")
    assert dyson is not None and dyson.engine == "Mazda MZR-R 2.0 L Turbo I4 (Butanol)"
    delta = race.entry("0")
    assert delta is not None and delta.engine == "\u00c9lan 1.9 L Turbo I4"
    assert delta.chassis == "DeltaWing LM12"
    beretta = race.entry("62")
    assert beretta is not None
    assert beretta.drivers[0] == Driver(name="Olivier Beretta", nationality="MON")
    von_moltke = race.entry("44")
    assert von_moltke is not None
    assert von_moltke.drivers[1] == Driver(name="Dion von Moltke", nationality="RSA")


def test_monterey_row_engines_and_race_note(monterey: ImportResult) -> None:
    race = _race(monterey)
    rows = {r.number: r for r in race.classification}
    assert rows["93"].engine == "SRT 8.0 L V10"
    notes = [n for n in race.notes if n.table == "race"]
    assert len(notes) == 1
    assert notes[0].effect == "points_forfeited" and notes[0].cars == ["17"]
    # #17 keeps its finishing position.
    assert rows["17"].position == 10 and rows["17"].status == "classified"


def test_monterey_prose_facts(monterey: ImportResult) -> None:
    facts = _race(monterey).facts
    assert facts.id == "alms-2013-monterey-race"
    assert facts.series == "American Le Mans Series"
    assert facts.season == 2013
    assert facts.round == 3
    assert facts.date == "2013-05-11"
    assert facts.event == "2013 American Le Mans Monterey"
    assert facts.circuit.name == "Mazda Raceway Laguna Seca"
    assert facts.circuit.length_mi == 2.238
    assert facts.circuit.length_km == 3.602
    assert facts.circuit.turns == 11
    assert facts.length.duration_s == 4 * 3600 and facts.length.laps is None
    assert _race(monterey).classes == ["P1", "P2", "PC", "GT", "GTC"]


# -- Monterey qualifying (shape: Pos | Class | Team | Driver | Lap Time | Grid) ------------


def test_monterey_qualifying_rows(monterey: ImportResult) -> None:
    rows = {q.number: q for q in _race(monterey).qualifying}
    assert len(rows) == 36
    assert rows["12"].position == 1 and rows["12"].best_ms == 73_429 and rows["12"].grid == 1
    assert rows["12"].driver == "Neel Jani"
    assert rows["0"].position == 15 and rows["0"].best_ms == 82_078 and rows["0"].grid == 34
    assert rows["66"].grid == 35
    assert rows["06"].position is None and rows["06"].best_ms is None
    assert rows["06"].remark == "no_time" and rows["06"].grid == 36
    assert rows["68"].best_ms == 90_151 and rows["68"].cls == "GTC"


def test_monterey_grid_applies_the_grid_column_once(monterey: ImportResult) -> None:
    race = _race(monterey)
    assert len(race.grid) == 36
    assert race.grid[:3] == ["12", "16", "6"]
    # The back-of-grid note is already in the Grid column: #0 34th, #66 35th, #06 36th.
    assert race.grid[-3:] == ["0", "66", "06"]
    notes = {n.effect: n for n in race.notes if n.table == "qualifying"}
    assert notes["grid_to_back"].cars == ["0", "66"]
    assert notes["times_disallowed"].cars == ["06"]


def test_monterey_misprinted_number_is_matched_and_noted(monterey: ImportResult) -> None:
    # Qualifying prints #51 PR1/Mathiasen (Luis Diaz); the race table has #52 with him.
    race = _race(monterey)
    assert race.entry("51") is None
    assert [q.driver for q in race.qualifying if q.number == "52"] == ["Luis D\u00edaz"]
    assert any("#51" in n.text and n.cars == ["52"] for n in race.notes)
    assert any("#51" in p.message and p.severity == "warning" for p in monterey.problems)


def test_qualifying_recording_is_the_qualifying_order(monterey: ImportResult) -> None:
    q = _qualifying(monterey)
    assert q.facts.session == "qualifying"
    assert q.facts.id == "alms-2013-monterey-qualifying"
    rows = q.classification
    assert [r.position for r in rows] == list(range(1, 37))
    assert rows[0].number == "12" and rows[0].best_lap_ms == 73_429
    assert rows[14].number == "0" and rows[14].status == "classified"
    last = rows[-1]
    assert last.number == "06" and last.status == "not_classified"
    assert last.best_lap_ms is None and last.note == "times disallowed"
    assert all(r.best_lap_ms is not None for r in rows[:-1])
    assert q.grid == [r.number for r in rows]


# -- Baltimore (shape: Pos. | Class | No. | Entry | Driver | Time | Gap | Grid) ----------


def test_baltimore_qualifying_rows(baltimore: ImportResult) -> None:
    q = _qualifying(baltimore)
    rows = {r.number: r for r in q.qualifying}
    assert len(rows) == 32
    assert rows["6"].best_ms == 85_290 and rows["6"].gap_ms is None and rows["6"].grid == 1
    assert rows["16"].gap_ms == 1_460
    assert rows["02"].best_ms == 87_669 and rows["02"].gap_ms == 2_379
    assert rows["01"].position == 5 and rows["05"].position == 9
    assert rows["27"].gap_ms == 10_211 and rows["27"].grid == 31
    dnp = rows["67"]
    assert dnp.remark == "did_not_participate" and dnp.best_ms is None
    assert dnp.grid == 32 and dnp.driver is None and dnp.position is None
    entry = q.entry("6")
    assert entry is not None and entry.team == "Muscle Milk Pickett Racing"
    assert entry.team_nationality == "USA"
    assert entry.drivers == [Driver(name="Klaus Graf", nationality="DEU")]
    estre = q.entry("68")
    assert estre is not None and estre.drivers == [
        Driver(name="K\u00e9vin Estre", nationality="FRA")
    ]
    (note,) = q.notes
    assert note.effect == "fastest_lap_deleted" and note.cars == ["7"]
    by_number = {r.number: r for r in q.classification}
    assert by_number["67"].status == "dns" and by_number["7"].status == "classified"
    assert "67" not in q.grid


def test_baltimore_prose_facts(baltimore: ImportResult) -> None:
    facts = _race(baltimore).facts
    assert (facts.round, facts.date, facts.season) == (7, "2013-08-31", 2013)
    assert facts.circuit.name == "Baltimore Street Circuit"
    assert (facts.circuit.length_mi, facts.circuit.length_km) == (2.04, 3.283)
    assert facts.circuit.turns == 12
    # The article does not say how long the race was: nothing is made up.
    assert facts.length.duration_s is None and facts.length.laps is None


def test_garbled_race_table_is_reported_precisely(baltimore: ImportResult) -> None:
    (error,) = baltimore.errors
    text = error.render("baltimore.txt")
    assert text.startswith("baltimore.txt: line 55: race table 'Race results'")
    assert "garbled" in text
    assert "position, car number, laps, class are missing" in text
    assert "only: Engine" in text
    assert "31 rows (lines 57-118)" in text
    race = _race(baltimore)
    assert race.classification == []
    # What survived is kept, as a note: the engine of each position.
    (kept,) = [n for n in race.notes if n.text.startswith("The race table kept only")]
    assert "1: Honda LM-V8 3.4 L V8" in kept.text and "31: Porsche 4.0 L Flat-6" in kept.text


def test_garbled_engines_are_read_in_order() -> None:
    article: Article = read_article(BALTIMORE.read_text(encoding="utf-8"))
    engines = dict(article.race_engines)
    assert len(engines) == 31
    assert engines[2] == "Mazda MZR-R 2.0 L Turbo I4"
    assert [p for p, e in article.race_engines if e == "Porsche 4.0 L Flat-6"] == [
        13,
        14,
        15,
        16,
        17,
        18,
        21,
        23,
        25,
        28,
        29,
        31,
    ]


# -- other layouts -------------------------------------------------------------


def test_reordered_and_extra_columns_import_the_same(monterey: ImportResult) -> None:
    variant = _import(ARTICLES / "monterey-reordered-columns.txt", "alms-2013-monterey")
    assert variant.race == monterey.race
    assert variant.qualifying == monterey.qualifying


def test_lap_count_race_with_every_status() -> None:
    result = _import(ARTICLES / "sprint-lap-count.txt", "test-2014-sprint")
    assert result.errors == []
    race = _race(result)
    assert race.facts.length.laps == 30 and race.facts.length.duration_s is None
    assert race.facts.circuit.length_km == 4.3 and race.facts.circuit.turns == 14
    assert race.facts.date == "2014-06-15" and race.facts.round == 4
    assert race.facts.series == "Testville Sports Car Championship"
    got = [(r.position, r.number, r.status, r.laps) for r in race.classification]
    assert got == [
        (1, "1", "classified", 30),
        (2, "21", "classified", 30),
        (3, "007", "classified", 29),
        (4, "70", "not_classified", 18),
        (5, "11", "retired", 12),
        (6, "8", "disqualified", 29),
        (7, "9", "dns", None),
    ]
    rows = race.classification
    assert rows[0].total_ms == 48 * 60_000 + 12_345
    assert rows[1].gap_ms == 4_512 and rows[2].gap_laps == 1 and rows[4].note == "Gearbox"
    entry = race.entry("1")
    assert entry is not None and entry.tyre == "M" and entry.engine == "Aston Martin 6.0 L V12"
    assert entry.drivers == [
        Driver(name="Ann Able", nationality="GBR"),
        Driver(name="Bob Baker", nationality="GBR"),
    ]
    bravo = race.entry("21")
    assert bravo is not None and [d.name for d in bravo.drivers] == ["Claire Dubois", "Dirk Eyck"]
    # The car that did not start is entered but not on the grid.
    assert race.grid == ["1", "21", "11", "007", "8", "70"]
    (note,) = [n for n in race.notes if n.table == "race"]
    assert note.effect == "disqualified" and note.cars == ["8"]


# -- small readers --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("DEU Klaus Graf DEU Lucas Luhr", [("Klaus Graf", "DEU"), ("Lucas Luhr", "DEU")]),
        (
            "MON Olivier Beretta ITA Matteo Malucelli",
            [("Olivier Beretta", "MON"), ("Matteo Malucelli", "ITA")],
        ),
        ("VEN Nelson Canache, Jr.", [("Nelson Canache, Jr.", "VEN")]),
        ("USA Al Unser III", [("Al Unser III", "USA")]),
    ],
)
def test_split_drivers_with_codes(cell: str, expected: list[tuple[str, str]]) -> None:
    assert [(d.name, d.nationality) for d in split_drivers(cell, True)] == expected


def test_split_drivers_without_codes() -> None:
    assert [d.name for d in split_drivers("Neel Jani", False)] == ["Neel Jani"]
    assert [d.name for d in split_drivers("Nelson Canache, Jr.", False)] == ["Nelson Canache, Jr."]
    assert [d.name for d in split_drivers("A One / B Two", False)] == ["A One", "B Two"]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1:13.429", 73_429),
        ("+1.460", 1_460),
        ("+1:07.281", 67_281),
        ("85.290", 85_290),
        ("1:02:03.5", 3_723_500),
        ("No Time", None),
        ("+1 Lap", None),
    ],
)
def test_parse_time(text: str, ms: int | None) -> None:
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize(
    ("text", "effect", "cars"),
    [
        (
            "- The #0 DeltaWing and #66 Porsche were moved to the back of the grid for ...",
            "grid_to_back",
            ["0", "66"],
        ),
        (
            "The #06 Porsche had its qualifying times disallowed after ...",
            "times_disallowed",
            ["06"],
        ),
        (
            "The No. 7 BAR1 Motorsports entry had its fastest lap deleted as penalty",
            "fastest_lap_deleted",
            ["7"],
        ),
        (
            "The #17 Porsche failed post-race technical inspection, forfeiting all championship "
            "points but still maintaining its finishing position in the race.",
            "points_forfeited",
            ["17"],
        ),
        ("The #8 Ferrari was disqualified after scrutineering.", "disqualified", ["8"]),
        ("The #3 won its 100th race.", "info", ["3"]),
    ],
)
def test_notes(text: str, effect: str, cars: list[str]) -> None:
    assert note_effect(text) == effect
    assert car_numbers_in(text) == cars


def test_prose_words_for_numbers() -> None:
    facts = read_prose(
        "The 2012 Example 6 Hours was the seventh round of the 2012 Example Series. It was "
        "held at the thirteen-turn 3.74 mi Example Raceway in Example, on October 20, 2012. "
        "The six-hour race ran late."
    )
    assert (facts.round, facts.turns, facts.duration_s) == (7, 13, 6 * 3600)
    assert facts.series == "Example Series" and facts.circuit == "Example Raceway"
    assert facts.length_km == 6.019


RACE_ONLY = """= 2015 Example 2 Hours =

The 2 hour 30 minute race was round 2 of the 2015 Example Series, held at the 2.5 km Example Park
on April 4, 2015.

== Results ==
| Pos | Class | No. | Team | Drivers | Laps | Time | Grid |
| 1 | A | 5 | Five Racing | Eve Five | 80 | 2:30:01.250 | 2 |
| 2 | A | 3 | Three Racing | Tom Three | 80 | +12.500 | 1 |
| 3 | B | 9 | Nine Racing | Nina Nine | 2 | Accident | 3 |
"""


def test_race_only_article_takes_the_grid_from_the_race_table() -> None:
    result = import_article(RACE_ONLY, race_id="r", qualifying_id="q", sessions=("race",))
    race = _race(result)
    assert race.facts.length.duration_s == 2 * 3600 + 30 * 60
    assert race.facts.circuit.name == "Example Park" and race.facts.round == 2
    assert race.grid == ["3", "5", "9"]
    rows = race.classification
    assert rows[0].total_ms == 9_001_250 and rows[1].gap_ms == 12_500
    assert rows[2].note == "Accident" and rows[2].status == "classified"  # as printed
    assert result.errors == []


def test_without_any_grid_none_is_invented() -> None:
    text = RACE_ONLY.replace(" | Grid |", " |").replace(" | 2 |\n", " |\n")
    text = text.replace(" | 1 |\n", " |\n").replace(" | 3 |\n", " |\n")
    result = import_article(text, race_id="r", qualifying_id="q", sessions=("race",))
    assert _race(result).grid == []
    assert any("no starting grid" in p.message for p in result.problems)


def test_markdown_rules_symbols_and_footnotes_are_ignored(baltimore: ImportResult) -> None:
    text = BALTIMORE.read_text(encoding="utf-8")
    header = "| Pos. | Class | No. | Entry | Driver | Time | Gap | Grid |"
    text = text.replace(header, header + "\n" + "|---" * 8 + "|")
    text = text.replace("| 1:25.290 | — | 1 |", "| 1:25.290 | — | 1\u2021 |")
    text = text.replace("| 3 | P2 | 551 |", "| '''3''' | P2 | 551[2] |")
    variant = import_article(
        text, race_id="alms-2013-baltimore-race", qualifying_id="alms-2013-baltimore-qualifying"
    )
    assert variant.qualifying == baltimore.qualifying
