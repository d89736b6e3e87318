"""``chequered rmonitor``: serve one live race as an RMonitor TCP stream.

A thin asyncio shell around ``consumers.rmonitor.encoder.Encoder``: it reads
the race's events from the broker, hands every line the encoder gives to
every connected client, and sends the ``$F`` heartbeat once a second. A
client gets the whole picture (``Encoder.greeting``) when it connects.
Clients only read. Writes never wait for a client: one whose unsent bytes
pass ``client_buffer_bytes`` is closed, so a slow client never holds up the
others and never grows memory. Settings: ``RMonitorSettings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field

from broker.bus import BrokerAddress, Message, connect
from chequered import log
from chequered.contract import topics
from chequered.contract.events import Event, PayloadError, SessionOpened, decode, unbatch
from consumers.rmonitor.encoder import Encoder

_log = log.get(__name__)

DEFAULT_PORT = 50000
"""The port Orbits serves RMonitor on, and scoreboards and recorders expect."""


@dataclass(frozen=True, kw_only=True)
class RMonitorSettings:
    host: str = "127.0.0.1"
    """Address to listen on; ``0.0.0.0`` for every interface."""
    port: int = DEFAULT_PORT
    client_buffer_bytes: int = 256 * 1024
    """Unsent bytes a client may hold before it is closed as stuck (checked before each
    write): three times a whole two-hour practice session's lines (85 KB at Sebring
    2009), far more than a client on a working network ever holds."""
    heartbeat_s: float = 1.0
    """Period of the ``$F`` line (the protocol's once a second)."""
    send_buffer_bytes: int | None = None
    """Kernel send buffer of each client's socket (``SO_SNDBUF``); ``None``: the system's.
    A small one makes a stuck client show sooner and hold less kernel memory."""
    max_clients: int = 256
    """Connections served at once; more are closed at once."""
    line_ending: bytes = b"\r\n"
    """Orbits ends records with CR LF."""


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    peer: str
    closed: bool = False


@dataclass
class RMonitorServer:
    """The race's encoder and the connected clients."""

    race: str | None
    """Race to serve; ``None``: the first race whose meta or events arrive."""
    settings: RMonitorSettings = field(default_factory=RMonitorSettings)
    encoder: Encoder | None = None
    meta: SessionOpened | None = None
    clients: list[_Client] = field(default_factory=list)
    closed_stuck: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the TCP port is open and the broker subscriptions are made."""
    port: int = 0
    """The port actually listened on (``settings.port`` 0 picks a free one)."""

    # -- broker side (no awaits) -------------------------------------------------

    def on_message(self, message: Message, now: float) -> None:
        race = topics.race_of(message.topic)
        leaf = topics.leaf_of(message.topic)
        if race is None or leaf not in (topics.META, topics.EVENTS):
            return
        if self.race is None:
            self.race = race
            _log.info("rmonitor_race", race=race)
        if race != self.race or not message.payload:
            return
        try:
            decoded = decode(message.payload)
        except PayloadError as exc:
            _log.warning("rmonitor_bad_payload", topic=message.topic, error=str(exc))
            return
        if leaf == topics.META:
            if isinstance(decoded, SessionOpened):
                self.meta = decoded
            return
        for event in unbatch(decoded):
            self.on_event(event, now)

    def on_event(self, event: Event, now: float) -> None:
        if self.encoder is None:
            self.encoder = Encoder(race=event.race)
        self.broadcast(self.encoder.apply(event, now, meta=self.meta))

    def tick(self, now: float) -> None:
        if self.encoder is not None and self.encoder.opened is not None:
            self.broadcast([self.encoder.heartbeat(now)])

    # -- client side ----------------------------------------------------------------

    def broadcast(self, lines: list[str]) -> None:
        if not lines or not self.clients:
            return
        data = self._bytes(lines)
        for client in list(self.clients):
            self._write(client, data)

    def _bytes(self, lines: list[str]) -> bytes:
        end = self.settings.line_ending
        # cp1252, as Orbits writes: a name that does not fit is sent with '?'.
        return b"".join(line.encode("cp1252", "replace") + end for line in lines)

    def _write(self, client: _Client, data: bytes) -> None:
        if client.closed:
            return
        transport = client.writer.transport
        if transport.is_closing():
            self._drop(client, "gone")
            return
        # Bytes still unsent from earlier writes: a client that reads keeps this near
        # zero; one over the limit has stopped reading. (So a client holds at most the
        # limit plus one message's lines.)
        if transport.get_write_buffer_size() > self.settings.client_buffer_bytes:
            self.closed_stuck += 1
            self._drop(client, "stuck")
            return
        client.writer.write(data)

    def _drop(self, client: _Client, why: str) -> None:
        client.closed = True
        with contextlib.suppress(ValueError):
            self.clients.remove(client)
        _log.info("rmonitor_client_closed", peer=client.peer, reason=why)
        # abort, not close: a stuck client's unsent bytes are discarded, not awaited.
        client.writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        client = _Client(writer=writer, peer=peer)
        sock = writer.get_extra_info("socket")
        if self.settings.send_buffer_bytes is not None and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.settings.send_buffer_bytes)
        if len(self.clients) >= self.settings.max_clients:
            _log.warning("rmonitor_client_refused", peer=peer, clients=len(self.clients))
            writer.transport.abort()
            return
        self.clients.append(client)
        _log.info("rmonitor_client", peer=peer, clients=len(self.clients))
        if self.encoder is not None:
            self._write(client, self._bytes(self.encoder.greeting(time.monotonic())))
        try:
            # Clients only read; whatever they send is discarded, and EOF ends them.
            while await reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            if not client.closed:
                self._drop(client, "disconnected")

    async def run(self, url: str | BrokerAddress, stop: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set."""
        stop = stop or asyncio.Event()
        server = await asyncio.start_server(self.handle, self.settings.host, self.settings.port)
        self.port = server.sockets[0].getsockname()[1]
        try:
            async with connect(url) as bus:
                if self.race is None:
                    await bus.subscribe(topics.all_races(topics.META))
                    await bus.subscribe(topics.all_races(topics.EVENTS))
                else:
                    await bus.subscribe(topics.topic(self.race, topics.META))
                    await bus.subscribe(topics.topic(self.race, topics.EVENTS))
                _log.info("rmonitor_listening", host=self.settings.host, port=self.port)
                self.ready.set()

                async def consume() -> None:
                    async for message in bus.messages():
                        self.on_message(message, time.monotonic())
                        # Let the clients' transports write between messages: a race
                        # replayed at full speed must not pile up in every buffer at once.
                        await asyncio.sleep(0)

                async def beat() -> None:
                    while True:
                        await asyncio.sleep(self.settings.heartbeat_s)
                        self.tick(time.monotonic())

                tasks = [asyncio.create_task(consume()), asyncio.create_task(beat())]
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
                for task in [*tasks, stopper]:
                    task.cancel()
                for task in done:
                    if task is not stopper and not task.cancelled() and task.exception():
                        raise task.exception()  # type: ignore[misc]
        finally:
            server.close()
            for client in list(self.clients):
                self._drop(client, "server stopping")
            with contextlib.suppress(Exception):
                await server.wait_closed()
