"""``chequered timeline`` and ``chequered lapchart`` through the real command line entry point."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from chequered.cli.main import main
from chequered.contract.events import decode
from simulator.recording import io as recording_io
from simulator.timeline import build as timeline
from simulator.timeline import lapchart
from tests.conftest import REPLAYS


def test_timeline_writes_json_lines_that_decode_to_the_log(tmp_path: Path) -> None:
    out = tmp_path / "log.jsonl"
    assert main(["timeline", "alms-2013-baltimore-race", "--seed", "4", "-o", str(out)]) == 0
    lines = out.read_bytes().splitlines()
    decoded = [decode(line) for line in lines]
    expected = timeline.build(recording_io.load(REPLAYS / "alms-2013-baltimore-race.json"), seed=4)
    assert decoded == expected
    assert json.loads(lines[0])["kind"] == "session_open"
    assert json.loads(lines[-1])["kind"] == "session_close"


def test_timeline_to_standard_output_takes_a_path(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    path = REPLAYS / "alms-2013-monterey-qualifying.json"
    assert main(["timeline", str(path), "--seed", "1"]) == 0
    out = capfdbinary.readouterr().out
    first = decode(out.splitlines()[0])
    assert first.race == "alms-2013-monterey-qualifying"


def test_lapchart_svg_and_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    svg = tmp_path / "chart.svg"
    assert main(["lapchart", "alms-2013-baltimore-race", "-o", str(svg)]) == 0
    assert ET.fromstring(svg.read_bytes()).tag == "{http://www.w3.org/2000/svg}svg"
    png = tmp_path / "sub" / "chart.png"
    assert main(["lapchart", "alms-2013-baltimore-race", "--seed", "2", "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_png_without_matplotlib_is_a_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def unavailable(chart: lapchart.Chart, fmt: str, **_: object) -> bytes:
        raise lapchart.PlotUnavailable("lap charts are drawn by matplotlib")

    monkeypatch.setattr(lapchart, "render", unavailable)
    for name in ("chart.png", "chart.svg"):
        out = tmp_path / name
        assert main(["lapchart", "alms-2013-baltimore-race", "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "matplotlib" in err and str(out) in err
        assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["timeline", "no-such-race"], "no such recording"),
        (["lapchart", "alms-2013-baltimore-race", "-o", "chart.pdf"], ".svg or .png"),
    ],
)
def test_user_errors_are_one_line(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err


def test_a_broken_recording_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "chequered.recording"}')
    assert main(["timeline", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err


def test_an_unreachable_result_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = recording_io.load(REPLAYS / "alms-2013-baltimore-race.json")
    # 300 laps of a 3.3 km street circuit in two hours: no pace makes that.
    rec.classification[0].laps = 300
    path = tmp_path / "impossible.json"
    recording_io.save(rec, path)
    assert main(["timeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "#6" in err and "300 laps" in err
