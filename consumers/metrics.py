"""Counters and gauges of one service, exposed through prometheus_client, and ``/healthz``.

A service declares its metrics once (``Registry.counter`` / ``.gauge``) and
bumps them in its hot path (one attribute add, no lock); prometheus_client
reads them only when ``/metrics`` is scraped (``Registry`` is its collector)
and writes the text format. ``start_metrics_server`` answers ``GET /metrics``
and a ``/healthz`` that says whether the service is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from chequered import log

_log = log.get(__name__)

METRICS_HOST = "127.0.0.1"
REQUEST_TIMEOUT_S = 5.0
"""How long a client may take to send its request line and headers."""
MAX_REQUEST_BYTES = 8192
"""Request head larger than this is answered with 431 and closed."""

Health = Callable[[], tuple[bool, Mapping[str, object]]]
"""Whether the service is ready, and what ``/healthz`` says about it (JSON)."""


@dataclass(slots=True)
class Counter:
    """A value that only goes up (events in, reconnects ...)."""

    name: str
    help: str
    value: int = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


@dataclass(slots=True)
class Gauge:
    """A value that goes up and down (races followed, clients connected ...)."""

    name: str
    help: str
    value: float = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, n: float = 1.0) -> None:
        self.value += n

    def dec(self, n: float = 1.0) -> None:
        self.value -= n


@dataclass(slots=True, eq=False)  # hashable by identity: prometheus_client keys collectors
class Registry:
    """The metrics of one service, all named ``<namespace>_<name>`` (counters end in
    ``_total`` on the wire); a prometheus_client collector of them."""

    namespace: str
    _metrics: dict[str, Counter | Gauge] = field(default_factory=dict)
    _exposition: CollectorRegistry | None = None

    def counter(self, name: str, help: str) -> Counter:
        metric = Counter(self._full(name), help)
        self._metrics[name] = metric
        return metric

    def gauge(self, name: str, help: str) -> Gauge:
        metric = Gauge(self._full(name), help)
        self._metrics[name] = metric
        return metric

    def _full(self, name: str) -> str:
        if name in self._metrics:
            raise ValueError(f"metric {name!r} declared twice")
        return f"{self.namespace}_{name}"

    def values(self) -> dict[str, float]:
        """Current values by short name (without the namespace)."""
        return {name: m.value for name, m in self._metrics.items()}

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: the metrics as they are now."""
        for metric in self._metrics.values():
            if isinstance(metric, Counter):
                yield CounterMetricFamily(metric.name, metric.help, value=metric.value)
            else:
                yield GaugeMetricFamily(metric.name, metric.help, value=metric.value)

    def render(self) -> str:
        """Prometheus text exposition format, version 0.0.4 (prometheus_client's)."""
        if self._exposition is None:
            self._exposition = CollectorRegistry(auto_describe=False)
            self._exposition.register(self)
        return generate_latest(self._exposition).decode()


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _health_response(health: Health | None) -> bytes:
    if health is None:
        return _response("200 OK", b"ok\n")
    ok, detail = health()
    body = json.dumps({"ok": ok, **detail}).encode()
    return _response("200 OK" if ok else "503 Service Unavailable", body, "application/json")


async def _handle(
    registry: Registry,
    health: Health | None,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        except asyncio.LimitOverrunError:
            writer.write(_response("431 Request Header Fields Too Large", b"too large\n"))
            return
        except (asyncio.IncompleteReadError, TimeoutError):
            return
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split()
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            writer.write(_response("405 Method Not Allowed", b"GET /metrics\n"))
            return
        path = parts[1].split("?", 1)[0]
        if path == "/metrics":
            body = registry.render().encode()
            response = _response("200 OK", body, CONTENT_TYPE_PLAIN_0_0_4)
        elif path == "/healthz":
            response = _health_response(health)
        else:
            response = _response("404 Not Found", b"see /metrics\n")
        if parts[0] == "HEAD":
            response = response.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
        writer.write(response)
    finally:
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start_metrics_server(
    registry: Registry, *, port: int, host: str = METRICS_HOST, health: Health | None = None
) -> asyncio.Server:
    """Listen for ``GET /metrics`` and ``/healthz``; port 0 picks a free port.

    ``/healthz`` answers ``health()`` as JSON: 200 when ready, else 503 (without
    ``health``: 200 ``ok`` while the process answers at all).
    """
    server = await asyncio.start_server(
        lambda r, w: _handle(registry, health, r, w), host, port, limit=MAX_REQUEST_BYTES
    )
    _log.info("metrics_listening", host=host, port=bound_port(server))
    return server


def bound_port(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port
