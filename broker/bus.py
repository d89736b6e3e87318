"""One small publish/subscribe surface over MQTT, or over an in-process bus.

The producer, projector and gateway talk to a ``Bus``. ``connect(url)`` gives
an MQTT client (aiomqtt) for ``mqtt://`` and ``mqtts://`` URLs, or the
in-process bus for ``memory://`` (the demo's fallback when no Mosquitto
binary exists). Both keep MQTT's semantics that the project relies on:
retained messages delivered on subscribe, ``+`` and ``#`` wildcards, per
publisher order, and a last will published when a client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final, Protocol
from urllib.parse import unquote, urlsplit

import aiomqtt
import structlog

from broker import aiomqtt_internals as internals
from broker.errors import BusError

__all__ = [
    "BrokerAddress",
    "BrokerUrlError",
    "Bus",
    "BusError",
    "Message",
    "Will",
    "connect",
    "default_client_id",
    "parse_url",
    "redacted",
    "topic_matches",
]

_log = structlog.get_logger(__name__)

DEFAULT_PORT = 1883
DEFAULT_TLS_PORT = 8883
MAX_INCOMING = 0
"""aiomqtt's incoming queue bound; 0 is unbounded: MQTT flow control bounds it."""
READ_BURST = internals.READ_BURST
NO_DELAY: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
"""Nagle's algorithm off (the client leaves it on). With it on, a QoS 1 publish written while
the previous packet is still unacknowledged waits for the peer's delayed TCP ACK (40 ms
on Linux): a consumer that acknowledges, then publishes, then waits for PUBACK would
crawl at a few hundred messages per second."""


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False
    ack: Callable[[], object] | None = field(default=None, compare=False, repr=False)
    """With ``connect(manual_ack=True)``: send this QoS 1 message's PUBACK. Call it
    once the message is safely handled, in the order messages arrived; until
    then the broker redelivers the message after a reconnect."""


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    payload: bytes
    retain: bool = True
    qos: int = 1


