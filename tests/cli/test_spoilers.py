"""Spoiler-safe commands: ``chequered races --no-spoilers`` and ``chequered demo --no-spoilers``
say nothing of how a race went."""

from __future__ import annotations

import asyncio
import io
import re
from pathlib import Path

import pytest

from chequered.cli.demo import Demo
from chequered.cli.main import main
from tests.conftest import REPLAYS
from tests.support.feed import tiny_race

RACE = "alms-2013-monterey-race"


def test_races_without_spoilers_leaves_out_laps_results_and_yellows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / f"{RACE}.json").write_bytes((REPLAYS / f"{RACE}.json").read_bytes())
    assert main(["races", "--dir", str(tmp_path)]) == 0
    full = capsys.readouterr().out
    assert "DATA" in full and "YELLOW" in full and re.search(r"laps \d+|no lap timing", full)
    assert main(["races", "--dir", str(tmp_path), "--no-spoilers"]) == 0
    safe = capsys.readouterr().out.splitlines()
    assert safe[0].split() == ["NAME", "SESSION", "DATE", "CIRCUIT", "LENGTH", "CLASSES", "CARS"]
    row = next(line for line in safe if line.startswith(RACE))
    assert row.split()[-1] == "36/36" and "%" not in row and "article" not in row
    assert "hidden (--no-spoilers)" in safe[-1]


async def test_the_demo_without_spoilers_names_no_winner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("broker.mosquitto.binary", lambda: None)
    out = io.StringIO()
    race = "demo-safe"
    run = Demo(
        race=race, events=tiny_race(race), speed=None, exit_at_end=True, out=out, spoilers=False
    )
    assert await asyncio.wait_for(run.run(asyncio.Event()), 60) == 0
    lines = out.getvalue().splitlines()
    assert re.match(rf"widget: http://127\.0\.0\.1:\d+/\?race={race}&spoilers=off$", lines[1])
    assert lines[-1] == "race finished (result not shown: --no-spoilers)"
    progress = [line for line in lines if " lap " in line]
    assert progress and all("/" not in line and "#" not in line for line in progress), progress
    assert not any("Team 1" in line for line in lines)
