"""Websocket gateway: pushes the projector's standings from MQTT to browsers, read-only.

The shell around the sans-I/O core (``consumers/gateway/core/``): it owns the
sockets (websockets), the broker connection and the timers, feeds the core what
comes in and writes what the core sends out (``fanout``). Its HTTP face is
``http``; admission at accept time is ``accept``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Response

from broker import bus as busmod
from broker.backoff import Backoff
from chequered import log as logmod
from chequered.contract import topics
from consumers.gateway.accept import guarded
from consumers.gateway.core.admission import Admission
from consumers.gateway.core.cache import Cancel, RaceCache, Races
from consumers.gateway.core.requests import ClientFault, Requests
from consumers.gateway.core.session import ClientStats, Counts, clip, close_label
from consumers.gateway.core.settings import WEB_DIR, GatewaySettings
from consumers.gateway.fanout import (
    Fanout,
    SharedDeflateFactory,
    UnsupportedWebsockets,
    Writer,
    check_websockets,
    limit_handshakes,
)
from consumers.gateway.http import Routes, peer_address
from consumers.gateway.metrics import GatewayCollector, Gauges

__all__ = [
    "WEB_DIR",
    "Gateway",
    "GatewaySettings",
    "MetricsPortError",
    "UnsupportedWebsockets",
    "run_gateway",
    "tls_context",
]

log = logmod.get(__name__)


class Gateway:
    """The shell: listeners, client connections, broker link and timers around the core."""

    def __init__(
        self, url: busmod.BrokerAddress | str, settings: GatewaySettings | None = None
    ) -> None:
        self.broker = url
        """What ``connect`` takes: a URL, or an address that carries TLS files."""
        self.url = _loggable(url)
        """The broker as logs name it: scheme, host and port, never a user name or password."""
        self.settings = settings = settings or GatewaySettings()
        self.metrics = counts = Counts()
        """The counts behind /metrics (plain numbers; ``exposition`` renders them)."""
        self.cache = Races(settings, counts, self)
        self.requests = Requests(self.cache)
        self.admission = Admission(settings, counts)
        self.exposition = GatewayCollector(counts, self._gauges)
        self.routes = Routes(
            settings, counts, self.admission, health=self._health, metrics=self.exposition.render
        )
        self.clients: set[Writer] = set()
        self.broker_connected = False
        self.metrics_port: int | None = None
        """The bound port of the metrics listener, once it listens (``metrics_port``)."""
        self._fanout: Fanout | None = None
        self._broker = BrokerLink(self)
        self._grace: asyncio.TimerHandle | None = None

    # -- what tests and the load test read --------------------------------

    @property
    def races(self) -> dict[str, RaceCache]:
        return self.cache.races

    @property
    def by_address(self) -> dict[str, Any]:
        return self.admission.by_address

    def client_stats(self) -> list[ClientStats]:
        return [w.session.stats() for w in self.clients if w.session is not None]

    # -- core.cache.Timers ------------------------------------------------

    def later(self, delay_s: float, callback: Callable[[], None]) -> Cancel:
        return asyncio.get_running_loop().call_later(delay_s, callback)

    def resync(self) -> None:
        self._broker.resync.set()

    # -- broker side ------------------------------------------------------

    def on_broker_message(self, message: busmod.Message) -> None:
        note = self.cache.on_message(
            message.topic, message.payload, retained=message.retain, now=time.time()
        )
        if note is not None:
            log.warning(note[0], **note[1])

    def start_grace(self) -> None:
        """Hold subscribes to races not seen yet: the broker is still sending what it retains."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.settings.startup_grace_s > 0:
            self.requests.start_grace()
            self._grace = asyncio.get_running_loop().call_later(
                self.settings.startup_grace_s, self._end_grace
            )

    def _end_grace(self) -> None:
        self._grace = None
        self.requests.end_grace()

    # -- client side ------------------------------------------------------

    def accept(self, conn: ServerConnection, address: str) -> Response | None:
        """A connection just accepted (``accept.Gate``): None lets it in."""
        refusal = self.admission.accept(conn, address)
        if refusal is None:
            return None
        log.info("client_refused", reason=refusal.reason, address=address)
        return self.routes.face.refusal(refusal)

    def release(self, conn: ServerConnection, address: str) -> None:
        self.admission.release(conn, address)

    async def _handle(self, ws: ServerConnection) -> None:
        settings = self.settings
        if settings.send_buffer is not None:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer)
        assert self._fanout is not None
        address = peer_address(ws)
        writer = Writer(ws, self._fanout, settings, address)
        session = writer.session = self.requests.session(address, writer, time.monotonic())
        self.clients.add(writer)
        self.metrics.connections.inc()
        writing = asyncio.create_task(writer.run())
        log.debug("client_connected", client=address)
        try:
            async for message in ws:
                fault = self.requests.receive(
                    session, message, now=time.monotonic(), wall=time.time()
                )
                if fault is not None:
                    self._log_fault(address, fault)
        except ConnectionClosed:
            pass
        finally:
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
            self.clients.discard(writer)
            self.cache.leave(session)
            if writer.closing is not None:
                await asyncio.gather(writer.closing, return_exceptions=True)
            close = ws.protocol.close_sent or ws.protocol.close_rcvd
            code = int(close.code) if close is not None else 1006
            self.metrics.closes[close_label(code)] += 1
            log.debug("client_closed", client=address, code=code)

    def _log_fault(self, address: str, fault: ClientFault) -> None:
        if fault.code == "rate_limited":
            log.info("client_rate_limited", client=address)
            return
        detail = clip(fault.detail, self.settings.log_value_chars)
        log.info("client_error", client=address, error=fault.code, detail=detail)

    # -- introspection ----------------------------------------------------

    def _gauges(self) -> Gauges:
        stats = self.client_stats()
        known = [c for c in self.races.values() if c.known()]
        return Gauges(
            clients=len(self.clients),
            races=len(known),
            stale_races=len([c for c in self.races.values() if c.stale]),
            broker_connected=self.broker_connected,
            lag_seconds=self.cache.lag_s,
            queued_frames=sum(s.queued_frames for s in stats),
            queued_bytes=sum(s.queued_bytes for s in stats),
        )

    def _health(self) -> tuple[bool, dict[str, object]]:
        return self.broker_connected, {
            "races": len([c for c in self.races.values() if c.known()]),
            "clients": len(self.clients),
            "broker_connected": self.broker_connected,
        }

    # -- running ----------------------------------------------------------

    async def run(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        stop: asyncio.Event | None = None,
        ready: asyncio.Future[int] | None = None,
        reuse_port: bool = False,
    ) -> None:
        settings = self.settings
        check_websockets()  # names what a websockets release lacks, before anyone connects
        limit_handshakes(settings)
        if isinstance(self.broker, str):
            busmod.parse_url(self.broker)  # a bad URL is the caller's error, not a reason to retry
        loop = asyncio.get_running_loop()
        self._fanout = Fanout(self.metrics, loop.call_soon, loop.time, settings.deflate_epoch_s)
        broker_task: asyncio.Task[None] | None = None
        try:
            async with self._listen(host, port, reuse_port) as server, self._metrics_listener():
                # Listening first: a port that is taken ends the run before the broker is asked.
                self.start_grace()  # the broker's retained standings have not come in yet
                broker_task = asyncio.create_task(self._broker.run())
                bound = server.sockets[0].getsockname()[1]
                log.info("gateway_listening", host=host, port=bound, broker=self.url)
                if ready is not None and not ready.done():
                    ready.set_result(bound)
                await (stop or asyncio.Event()).wait()
                # Close every client here, each bounded by close_timeout: a client that does
                # not read would otherwise hold the shutdown until its keepalive runs out.
                for writer in list(self.clients):
                    writer.close(1001, "gateway shutting down")
                closing = [w.closing for w in self.clients if w.closing is not None]
                await asyncio.gather(*closing, return_exceptions=True)
        except BaseException as exc:
            if ready is not None and not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            if broker_task is not None:
                await self._broker.stop(broker_task)
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            self.cache.drop_all_pending()

    def _listen(self, host: str, port: int, reuse_port: bool = False) -> Any:
        settings = self.settings

        return serve(
            self._handle,
            host,
            port,
            compression=None,
            extensions=[SharedDeflateFactory()] if settings.compression else None,
            process_request=self.routes.public,
            server_header=None,
            create_connection=guarded(self, settings.refusal_linger_s),
            max_size=settings.max_size,
            max_queue=settings.max_in_queue,
            write_limit=settings.write_limit,
            ping_interval=settings.ping_interval_s,
            ping_timeout=settings.ping_timeout_s,
            close_timeout=settings.close_timeout_s,
            open_timeout=settings.open_timeout_s,
            ssl=tls_context(settings),
            logger=None,
            # Several gateway processes on one port (``chequered serve --workers``): the
            # kernel spreads the connections over them.
            reuse_port=reuse_port or None,
        )

    @contextlib.asynccontextmanager
    async def _metrics_listener(self) -> AsyncIterator[Server | None]:
        """/metrics and /healthz on a listener of their own (``metrics_port``), if asked for."""
        settings = self.settings
        if settings.metrics_port is None:
            yield None
            return

        async def never(_ws: ServerConnection) -> None:
            return  # process_request answers every request: no websocket is ever opened

        try:
            listener = await serve(
                never,
                settings.metrics_host,
                settings.metrics_port,
                process_request=self.routes.private,
                server_header=None,
                open_timeout=settings.open_timeout_s,
                logger=None,
            )
        except OSError as exc:
            raise MetricsPortError(exc.errno, exc.strerror or str(exc)) from exc
        async with listener as server:
            self.metrics_port = server.sockets[0].getsockname()[1]
            log.info("metrics_listening", host=settings.metrics_host, port=self.metrics_port)
            yield server


