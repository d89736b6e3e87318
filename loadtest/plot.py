"""The load test's plot: one self-contained HTML page of inline SVG charts.

Latency percentiles over time, throughput over time, throughput and
latency against offered load (the knee of a ramp), and the latency
histogram, drawn from the report dictionary by matplotlib (the ``load``
extra), as the lap charts are. Returns text: no files, no network (the page
loads nothing).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

# Imported here, not when the report is drawn: without the load extra the load
# test then says so before it runs, not after.
import matplotlib

WIDTH = 760
HEIGHT = 260
DPI = 100
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


def _pyplot() -> Any:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element (no XML declaration)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _chart(title: str, x_label: str, y_label: str, draw: Callable[[Any], bool]) -> str:
    """One chart: ``draw(ax)`` plots and says whether there was anything to plot."""
    plt = _pyplot()
    # Text stays text (searchable, selectable); ids are stable from run to run.
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "chequered"}):
        fig, ax = plt.subplots(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI)
        try:
            ax.set_title(title, fontsize=11, fontweight="bold")
            ax.set_xlabel(x_label, fontsize=9)
            ax.set_ylabel(y_label, fontsize=9)
            ax.tick_params(labelsize=8)
            if not draw(ax):
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
            ax.grid(color="#dddddd", linewidth=0.6)
            fig.tight_layout()
            return _svg(fig)
        finally:
            plt.close(fig)


def line_chart(
    title: str, x_label: str, y_label: str, series: Sequence[Series], *, log_y: bool = False
) -> str:
    """Lines over a shared x axis; ``log_y`` for latencies that span decades."""

    def draw(ax: Any) -> bool:
        drawn = False
        for i, (name, pts) in enumerate(series):
            if not pts:
                continue
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, color=COLOURS[i % len(COLOURS)], linewidth=1.5, label=name)
            drawn = True
        if drawn:
            if log_y and any(y > 0 for _, pts in series for _, y in pts):
                ax.set_yscale("log")
            ax.set_xlim(left=0)
            ax.legend(fontsize=8, loc="upper left")
        return drawn

    return _chart(title, x_label, y_label, draw)


def bar_chart(title: str, x_label: str, y_label: str, bars: Sequence[tuple[float, int]]) -> str:
    """Histogram bars, one per (upper bound, count), in bucket order (a log scale of bounds)."""

    def draw(ax: Any) -> bool:
        if not bars:
            return False
        ax.bar(range(len(bars)), [count for _, count in bars], color=COLOURS[0], width=0.9)
        step = max(1, len(bars) // 8)
        ticks = list(range(0, len(bars), step))
        ax.set_xticks(ticks, [_fmt(bars[i][0]) for i in ticks])
        return True

    return _chart(title, x_label, y_label, draw)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.2g}"


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
