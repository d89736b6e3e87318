"""The load test's plot: one self-contained HTML page of inline SVG charts.

Latency percentiles over time, throughput over time, throughput and
latency against offered load (the knee of a ramp), and the latency
histogram, drawn from the report dictionary. Pure: returns text; no plotting
library, no files, no network (the page loads nothing).
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence

WIDTH = 760
HEIGHT = 260
MARGIN_LEFT = 64
MARGIN_RIGHT = 16
MARGIN_TOP = 28
MARGIN_BOTTOM = 40
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")

Series = tuple[str, Sequence[tuple[float, float]]]
CAPTION_KEYS = (
    "races",
    "speed",
    "clients",
    "duration_s",
    "recording",
    "broker",
    "client_workers",
    "client_impl",
    "mode",
    "target",
    "connect_rate",
    "ramp_s",
)


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        top = step * 10**exp
        if top >= value:
            return float(top)
    return float(10 ** (exp + 1))


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    w, h = WIDTH, HEIGHT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{html.escape(title)}</text>',
        f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle" font-size="12">'
        f"{html.escape(x_label)}</text>",
        f'<text x="14" y="{h / 2}" text-anchor="middle" font-size="12" '
        f'transform="rotate(-90 14 {h / 2})">{html.escape(y_label)}</text>',
        *body,
        "</svg>",
    ]
    return "\n".join(parts)


def line_chart(
    title: str, x_label: str, y_label: str, series: Sequence[Series], *, log_y: bool = False
) -> str:
    """Lines over a shared x axis; ``log_y`` for latencies that span decades."""
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y0, y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP
    points = [p for _, pts in series for p in pts]
    body: list[str] = []
    if not points:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
        return _frame(title, x_label, y_label, body)
    x_max = max(p[0] for p in points) or 1.0
    if log_y:
        positive = [p[1] for p in points if p[1] > 0] or [1.0]
        lo = 10 ** math.floor(math.log10(min(positive)))
        hi = 10 ** math.ceil(math.log10(max(positive)))
        if hi <= lo:
            hi = lo * 10

        def ypos(v: float) -> float:
            v = max(v, lo)
            return y0 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (
                y0 - y1
            )

        ticks = [lo * 10**i for i in range(round(math.log10(hi / lo)) + 1)]
    else:
        top = _nice_max(max(p[1] for p in points))

        def ypos(v: float) -> float:
            return y0 - v / top * (y0 - y1)

        ticks = [top * i / 4 for i in range(5)]

    def xpos(v: float) -> float:
        return x0 + v / x_max * (x1 - x0)

    for tick in ticks:
        y = ypos(tick)
        body.append(f'<line x1="{x0}" x2="{x1}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        body.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">'
            f"{_fmt(tick)}</text>"
        )
    for i in range(5):
        xv = x_max * i / 4
        body.append(
            f'<text x="{xpos(xv):.1f}" y="{y0 + 16}" text-anchor="middle" font-size="11">'
            f"{_fmt(xv)}</text>"
        )
    body.append(f'<line x1="{x0}" x2="{x0}" y1="{y0}" y2="{y1}" stroke="#333"/>')
    body.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#333"/>')
    for i, (name, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        if pts:
            path = " ".join(f"{xpos(x):.1f},{ypos(y):.1f}" for x, y in pts)
            body.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{path}"/>'
            )
        lx = x0 + 10 + i * 120
        body.append(f'<rect x="{lx}" y="{y1 + 2}" width="12" height="3" fill="{colour}"/>')
        body.append(f'<text x="{lx + 16}" y="{y1 + 8}" font-size="11">{html.escape(name)}</text>')
    return _frame(title, x_label, y_label, body)


def bar_chart(title: str, x_label: str, y_label: str, bars: Sequence[tuple[float, int]]) -> str:
    """Histogram bars, one per (upper bound, count), on a logarithmic x axis."""
    x0, x1 = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    y0, y1 = HEIGHT - MARGIN_BOTTOM, MARGIN_TOP
    body: list[str] = []
    if not bars:
        body.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text>')
        return _frame(title, x_label, y_label, body)
    top = _nice_max(max(c for _, c in bars))
    width = (x1 - x0) / len(bars)
    for i, (bound, count) in enumerate(bars):
        h = count / top * (y0 - y1)
        x = x0 + i * width
        body.append(
            f'<rect x="{x + 1:.1f}" y="{y0 - h:.1f}" width="{max(width - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{COLOURS[0]}"><title>&lt;= {_fmt(bound)} ms: '
            f"{count:,}</title></rect>"
        )
    step = max(1, len(bars) // 8)
    for i in range(0, len(bars), step):
        body.append(
            f'<text x="{x0 + (i + 0.5) * width:.1f}" y="{y0 + 16}" text-anchor="middle" '
            f'font-size="11">{_fmt(bars[i][0])}</text>'
        )
    for i in range(5):
        v = top * i / 4
        y = y0 - v / top * (y0 - y1)
        body.append(
            f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(v)}</text>'
        )
    body.append(f'<line x1="{x0}" x2="{x1}" y1="{y0}" y2="{y0}" stroke="#333"/>')
    return _frame(title, x_label, y_label, body)


def render(report: Mapping[str, object]) -> str:
    """The whole page for one load test report."""
    rows = report.get("timeseries", [])
    assert isinstance(rows, list)

    def col(name: str) -> list[tuple[float, float]]:
        return [(float(r["t"]), float(r[name])) for r in rows if r.get("latency_count", 1)]

    def col_all(name: str) -> list[tuple[float, float]]:
        return [(float(r["t"]), float(r[name])) for r in rows]

    latency = line_chart(
        "Latency, emission to websocket receipt",
        "seconds since start",
        "ms (log)",
        [("p50", col("p50_ms")), ("p99", col("p99_ms")), ("max", col("max_ms"))],
        log_y=True,
    )
    throughput = line_chart(
        "Throughput",
        "seconds since start",
        "per second",
        [
            ("events produced", col_all("events_per_s")),
            ("events folded", col_all("folded_per_s")),
            ("ws messages", col_all("messages_per_s")),
        ],
    )
    curve = report.get("load_curve", [])
    assert isinstance(curve, list)

    def against_offered(name: str) -> list[tuple[float, float]]:
        return [(float(p["offered_events_per_s"]), float(p[name])) for p in curve
                if p.get("latency_count", 1) or name != "p99_ms"]  # fmt: skip

    offered_throughput = line_chart(
        "Throughput against offered load",
        "events offered per second (produced)",
        "per second",
        [("ws messages delivered", against_offered("messages_per_s")),
         ("events folded", against_offered("folded_per_s"))],
    )  # fmt: skip
    offered_latency = line_chart(
        "p99 latency against offered load",
        "events offered per second (produced)",
        "ms (log)",
        [("p50", against_offered("p50_ms")), ("p99", against_offered("p99_ms"))],
        log_y=True,
    )
    hist = report.get("latency_histogram", [])
    assert isinstance(hist, list)
    histogram = bar_chart(
        "Latency histogram", "ms (bucket upper bound, log scale)", "messages", hist
    )
    summary = report.get("latency_ms", {})
    assert isinstance(summary, Mapping)
    config = report.get("config", {})
    assert isinstance(config, Mapping)
    caption = ", ".join(
        f"{key} {config[key]}" for key in CAPTION_KEYS if config.get(key) is not None
    )
    figures = " &middot; ".join(
        f"{html.escape(str(k))} {html.escape(str(v))} ms"
        for k, v in summary.items()
        if k not in ("count",)
    )
    lines = [f"<p>{html.escape(caption)}</p>", f"<p>Latency: {figures}</p>"]
    events, ws, loss = report.get("events"), report.get("websocket"), report.get("loss")
    if isinstance(events, Mapping) and isinstance(ws, Mapping):
        lines.append(
            f"<p>Events produced {events.get('produced', 0):,} "
            f"({events.get('produced_per_s', 0):,.0f}/s), folded {events.get('folded') or 0:,} "
            f"({events.get('folded_per_s') or 0:,.0f}/s); websocket messages "
            f"{ws.get('messages', 0):,} ({ws.get('messages_per_s', 0):,.0f}/s) to "
            f"{ws.get('connected', 0)} of {ws.get('clients', 0)} clients</p>"
        )
    if isinstance(loss, Mapping):
        verdict = "lossless" if loss.get("lossless") else "NOT lossless"
        lines.append(
            f"<p>Loss: gaps {loss.get('gaps', 0)}, duplicates {loss.get('duplicates', 0)}, "
            f"resyncs {loss.get('resyncs', 0)}, clients behind {loss.get('clients_behind', 0)} "
            f"({verdict})</p>"
        )
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            "<title>chequered load test</title>",
            "<style>body{font-family:sans-serif;margin:24px;color:#222}"
            "svg{display:block;margin:12px 0;border:1px solid #eee}</style>",
            "</head><body>",
            "<h1>chequered load test</h1>",
            *lines,
            latency,
            throughput,
            offered_throughput,
            offered_latency,
            histogram,
            "</body></html>",
        ]
    )
