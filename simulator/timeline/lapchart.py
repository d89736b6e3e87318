"""Lap charts: each car's running position lap by lap, one line per car, coloured by class.

``chart(events)`` reads the positions off the ``lap`` events (pure); ``svg`` and
``png`` draw it, both through one matplotlib drawing (the ``plot`` extra).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Literal

from chequered.contract.events import Event, Lap, Retire, SessionOpened

CLASS_COLOURS: dict[str, str] = {
    "P1": "#d62728",
    "P2": "#1f77b4",
    "PC": "#9467bd",
    "GT": "#2ca02c",
    "GTC": "#ff7f0e",
}
"""Colours of the classes the recorded races use; other classes take the palette below."""
PALETTE = ("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939")


@dataclass(frozen=True)
class ChartStyle:
    width: int = 1200
    """Picture width in pixels (SVG user units)."""
    row: int = 18
    """Height of one position."""
    margin_left: int = 60
    margin_right: int = 90
    margin_top: int = 50
    margin_bottom: int = 40
    line_width: float = 1.6
    font_size: int = 11


@dataclass
class CarLine:
    number: str
    cls: str
    start: int
    """Grid position (0 when unknown)."""
    points: list[tuple[int, int]] = field(default_factory=list)
    """(lap, position at the line)."""
    retired: bool = False


@dataclass
class Chart:
    title: str
    classes: list[str]
    cars: list[CarLine]
    laps: int
    positions: int

    def colour(self, cls: str) -> str:
        if cls in CLASS_COLOURS:
            return CLASS_COLOURS[cls]
        others = [c for c in self.classes if c not in CLASS_COLOURS]
        index = others.index(cls) if cls in others else len(others)
        return PALETTE[index % len(PALETTE)]


def chart(events: list[Event]) -> Chart:
    """The lap chart of an event log."""
    title = ""
    classes: list[str] = []
    cars: dict[str, CarLine] = {}
    for e in events:
        if isinstance(e, SessionOpened):
            title = f"{e.session.name} ({e.session.kind})"
            classes = list(e.classes)
            slot = {n: i + 1 for i, n in enumerate(e.grid)}
            for entry in e.entries:
                cars[entry.number] = CarLine(entry.number, entry.cls, slot.get(entry.number, 0))
        elif isinstance(e, Lap):
            line = cars.setdefault(e.car, CarLine(e.car, "?", 0))
            line.points.append((e.lap, e.position))
        elif isinstance(e, Retire) and e.car in cars:
            cars[e.car].retired = True
    running = [c for c in cars.values() if c.points or c.start]
    laps = max((p[0] for c in running for p in c.points), default=0)
    positions = max([p[1] for c in running for p in c.points] + [c.start for c in running] + [1])
    return Chart(title=title, classes=classes, cars=running, laps=laps, positions=positions)


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def svg(c: Chart, style: ChartStyle | None = None) -> str:
    """The chart as a standalone SVG document (each car's line a group ``car-<number>``)."""
    return render(c, "svg", style=style).decode()


def png(c: Chart, *, dpi: int = 100, style: ChartStyle | None = None) -> bytes:
    """The chart as PNG bytes."""
    return render(c, "png", dpi=dpi, style=style)


def render(
    c: Chart, fmt: Literal["svg", "png"], *, dpi: int = 100, style: ChartStyle | None = None
) -> bytes:
    """The chart drawn by matplotlib (the ``plot`` extra) in ``fmt``: one drawing for both."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PlotUnavailable(
            "lap charts are drawn by matplotlib: pip install 'chequered[plot]'"
        ) from exc
    s = style or ChartStyle()
    height = (s.margin_top + s.margin_bottom + s.row * c.positions) / dpi
    fig, ax = plt.subplots(figsize=(s.width / dpi, max(3.0, height)), dpi=dpi)
    try:
        _draw(ax, c, s)
        buf = io.BytesIO()
        # An SVG's <title> names the chart for screen readers and browser tabs.
        metadata = {"Title": f"{c.title} lap chart"} if fmt == "svg" else None
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata=metadata)
        return buf.getvalue()
    finally:
        plt.close(fig)


def _draw(ax: Any, c: Chart, s: ChartStyle) -> None:
    for car in sorted(c.cars, key=lambda k: k.start or 10**6):
        points = ([(0, car.start)] if car.start else []) + car.points
        if not points:
            continue
        colour = c.colour(car.cls)
        xs, ys = zip(*points, strict=True)
        # gid: the car's group in the SVG, so that a page or a test can find its line.
        ax.plot(
            xs,
            ys,
            color=colour,
            linewidth=s.line_width,
            linestyle="--" if car.retired else "-",
            gid=f"car-{car.number}",
        )
        if car.start:
            ax.annotate(
                car.number, (0, car.start), xytext=(-4, 0), textcoords="offset points",
                fontsize=s.font_size * 0.7, va="center", ha="right", color=colour,
            )  # fmt: skip
        if car.points:
            lap, pos = car.points[-1]
            label = f"{pos} #{car.number}" + (" out" if car.retired else "")
            ax.annotate(
                label, (lap, pos), xytext=(4, 0), textcoords="offset points",
                fontsize=s.font_size * 0.7, va="center", color=colour,
            )  # fmt: skip
    ax.set_ylim(c.positions + 0.5, 0.5)
    ax.set_xlim(0, max(1, c.laps))
    ax.set_xlabel("lap")
    ax.set_ylabel("position")
    ax.set_title(c.title)
    ax.grid(axis="x", color="#e5e5e5")
    for cls in c.classes:
        ax.plot([], [], color=c.colour(cls), label=cls)
    if c.classes:
        ax.legend(loc="lower left", fontsize=8, ncols=max(1, len(c.classes)))
