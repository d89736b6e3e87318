"""The gateway's Prometheus metrics: the core's counts, read at scrape time.

The hot path bumps plain numbers (``core.session.Counts``); this collector turns
them into metric families only when ``/metrics`` is scraped, through
prometheus_client's exposition (names, escaping, text format 0.0.4).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from consumers.gateway.core.session import Count, Counts

NAMESPACE = "chequered_gateway"

COUNTERS = {
    "connections": "websocket connections accepted",
    "frames_out": "frames sent to clients",
    "bytes_out": "bytes sent to clients",
    "writes": "writes handed to client transports (each carries a turn's frames)",
    "coalesced": "client backlogs replaced by a fresh snapshot",
    "frames_dropped": "queued frames dropped by coalescing",
    "broker_messages": "MQTT messages received",
    "bad_payloads": "MQTT payloads that did not decode",
    "gaps": "deltas that did not apply on the cached snapshot",
    "resyncs": "re-reads of the retained snapshots",
    "broker_connects": "connections made to the broker",
    "deflated": "messages compressed (once for every client in step: permessage-deflate)",
    "deflate_shared": "compressed frames sent without compressing again (another client's)",
    "deflate_in_bytes": "bytes of the messages sent compressed, before compression",
    "deflate_out_bytes": "bytes of the compressed frames sent",
}
LABELLED = {
    "errors": ("error", "error frames sent, by error code"),
    "closes": ("code", "websocket connections closed, by close code (ranges grouped)"),
    "rejected": (
        "reason",
        "connections and requests refused (and races beyond max_races), by reason",
    ),
    "http_requests": ("path", "plain HTTP requests served, by path"),
}


@dataclass(frozen=True, slots=True)
class Gauges:
    """The gauges, as the server sees them at scrape time."""

    clients: int
    races: int
    stale_races: int
    broker_connected: bool
    lag_seconds: float
    queued_frames: int
    queued_bytes: int


GAUGES = {
    "clients": "websocket clients connected",
    "races": "races in the cache",
    "stale_races": "races waiting for a snapshot after a gap",
    "broker_connected": "1 while connected to the broker",
    "lag_seconds": "seconds from the emission of the newest delta's event to the gateway",
    "queued_frames": "frames waiting in all client outboxes",
    "queued_bytes": "bytes waiting in all client outboxes",
}


class GatewayCollector(Collector):
    """Counters and gauges of one gateway, on a registry of its own."""

    def __init__(self, counts: Counts, gauges: Callable[[], Gauges]) -> None:
        self.counts = counts
        self.gauges = gauges
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        counts = self.counts
        for name, help_text in COUNTERS.items():
            count = getattr(counts, name)
            assert isinstance(count, Count)
            yield CounterMetricFamily(f"{NAMESPACE}_{name}", help_text, value=count.value)
        labelled: dict[str, Counter[str]] = {
            "errors": counts.errors,
            "closes": counts.closes,
            "rejected": counts.rejected,
            "http_requests": counts.http,
        }
        for name, (label, help_text) in LABELLED.items():
            family = CounterMetricFamily(f"{NAMESPACE}_{name}", help_text, labels=[label])
            for key, value in sorted(labelled[name].items()):
                family.add_metric([key], value)
            yield family
        gauges = self.gauges()
        for name, help_text in GAUGES.items():
            reading = float(getattr(gauges, name))
            yield GaugeMetricFamily(f"{NAMESPACE}_{name}", help_text, value=reading)
        yield GaugeMetricFamily(
            f"{NAMESPACE}_queue_high_water_frames",
            "most frames ever waiting in one client's outbox",
            value=float(counts.queue_high_water),
        )
