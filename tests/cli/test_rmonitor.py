"""``chequered import-rmonitor`` as a user meets it: reports, refusals, exit status."""

from __future__ import annotations

from pathlib import Path

import pytest

from chequered.cli.main import main
from simulator.recording import io as recording_io
from tests.conftest import TESTS_DATA

DATA = TESTS_DATA / "rmonitor"


def test_import_writes_the_recording_and_says_what_it_decided(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sebring.json"
    assert (
        main(["import-rmonitor", str(DATA / "2009_Sebring_ALMS_Session_4.txt"), "-o", str(out)])
        == 0
    )
    rec = recording_io.load(out)
    assert rec.facts.session == "qualifying" and len(rec.laps) == 360
    printed = capsys.readouterr().out
    assert "session 32 'Test Session 4' (lines 1-16146) chosen" in printed
    assert printed.rstrip().endswith("11 cars, 360 laps")
    assert (
        main(["import-rmonitor", str(DATA / "2009_Sebring_ALMS_Session_4.txt"), "-o", str(out)])
        == 2
    )
    assert "--force" in capsys.readouterr().err


def test_a_file_that_is_not_rmonitor_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "results.csv"
    bad.write_text("POSITION,NUMBER,STATUS\n1,7,Classified\n2,8,Classified\n")
    out = tmp_path / "x.json"
    assert main(["import-rmonitor", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"chequered import-rmonitor: {bad}: line 1: not an RMonitor record")
    assert err.endswith("nothing written")
    assert not out.exists()


def test_a_session_without_timing_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.json"
    args = ["import-rmonitor", str(DATA / "2009_Sebring_ALMS_Session_4.txt"), "-o", str(out)]
    assert main([*args, "--session", "95"]) == 2
    assert "holds no timing" in capsys.readouterr().err
    assert not out.exists()
