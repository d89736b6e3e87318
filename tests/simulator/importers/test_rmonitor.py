"""The RMonitor decoder and importer, on two real recordings and on their quirks.

The expectations are read from the recordings with plain string handling, not
with the decoder under test: the final ``$H`` order of a practice session,
the final ``$G`` laps, the passings of a car.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from chequered.contract.events import Finish, Flag, Lap, PitIn, PitOut, Retire, SessionClosed
from simulator.importers.rmonitor import (
    NO_TIME_MS,
    Competitor,
    Heartbeat,
    Passing,
    PracticeInfo,
    RaceInfo,
    RMonitorError,
    decode,
    parse_date,
    parse_line,
    parse_time,
)
from simulator.importers.rmonitor_session import (
    Options,
    SessionError,
    choose,
    import_session,
    sessions,
)
from simulator.recording import io as recording_io
from simulator.recording.validate import validate
from simulator.timeline.timing_replay import replay
from tests.conftest import TESTS_DATA

DATA = TESTS_DATA / "rmonitor"
SEBRING = DATA / "2009_Sebring_ALMS_Session_4.txt"
MOCK = DATA / "Orbits_Mock_Session.txt"


def _lines(path: Path) -> list[str]:
    return path.read_bytes().decode("latin-1").splitlines()


def _fields(line: str) -> list[str]:
    return [f.strip('"') for f in line.split(",")]


# -- fields and records -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("00:02:13.009", 133_009),
        ("01:57:59.136", 7_079_136),
        ("00:59:59", 3_599_000),
        ("02:13.5", 133_500),
        ("1:02:03", 3_723_000),
    ],
)
def test_times(text: str, ms: int) -> None:
    assert parse_time(text) == ms


@pytest.mark.parametrize("text", ["", "abc", "00:61:00", "1.5"])
def test_not_times(text: str) -> None:
    assert parse_time(text) is None


def test_dates_in_both_forms_the_feed_uses() -> None:
    assert parse_date("27 Jan 09") == "2009-01-27"
    assert parse_date("01/27/2009") == "2009-01-27"
    assert parse_date("junk") is None


def test_each_record_type() -> None:
    a = parse_line('$A,"21","21",8852130,"","Dominik Farnbacher","Panoz Esperante",1')
    assert isinstance(a, Competitor)
    assert (a.reg, a.number, a.transponder, a.last, a.class_id) == (
        "21",
        "21",
        "8852130",
        "Dominik Farnbacher",
        1,
    )
    comp = parse_line('$COMP,"7","7",1,"Joel","Feinberg","","Primetime Race Group"')
    assert isinstance(comp, Competitor)
    assert comp.extra == "Primetime Race Group"
    f = parse_line('$F,9999,"00:00:00","07:59:36","00:59:59","      "')
    assert isinstance(f, Heartbeat)
    assert f.race_time_ms is None and f.laps_to_go is None and f.flag == ""
    g = parse_line('$G,2,"45",,"00:59:59.999"')
    assert isinstance(g, RaceInfo)
    assert g.laps is None and g.total_ms is None
    h = parse_line('$H,1,"3",1,"00:00:33.271"')
    assert isinstance(h, PracticeInfo)
    assert (h.best_lap, h.best_ms) == (1, 33_271)
    h0 = parse_line('$H,2,"1",0,"00:00:00.000"')
    assert isinstance(h0, PracticeInfo)
    assert h0.best_lap is None and h0.best_ms is None
    j = parse_line('$J,"21","00:00:00.000","00:00:56.665"')
    assert isinstance(j, Passing)
    assert j.lap_ms is None and j.total_ms == 56_665
    assert parse_time("00:59:59.999") == NO_TIME_MS


@pytest.mark.parametrize(
    "line",
    ["hello", "$Z,1,2", '$J,"21"', '$G,x,"1",,"00:00:01.000"', '$J,"1","12:xx","00:00:01.000"'],
)
def test_lines_that_are_not_records(line: str) -> None:
    with pytest.raises(ValueError):
        parse_line(line)


def test_real_recordings_decode_completely() -> None:
    for path in (SEBRING, MOCK):
        decoded = decode(path.read_bytes(), str(path))
        assert not decoded.skipped
        expected = Counter(
            "COMP" if line.startswith("$COMP") else line[1] for line in _lines(path) if line.strip()
        )
        got = Counter(
            r.kind if isinstance(r, Competitor) and r.kind == "COMP" else _letter(r)
            for r in decoded.records
        )
        assert got == expected


def _letter(record: object) -> str:
    return {
        "Competitor": "A",
        "RunInfo": "B",
        "ClassInfo": "C",
        "Setting": "E",
        "Heartbeat": "F",
        "RaceInfo": "G",
        "PracticeInfo": "H",
        "Init": "I",
        "Passing": "J",
        "LoopPassing": "L",
    }[type(record).__name__]


def test_bytes_that_are_not_utf8_are_read_and_reported() -> None:
    data = b'$A,"5","5",1,"J\xf6rg","M\xfcller","",1\r\n$J,"5","00:01:00.000","00:02:00.000"\r\n'
    decoded = decode(data, "x.txt")
    assert decoded.not_utf8 == [1]
    first = decoded.records[0]
    assert isinstance(first, Competitor)
    assert first.first == "Jörg" and first.last == "Müller"


def test_torn_lines_are_skipped_and_listed() -> None:
    data = (
        b'"00:00:01.000"\n$B,1,"Race"\n$J,"5","00:01:00.000","00:02:00.000"\n'
        b'$F,9999,"00:00:00","12:00:00","00:02:00","Green "\n$J,"5","00:01:0'
    )
    decoded = decode(data, "x.txt")
    assert [line for line, _ in decoded.skipped] == [1, 5]
    assert len(decoded.records) == 3


def test_bare_carriage_returns_separate_records() -> None:
    data = b'$B,1,"Race"\r$J,"5","00:01:00.000","00:02:00.000"\r'
    assert len(decode(data, "x.txt").records) == 2


def test_a_file_that_is_not_rmonitor_names_the_line() -> None:
    data = b"NUMBER;LAP_NUMBER;ELAPSED\n1;1;1:00.000\n2;1;1:01.000\n"
    with pytest.raises(RMonitorError, match=r"^x\.csv: line 1: not an RMonitor record"):
        decode(data, "x.csv")
    with pytest.raises(RMonitorError, match="empty"):
        decode(b"\n\n", "x.txt")


# -- sessions -------------------------------------------------------------------------


def test_sessions_of_a_capture_with_a_reset_at_the_end() -> None:
    found = sessions(decode(SEBRING.read_bytes(), "s"))
    assert [(s.run, s.name, s.passings) for s in found] == [
        (32, "Test Session 4", 374),
        (95, "Test Session 4", 0),
        (95, "Test Session 4", 0),
    ]
    # Timing came for 50 minutes before the first $B 32.
    first_b = next(i for i, line in enumerate(_lines(SEBRING), 1) if line.startswith("$B"))
    assert found[0].first_line == 1
    assert found[0].records[found[0].before_run].line == first_b + 1
    chosen, why = choose(found, None, "s")
    assert chosen is found[0]
    assert "chosen: it holds the timing" in why
    assert choose(found, "Test Session 4", "s")[0] is found[0]
    assert choose(found, "95", "s")[0] is found[2]
    with pytest.raises(SessionError, match="no session '7'"):
        choose(found, "7", "s")


def test_choosing_a_session_without_timing_is_refused() -> None:
    with pytest.raises(SessionError, match="holds no timing"):
        import_session(decode(SEBRING.read_bytes(), "s"), Options(session="95"))


def test_stale_records_before_a_session_and_entries_sent_under_another_run() -> None:
    found = sessions(decode(MOCK.read_bytes(), "m"))
    assert [(s.run, s.passings) for s in found] == [(95, 0), (25, 52), (95, 0)]
    # Session 25 got its entry list under run 95, just before it.
    assert sum(isinstance(r, Competitor) for r in found[1].inherited) == 12


# -- the import -------------------------------------------------------------------------


def _final(path: Path, kind: str, first: int, last: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for n, line in enumerate(_lines(path), 1):
        if first <= n <= last and line.startswith(f"${kind},"):
            f = _fields(line)
            out[f[2]] = f
    return out


def test_sebring_practice_is_ordered_by_best_lap_as_h_is() -> None:
    imported = import_session(decode(SEBRING.read_bytes(), str(SEBRING)))
    rec = imported.recording
    assert rec.facts.session == "qualifying"
    assert rec.facts.circuit.name == "Sebring International Raceway"
    assert rec.facts.circuit.length_mi == 3.7
    assert rec.facts.date == "2009-01-27"
    assert rec.facts.start_time == "07:59:59"
    assert rec.facts.length.duration_s == 7200
    last = imported.session.last_line
    final_h = _final(SEBRING, "H", 1, last)
    by_h = sorted(final_h.values(), key=lambda f: int(f[1]))
    assert [r.number for r in rec.classification] == [f[2] for f in by_h]
    for row in rec.classification:
        h = final_h[row.number or ""]
        assert row.best_lap_ms == parse_time(h[4])
        assert row.best_lap == int(h[3])
    final_g = _final(SEBRING, "G", 1, last)
    assert {r.number: r.laps for r in rec.classification} == {
        car: int(f[3]) for car, f in final_g.items()
    }
    assert rec.classes == ["LMP1", "LMP2", "LMGT2"]
    assert {e.number: e.cls for e in rec.entries}["15"] == "LMP2"
    drivers = {e.number: [d.name for d in e.drivers] for e in rec.entries}
    assert drivers["40"] == ["David Robertson", "Andrea Robertson", "David Murry"]
    assert drivers["66"] == ["Gil de Ferran", "Pagenaud"]
    assert validate(recording_io.loads(recording_io.dumps(rec))) == []


def test_sebring_quirks_are_each_reported_in_one_line() -> None:
    report = import_session(decode(SEBRING.read_bytes(), "s")).report
    text = "\n".join(report)
    assert "3974 records before the session's first $B" in text
    assert "not scored as laps" in text  # pit lane crossings under the red flag
    assert "counted again" in text  # car 44's double read of the pit loop, deleted
    assert "previous total plus that lap" in text  # crossings at the final flag
    assert "pit stops timed from the $L" in text
    assert len(report) == len(set(report))


def test_sebring_laps_and_pit_stops_at_their_recorded_times() -> None:
    rec = import_session(decode(SEBRING.read_bytes(), "s")).recording
    laps = {(r.number, r.lap): r for r in rec.laps}
    # $J,"45","00:02:13.009","00:04:37.638" then $G,2,"45",1,...
    assert laps[("45", 1)].elapsed_ms == 277_638 and laps[("45", 1)].lap_ms == 133_009
    # Car 21 left the pits at 08:01:12.556, went in at 08:03:53.782 (a record that
    # arrived late), crossed the line in the pit lane, out at 08:08:16.613.
    assert laps[("21", 1)].in_pit
    assert laps[("21", 2)].pit_ms == 262_831
    # The double read of the pit loop (lap 29 of 3.054 s) was deleted by the timing.
    assert laps[("44", 29)].lap_ms == 251_361
    assert all(r.lap_ms is None or r.lap_ms > 60_000 for r in rec.laps)
    # Crossings at the flag carry the total the final $G gives.
    assert laps[("40", 47)].elapsed_ms == 7_203_686


def test_sebring_replays() -> None:
    rec = import_session(decode(SEBRING.read_bytes(), "s")).recording
    events = replay(rec, race="sebring")
    laps = [e for e in events if isinstance(e, Lap)]
    assert len(laps) == len(rec.laps)
    assert sum(isinstance(e, PitIn) for e in events) == sum(isinstance(e, PitOut) for e in events)
    closed = events[-1]
    assert isinstance(closed, SessionClosed)
    assert [r.car for r in closed.classification] == [r.number for r in rec.classification]


def test_mock_race() -> None:
    imported = import_session(decode(MOCK.read_bytes(), "m"), Options(season=2020))
    rec = imported.recording
    assert rec.facts.session == "race"
    assert rec.facts.length.duration_s == 300
    assert rec.classes == ["Formula Vee"]
    assert [(r.number, r.laps) for r in rec.classification] == [
        ("3", 8),
        ("4", 8),
        ("1", 8),
        ("5", 8),
        ("6", 7),
        ("2", 7),
    ]
    assert rec.classification[1].gap_ms == 316_121 - 314_808
    assert rec.classification[4].gap_laps == 1
    events = replay(rec, race="mock")
    chequered = next(e for e in events if isinstance(e, Flag) and e.flag == "chequered")
    assert chequered.t_ms == 314_808  # the leader's crossing, a second before $F says Finish
    assert [e.car for e in events if isinstance(e, Finish)][:1] == ["3"]
    yellow = [e.t_ms for e in events if isinstance(e, Flag) and e.flag == "fcy"]
    assert len(yellow) == 1


def test_a_mock_without_a_date_asks_for_the_season() -> None:
    with pytest.raises(SessionError, match="--season"):
        import_session(decode(MOCK.read_bytes(), "m"))


def test_a_capture_started_late_keeps_the_laps_it_never_saw() -> None:
    lines = SEBRING.read_bytes().split(b"\r\n")
    cut = next(i for i, line in enumerate(lines) if b"01:00:" in line and line.startswith(b"$J"))
    late = b"\r\n".join(lines[cut - 5 :])
    full = import_session(decode(SEBRING.read_bytes(), "s")).recording
    imported = import_session(decode(late, "late"))
    rec = imported.recording
    assert {r.number: r.laps for r in rec.classification} == {
        r.number: r.laps for r in full.classification
    }
    first: dict[str, int] = {}
    for lap in rec.laps:
        first.setdefault(lap.number, lap.lap)
    assert first["40"] > 10 and first["45"] > 10  # the capture holds no early laps
    assert first["9"] == 1  # car 9 only went out late in the session
    assert any("starts after the session did" in n.text for n in rec.notes)
    closed = replay(rec, race="late")[-1]
    assert isinstance(closed, SessionClosed)
    assert {r.car: r.laps for r in closed.classification} == {
        r.number: r.laps for r in full.classification
    }


def test_repeated_and_stale_passings() -> None:
    base = MOCK.read_bytes().decode()
    repeated = base.replace(
        '$J,"3","00:00:33.271","00:00:35.604"\n',
        '$J,"3","00:00:33.271","00:00:35.604"\n$J,"3","00:00:33.271","00:00:35.604"\n'
        '$J,"99","00:00:33.271","00:00:35.604"\n',
    )
    imported = import_session(decode(repeated.encode(), "m"), Options(season=2020))
    text = "\n".join(imported.report)
    assert "1 repeated passings dropped" in text
    assert "1 passings of cars not in this session's entry list ignored as stale" in text
    assert [r.number for r in imported.recording.classification] == ["3", "4", "1", "5", "6", "2"]


def test_the_kind_can_be_set() -> None:
    rec = import_session(
        decode(MOCK.read_bytes(), "m"), Options(season=2020, kind="qualifying")
    ).recording
    assert rec.facts.session == "qualifying"
    best = [r.best_lap_ms or 0 for r in rec.classification]
    assert best == sorted(best) and 0 not in best


def test_unknown_loops_and_flags_are_reported() -> None:
    data = MOCK.read_bytes().replace(b'"Yellow"', b'"Purple"')
    report = "\n".join(import_session(decode(data, "m"), Options(season=2020)).report)
    assert "flag 'PURPLE' is not known; taken as green" in report


def test_no_track_facts_ask_for_them() -> None:
    data = re.sub(rb"\$E,[^\n]*\n", b"", MOCK.read_bytes())
    with pytest.raises(SessionError, match="--circuit"):
        import_session(decode(data, "m"), Options(season=2020))
    rec = import_session(
        decode(data, "m"), Options(season=2020, circuit="Brands Hatch Indy", lap_km=1.944)
    ).recording
    assert rec.facts.circuit.length_km == 1.944


def test_retirements_are_the_replays_not_the_feeds() -> None:
    rec = import_session(decode(MOCK.read_bytes(), "m"), Options(season=2020)).recording
    retired = [e.car for e in replay(rec, race="m") if isinstance(e, Retire)]
    # Cars 6 and 2 were not seen again after 5:07; the classification keeps them.
    assert retired == ["6", "2"]
    assert {r.status for r in rec.classification} == {"classified"}
