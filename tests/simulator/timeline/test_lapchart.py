"""Lap charts: positions read off the events, drawn by matplotlib as SVG or PNG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from chequered.contract.events import Event, Lap, SessionOpened
from simulator.recording import io as recording_io
from simulator.timeline import build as timeline
from simulator.timeline import lapchart
from tests.conftest import REPLAYS

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def events() -> list[Event]:
    rec = recording_io.load(REPLAYS / "alms-2013-baltimore-race.json")
    return timeline.build(rec, seed=2)


def test_chart_reads_each_cars_position_at_every_lap(events: list[Event]) -> None:
    chart = lapchart.chart(events)
    laps = [e for e in events if isinstance(e, Lap)]
    opened = events[0]
    assert isinstance(opened, SessionOpened)
    by_car = {c.number: c for c in chart.cars}
    assert set(by_car) == {e.car for e in laps} | {e.number for e in opened.entries}
    for e in laps:
        assert (e.lap, e.position) in by_car[e.car].points
    assert chart.laps == 41
    assert chart.positions == len(opened.grid)
    assert by_car["6"].start == 1
    # The cars out in the first-lap crash draw no line but keep their grid slot.
    assert by_car["551"].points == [] and by_car["551"].retired
    assert chart.colour("P1") != chart.colour("GT")
    assert chart.colour("LMP3") not in lapchart.CLASS_COLOURS.values()


def _lines(root: ET.Element) -> dict[str, ET.Element]:
    """Each car's drawn path, by car number (its group id is ``car-<number>``)."""
    out = {}
    for group in root.iter(f"{SVG}g"):
        gid = group.get("id", "")
        if gid.startswith("car-"):
            path = group.find(f"{SVG}path")
            assert path is not None, gid
            out[gid.removeprefix("car-")] = path
    return out


def _vertices(path: ET.Element) -> list[tuple[float, float]]:
    words = path.get("d", "").replace("M", " ").replace("L", " ").split()
    return [(float(words[i]), float(words[i + 1])) for i in range(0, len(words) - 1, 2)]


def test_svg_is_well_formed_with_a_line_per_car_coloured_by_class(events: list[Event]) -> None:
    pytest.importorskip("matplotlib")
    chart = lapchart.chart(events)
    root = ET.fromstring(lapchart.svg(chart))
    assert root.tag == f"{SVG}svg"
    lines = _lines(root)
    drawn = [c for c in chart.cars if c.points or c.start]
    assert set(lines) == {c.number for c in drawn}
    for car in drawn:
        style = lines[car.number].get("style", "")
        assert f"stroke: {chart.colour(car.cls)}" in style, car.number
        # Retired cars are dashed.
        assert ("stroke-dasharray" in style) == car.retired, car.number
    # The winner's line ends furthest right (the last lap), at the top (P1).
    ends = {number: _vertices(path)[-1] for number, path in lines.items()}
    x, y = ends["6"]
    assert x == max(e[0] for e in ends.values())
    assert y == min(e[1] for e in ends.values())


def test_svg_escapes_names() -> None:
    pytest.importorskip("matplotlib")
    chart = lapchart.Chart(title="A & B <race>", classes=["X"], cars=[], laps=0, positions=1)
    root = ET.fromstring(lapchart.svg(chart))
    assert root.findtext(f"{SVG}title") == "A & B <race> lap chart"


def test_png_is_a_png(events: list[Event]) -> None:
    pytest.importorskip("matplotlib")
    data = lapchart.png(lapchart.chart(events))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
