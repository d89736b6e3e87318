"""Lap charts: each car's running position lap by lap, one line per car, coloured by class.

``chart(events)`` reads the positions off the ``lap`` events; ``svg(chart)``
writes the picture as a string (no library); ``png(chart)`` draws it with
matplotlib when the ``plot`` extra is installed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

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


def svg(c: Chart, style: ChartStyle | None = None) -> str:
    """The chart as a standalone SVG document."""
    s = style or ChartStyle()
    height = s.margin_top + s.margin_bottom + s.row * c.positions
    plot_w = s.width - s.margin_left - s.margin_right
    span = max(1, c.laps)

    def x(lap: int) -> float:
        return s.margin_left + plot_w * lap / span

    def y(position: int) -> float:
        return s.margin_top + s.row * (position - 0.5)

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{s.width}" height="{height}" '
        f'viewBox="0 0 {s.width} {height}" font-family="sans-serif" '
        f'font-size="{s.font_size}">',
        f"<title>{escape(c.title)} lap chart</title>",
        f'<rect width="{s.width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{s.margin_left}" y="{s.margin_top - 28}" font-size="{s.font_size + 4}" '
        f'font-weight="bold">{escape(c.title)}</text>',
    ]
    # Grid: a faint line every ten laps, the lap numbers under the plot.
    step = 10 if span > 30 else 5 if span > 10 else 1
    bottom = s.margin_top + s.row * c.positions
    for lap in range(0, span + 1, step):
        out.append(
            f'<line x1="{x(lap):.1f}" y1="{s.margin_top}" x2="{x(lap):.1f}" y2="{bottom}" '
            'stroke="#e5e5e5"/>'
        )
        out.append(
            f'<text x="{x(lap):.1f}" y="{bottom + 16}" text-anchor="middle" '
            f'fill="#555">{lap}</text>'
        )
    out.append(
        f'<text x="{s.margin_left + plot_w / 2:.1f}" y="{bottom + 32}" text-anchor="middle" '
        'fill="#555">lap</text>'
    )
    # Legend: one swatch per class.
    lx = s.margin_left + plot_w
    for i, cls in enumerate(reversed(c.classes)):
        cx = lx - i * 60
        out.append(
            f'<rect x="{cx - 40}" y="{s.margin_top - 38}" width="12" height="12" '
            f'fill="{c.colour(cls)}"/>'
        )
        out.append(f'<text x="{cx - 24}" y="{s.margin_top - 28}">{escape(cls)}</text>')
    for car in sorted(c.cars, key=lambda k: k.start or 10**6):
        colour = c.colour(car.cls)
        points = [(0, car.start)] if car.start else []
        points += car.points
        number = escape(car.number)
        if car.start:
            out.append(
                f'<text x="{s.margin_left - 6}" y="{y(car.start) + 4:.1f}" text-anchor="end" '
                f'fill="{colour}">{number}</text>'
            )
        if len(points) >= 2:
            coords = " ".join(f"{x(lap):.1f},{y(pos):.1f}" for lap, pos in points)
            dash = ' stroke-dasharray="4 3"' if car.retired else ""
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" '
                f'stroke-width="{s.line_width}" stroke-linejoin="round"{dash}>'
                f"<title>#{number} {escape(car.cls)}</title></polyline>"
            )
        if car.points:
            lap, pos = car.points[-1]
            label = f"{pos} #{number}" + (" out" if car.retired else "")
            out.append(
                f'<text x="{x(lap) + 6:.1f}" y="{y(pos) + 4:.1f}" fill="{colour}">{label}</text>'
            )
    out.append("</svg>")
    return "\n".join(out) + "\n"


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def png(c: Chart, *, dpi: int = 100) -> bytes:
    """The chart as PNG bytes, drawn with matplotlib (the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise PlotUnavailable(
            "PNG lap charts need matplotlib: pip install 'chequered[plot]'"
        ) from exc
    style = ChartStyle()
    height = (style.margin_top + style.margin_bottom + style.row * c.positions) / dpi
    fig, ax = plt.subplots(figsize=(style.width / dpi, max(3.0, height)), dpi=dpi)
    try:
        for car in c.cars:
            points = ([(0, car.start)] if car.start else []) + car.points
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                color=c.colour(car.cls),
                linewidth=1.2,
                linestyle="--" if car.retired else "-",
            )
            ax.annotate(
                f"#{car.number}",
                (xs[-1], ys[-1]),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=7,
                va="center",
                color=c.colour(car.cls),
            )
        ax.set_ylim(c.positions + 0.5, 0.5)
        ax.set_xlim(0, max(1, c.laps))
        ax.set_xlabel("lap")
        ax.set_ylabel("position")
        ax.set_title(c.title)
        for cls in c.classes:
            ax.plot([], [], color=c.colour(cls), label=cls)
        ax.legend(loc="lower left", fontsize=8, ncols=max(1, len(c.classes)))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)