class Bus(Protocol):
    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        done: Callable[[], object],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        """Publish without waiting: ``done`` is called once the broker has the message
        (its PUBACK at QoS 1), never if the connection is lost first. Messages go on
        the wire in the order of the calls. Raises ``BusError`` with no connection."""  # fmt: skip

    async def subscribe(self, pattern: str, *, qos: int = 1) -> None: ...

    def messages(self) -> AsyncIterator[Message]: ...


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def is_memory(self) -> bool:
        return self.scheme == "memory"

    def url(self) -> str:
        if self.is_memory:
            return f"memory://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def redacted(url: str) -> str:
    """``url`` fit to show: everything between the scheme and the last ``@`` becomes
    ``***``, so a password never reaches an error message or a log, even in a URL
    that does not parse (a password may hold ``/``, ``?`` or ``#``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return f"{scheme}{sep}{rest}"


def parse_url(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> BrokerAddress:
    """Parse ``mqtt://[user[:password]@]host[:port]``, ``mqtts://...`` or ``memory://name``."""
    parts = urlsplit(url)
    shown = redacted(url)
    if parts.scheme not in ("mqtt", "mqtts", "memory"):
        raise BrokerUrlError(f"{shown}: broker URL must start with mqtt://, mqtts:// or memory://")
    if parts.scheme == "memory":
        return BrokerAddress("memory", parts.netloc or "default", 0)
    if not parts.hostname:
        raise BrokerUrlError(f"{shown}: broker URL has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise BrokerUrlError(f"{shown}: bad port") from exc
    default = DEFAULT_TLS_PORT if parts.scheme == "mqtts" else DEFAULT_PORT
    return BrokerAddress(
        parts.scheme,
        parts.hostname,
        port or default,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        ca_file,
        cert_file,
        key_file,
    )


# -- MQTT ------------------------------------------------------------------


_CLIENT_ERRORS = (aiomqtt.MqttError, OSError)
"""What aiomqtt raises for a connection refused, lost or timed out (TLS errors are
``OSError``s). The bus turns them into ``BusError``; nothing else leaves it."""


@contextlib.contextmanager
def _as_bus_error() -> Iterator[None]:
    try:
        yield
    except BusError:
        raise
    except _CLIENT_ERRORS as exc:
        raise BusError(str(exc) or type(exc).__name__) from exc


class MqttBus:
    """A ``Bus`` over one aiomqtt client."""

    def __init__(self, client: internals.BurstClient, *, manual_ack: bool = False) -> None:
        self.client = client
        self.manual_ack = manual_ack
        self._ack = internals.acknowledger(client) if manual_ack else None
        self._take = internals.queued(client)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        with _as_bus_error(), internals.failing_fast(self.client):
            await self.client.publish(topic, payload, qos=qos, retain=retain)

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        done: Callable[[], object],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        internals.publish_nowait(self.client, topic, payload, qos, retain, done)  # fmt: skip

    async def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        with _as_bus_error(), internals.failing_fast(self.client):
            await self.client.subscribe(pattern, qos=qos)

    async def messages(self) -> AsyncIterator[Message]:
        # aiomqtt's iterator spends a task and a wait on every message, and a turn of
        # the event loop or two; what one read of the socket queued is handed over at
        # once instead, so that a consumer handles a burst in one turn of the loop.
        take = self._take
        with _as_bus_error():
            async for message in self.client.messages:
                yield self._message(message)
                while (more := take()) is not None:
                    yield self._message(more)

    def _message(self, message: aiomqtt.Message) -> Message:
        payload = message.payload
        data = payload if isinstance(payload, bytes) else str(payload).encode()
        ack = None
        if self._ack is not None and message.qos > 0:
            ack = functools.partial(self._ack, message.mid, message.qos)
        return Message(message.topic.value, data, bool(message.retain), ack)


def _tls(address: BrokerAddress) -> aiomqtt.TLSParameters | None:
    if address.scheme != "mqtts":
        return None
    return aiomqtt.TLSParameters(
        ca_certs=address.ca_file,
        certfile=address.cert_file,
        keyfile=address.key_file,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )


# -- in-process ------------------------------------------------------------


def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT topic filter matching with ``+`` and ``#``."""
    pat = pattern.split("/")
    top = topic.split("/")
    for i, part in enumerate(pat):
        if part == "#":
            return True
        if i >= len(top):
            return False
        if part != "+" and part != top[i]:
            return False
    return len(pat) == len(top)


@dataclass
class _Hub:
    retained: dict[str, bytes] = field(default_factory=dict)
    clients: set[MemoryBus] = field(default_factory=set)


_HUBS: dict[str, _Hub] = {}


class MemoryBus:
    """A ``Bus`` inside this process: every client of one hub name sees the others."""

    def __init__(self, hub: _Hub, will: Will | None) -> None:
        self._hub = hub
        self._will = will
        self._patterns: list[str] = []
        self._queue: asyncio.Queue[Message] = asyncio.Queue()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        self._deliver(topic, payload, retain)

    def _deliver(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            if payload:
                self._hub.retained[topic] = payload
            else:
                self._hub.retained.pop(topic, None)
        for client in list(self._hub.clients):
            if any(topic_matches(p, topic) for p in client._patterns):
                client._queue.put_nowait(Message(topic, payload, False))

    def publish_nowait(
        self,
        topic: str,
        payload: bytes,
        done: Callable[[], object],
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> None:
        # No acknowledgement in one process: delivered at once, ``done`` on the next turn.
        if self not in self._hub.clients:
            raise BusError("publish on a closed in-process bus")
        self._deliver(topic, payload, retain)
        asyncio.get_running_loop().call_soon(done)

    async def subscribe(self, pattern: str, *, qos: int = 1) -> None:
        self._patterns.append(pattern)
        for topic, payload in list(self._hub.retained.items()):
            if topic_matches(pattern, topic):
                self._queue.put_nowait(Message(topic, payload, True))

    async def messages(self) -> AsyncIterator[Message]:
        while True:
            yield await self._queue.get()

    async def _close(self, *, clean: bool) -> None:
        self._hub.clients.discard(self)
        if not clean and self._will is not None:
            await self.publish(
                self._will.topic, self._will.payload, qos=self._will.qos, retain=self._will.retain
            )


@asynccontextmanager
async def connect(
    address: BrokerAddress | str,
    *,
    client_id: str | None = None,
    clean_session: bool = True,
    will: Will | None = None,
    keepalive: int = 10,
    max_inflight: int = 100,
    manual_ack: bool = False,
) -> AsyncIterator[Bus]:
    """Connect to the broker; the bus is closed (will published if unclean) on exit.

    ``manual_ack``: QoS 1 messages are acknowledged only when the receiver calls
    ``Message.ack`` (the in-process bus has no acknowledgements: ``ack`` is None).
    """
    if isinstance(address, str):
        address = parse_url(address)
    if address.is_memory:
        hub = _HUBS.setdefault(address.host, _Hub())
        bus = MemoryBus(hub, will)
        hub.clients.add(bus)
        clean = False
        try:
            yield bus
            clean = True
        finally:
            await bus._close(clean=clean)
        return
    client = internals.make_client(
        hostname=address.host,
        port=address.port,
        identifier=client_id or default_client_id(),
        username=address.username,
        password=address.password,
        clean_session=clean_session,
        keepalive=keepalive,
        will=aiomqtt.Will(will.topic, will.payload, will.qos, will.retain) if will else None,
        tls_params=_tls(address),
        max_queued_incoming_messages=MAX_INCOMING,
        max_inflight_messages=max_inflight,
        socket_options=NO_DELAY,
    )
    if manual_ack:
        internals.set_manual_ack(client)
    with _as_bus_error():
        await internals.open_connection(client)
    try:
        yield MqttBus(client, manual_ack=manual_ack)
    except BaseException as exc:
        # The body's exception is the one to raise; the client's own trouble leaving
        # (a connection already gone) adds nothing to it.
        with contextlib.suppress(*_CLIENT_ERRORS):
            await client.__aexit__(type(exc), exc, exc.__traceback__)
        _note_disconnect(client, exc)
        raise
    with _as_bus_error():
        await client.__aexit__(None, None, None)
    _note_disconnect(client, None)


def default_client_id(prefix: str = "chequered") -> str:
    """``prefix`` and a random suffix: an id nobody can guess, so nobody can connect
    with it to take a connection over (MQTT drops the older of two equal ids)."""
    return f"{prefix}-{secrets.token_hex(8)}"


def _note_disconnect(client: aiomqtt.Client, raised: BaseException | None) -> None:
    """Log why the connection broke unless the exception raised already says so, and
    mark it seen either way: unseen, asyncio prints "Future exception was never
    retrieved" with a traceback when the client is collected."""
    error = internals.take_disconnect_error(client)
    if error is None or _caused_by(raised, error):
        return
    _log.warning("bus.connection_lost", client_id=client.identifier, error=str(error))


def _caused_by(raised: BaseException | None, error: BaseException) -> bool:
    seen: set[int] = set()
    todo = [raised]
    while todo:
        exc = todo.pop()
        if exc is None or id(exc) in seen:
            continue
        if exc is error:
            return True
        seen.add(id(exc))
        todo += [exc.__cause__, exc.__context__]
        if isinstance(exc, BaseExceptionGroup):
            todo += exc.exceptions
    return False
