"""Lap charts: positions read off the events, drawn as SVG without a library, or as PNG."""

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


def test_svg_is_well_formed_with_a_line_per_car_coloured_by_class(events: list[Event]) -> None:
    chart = lapchart.chart(events)
    text = lapchart.svg(chart)
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    drawn = [c for c in chart.cars if len(c.points) + (1 if c.start else 0) >= 2]
    assert len(lines) == len(drawn)
    colours = {line.get("stroke") for line in lines}
    assert colours == {chart.colour(c.cls) for c in drawn}
    # Retired cars are dashed; the winner's line ends at its last lap on P1.
    dashed = [line for line in lines if line.get("stroke-dasharray")]
    assert len(dashed) == sum(1 for c in drawn if c.retired)
    winner = next(line for line in lines if line.findtext(f"{SVG}title") == "#6 P1")
    last = winner.get("points", "").split()[-1]
    x, y = (float(v) for v in last.split(","))
    assert x == pytest.approx(lapchart.ChartStyle().width - lapchart.ChartStyle().margin_right)
    assert y == pytest.approx(lapchart.ChartStyle().margin_top + lapchart.ChartStyle().row / 2)


def test_svg_escapes_names() -> None:
    chart = lapchart.Chart(title="A & B <race>", classes=["X"], cars=[], laps=0, positions=1)
    root = ET.fromstring(lapchart.svg(chart))
    assert root.findtext(f"{SVG}title") == "A & B <race> lap chart"


def test_png_is_a_png(events: list[Event]) -> None:
    pytest.importorskip("matplotlib")
    data = lapchart.png(lapchart.chart(events))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