class MetricsPortError(OSError):
    """The metrics listener (``metrics_port``) could not listen."""


class BrokerLink:
    """The gateway's MQTT connection: subscribe, feed the cache, reconnect with back-off."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.settings = gateway.settings
        self.resync = asyncio.Event()
        self.stopping = False
        self.connecting = False

    async def run(self) -> None:
        gateway = self.gateway
        settings = self.settings
        backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        client_id = settings.client_id or f"chequered-gateway-{uuid.uuid4().hex[:8]}"
        while not self.stopping:
            delay = 0.0
            try:
                self.connecting = True
                async with busmod.connect(gateway.broker, client_id=client_id) as bus:
                    for leaf in (topics.STANDINGS, topics.STANDINGS_DELTA, topics.META,
                                 topics.STATUS):  # fmt: skip
                        await bus.subscribe(topics.all_races(leaf))
                    self.connecting = False
                    if self.stopping:
                        return  # a stop that came while connecting (see stop)
                    gateway.broker_connected = True
                    gateway.metrics.broker_connects.inc()
                    backoff.reset()
                    log.info("broker_connected", url=gateway.url)
                    gateway.start_grace()
                    await self._read(bus)
            except (busmod.BusError, OSError) as exc:  # an OSError must not end the link either
                delay = backoff.next()
                log.warning("broker_lost", url=gateway.url, error=str(exc), retry_s=round(delay, 2))
            finally:
                gateway.broker_connected = False
                self.connecting = False
            if self.stopping:
                return
            await asyncio.sleep(delay)

    async def _read(self, bus: busmod.Bus) -> None:
        resync = asyncio.create_task(self._resync_loop(bus))
        try:
            async for message in bus.messages():
                try:
                    self.gateway.on_broker_message(message)
                except Exception:
                    # One message must not take the gateway down with it.
                    self.gateway.metrics.bad_payloads.inc()
                    log.exception("broker_message_failed", topic=message.topic)
        finally:
            resync.cancel()

    async def _resync_loop(self, bus: busmod.Bus) -> None:
        """After a gap, subscribe again to the snapshots: the broker resends the retained ones."""
        while True:
            await self.resync.wait()
            self.resync.clear()
            self.gateway.metrics.resyncs.inc()
            await bus.subscribe(topics.all_races(topics.STANDINGS))
            await asyncio.sleep(self.settings.resync_interval_s)

    async def stop(self, task: asyncio.Task[None]) -> None:
        """Stop the broker loop: a flag it checks, and a cancellation.

        On Python 3.11 a cancellation that lands as the MQTT client's connect or subscribe
        completes is swallowed (``asyncio.wait_for``), and the loop would carry on: the flag
        ends it then, and the cancellation is repeated for as long as it is still running.
        """
        self.stopping = True
        timeout = self.settings.broker_close_timeout_s
        if self.connecting:
            # Cancelled mid-handshake, the MQTT client leaves its socket open: let the
            # handshake end (or fail) instead; the loop returns as soon as it has.
            await asyncio.wait({task}, timeout=timeout)
        while not task.done():
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=timeout)
            if not done:
                log.warning("broker_close_slow", url=self.gateway.url)
        if not task.cancelled() and task.exception() is not None:
            log.warning("broker_loop_failed", error=str(task.exception()))


def _loggable(url: busmod.BrokerAddress | str) -> str:
    """The broker's address without credentials (``BrokerAddress.url``), fit for a log line."""
    if isinstance(url, busmod.BrokerAddress):
        return url.url()
    try:
        return busmod.parse_url(url).url()
    except busmod.BrokerUrlError:
        return "(invalid broker URL)"  # run() refuses it; the text itself may hold a password


def tls_context(settings: GatewaySettings) -> ssl.SSLContext | None:
    """The server's TLS context when a certificate is given (TLS 1.2 at least), else None."""
    if settings.tls_certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    return context


async def run_gateway(
    url: busmod.BrokerAddress | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop: asyncio.Event | None = None,
    ready: asyncio.Future[int] | None = None,
    settings: GatewaySettings | None = None,
    reuse_port: bool = False,
) -> None:
    """Serve the websocket gateway and the widget until ``stop`` is set.

    ``ready`` resolves to the bound port (``port=0`` picks a free one); with
    ``reuse_port`` other processes may listen on the same port (SO_REUSEPORT).
    """
    await Gateway(url, settings).run(
        host=host, port=port, stop=stop, ready=ready, reuse_port=reuse_port
    )
