"""Everything the bus needs from aiomqtt's and paho's internals, and nothing else.

aiomqtt has no public way to read every waiting packet per wake-up, to hand a
burst of queued messages over at once, to acknowledge by hand, or to learn
why a connection broke when nothing awaited it. Those reach into private
names; they are all here, each named in ``CLIENT_METHODS`` / ``CLIENT_FIELDS``
and checked when a client is made, so that an aiomqtt release that renamed
one fails at start-up with the name, not later with an ``AttributeError`` deep
in a callback. ``TESTED_AIOMQTT`` is the range the test suite pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import re
import select
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Final

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from broker.errors import BusError

TESTED_AIOMQTT: Final = ((2, 5), (2, 6))
"""aiomqtt releases the bus is tested with: from the first (included) to the second
(excluded) ``(major, minor)``; pyproject.toml pins the same range."""

CLIENT_METHODS: Final = (
    "_on_socket_open",
    "_on_socket_register_write",
    "_on_publish",
    "_misc_loop",
)
"""aiomqtt ``Client`` methods replaced or called by ``BurstClient``."""
CLIENT_FIELDS: Final = ("_client", "_loop", "_queue", "_disconnected", "_misc_task")
"""aiomqtt ``Client`` instance attributes read here."""
PAHO_METHODS: Final = (
    "loop_read",
    "loop_write",
    "socket",
    "manual_ack_set",
    "ack",
    "_sock_recv",
)
"""paho ``Client`` methods used through aiomqtt's paho client."""
PAHO_FIELDS: Final = ("_out_packet",)
"""paho ``Client`` instance attributes read here (the packets waiting to be written)."""
TCP_CORK: Final = getattr(socket, "TCP_CORK", None)
"""Linux's option to hold a TCP socket's partial segments until it is cleared."""

READ_BYTES: Final = 65536
"""Bytes asked of the socket per read by ``BufferedRecv``: a burst of packets at once."""
READ_BURST: Final = 16
"""Most MQTT packets read from the socket per wake-up of the event loop. Bursts of this
size keep a turn of the loop short and, in the gateway, a turn's writes to each client
under its ``write_limit``: 1,000 clients took 300 deltas without one coalesced backlog
(at 64, every client was coalesced once)."""


def version() -> str:
    return importlib.metadata.version("aiomqtt")


def release(text: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``2.5.1``."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a release number: {text!r}")
    return int(match[1]), int(match[2])


def is_tested(text: str) -> bool:
    low, high = TESTED_AIOMQTT
    return low <= release(text) < high


def require(obj: object, names: Iterable[str], *, what: str = "aiomqtt") -> None:
    """Raise ``BusError`` naming every attribute of ``names`` that ``obj`` lacks."""
    missing = [name for name in names if not hasattr(obj, name)]
    if missing:
        low = ".".join(map(str, TESTED_AIOMQTT[0]))
        raise BusError(
            f"{what} {version()} lacks {', '.join(missing)}: chequered is tested with aiomqtt {low}"
        )


def check_class(cls: type = aiomqtt.Client) -> None:
    """The start-up check of aiomqtt's client class (and paho's, which it wraps)."""
    require(cls, CLIENT_METHODS)
    require(paho.Client, PAHO_METHODS, what="paho-mqtt under aiomqtt")


def check_client(client: aiomqtt.Client) -> None:
    """The check of a client just made: the private attributes read from it."""
    require(client, CLIENT_FIELDS)
    require(client._client, PAHO_FIELDS, what="paho-mqtt under aiomqtt")


def corked(sock: object, on: bool) -> bool:
    """Set (or clear) TCP_CORK on ``sock``; False where it has none (not TCP, not Linux)."""
    setsockopt = getattr(sock, "setsockopt", None)
    if TCP_CORK is None or setsockopt is None:
        return False
    try:
        setsockopt(socket.IPPROTO_TCP, TCP_CORK, 1 if on else 0)
    except OSError:
        return False
    return True


class BufferedRecv:
    """paho's reads of one connection, served from one buffer.

    paho reads a packet with three or four ``recv()`` calls (the command byte,
    the length a byte at a time, then the rest), each a system call. This reads
    what the socket holds, up to ``READ_BYTES``, with one and hands paho its
    bytes from there; paho's own ``_sock_recv`` still does the reading (its TLS
    handling included), so its errors are paho's as before.
    """

    __slots__ = ("_buffer", "_pos", "_read")

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._buffer = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        buffer, pos = self._buffer, self._pos
        if pos >= len(buffer):
            buffer = self._read(READ_BYTES)  # BlockingIOError when empty: paho's "again"
            if not buffer:
                return buffer  # the connection closed
            pos = 0
            self._buffer = buffer
        end = pos + size
        self._pos = end
        if pos == 0 and end >= len(buffer):
            return buffer
        return buffer[pos:end]

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return max(0, len(self._buffer) - self._pos)


class BurstClient(aiomqtt.Client):
    """aiomqtt's client, reading every packet the socket holds when it wakes up.

    aiomqtt's reader calls paho's ``loop_read``, which reads one packet when
    nothing is in flight (a subscriber's case), so each further packet of a
    burst waited for a turn of the event loop of its own. Reading while the
    socket (or the TLS layer) still holds bytes hands the burst over at once.
    The two callbacks replaced are aiomqtt's own, with their error handling.

    It also publishes without a task or a wait per message (``publish_nowait``):
    the acknowledgement calls a function instead of waking an awaiting task.
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.acks: dict[int, Callable[[], object]] = {}
        """Per message id in flight: what ``publish_nowait`` calls on its acknowledgement."""
        self.loop_thread = threading.get_ident()

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        done = self.acks.pop(mid, None)
        if done is None:
            super()._on_publish(client, userdata, mid, reason_code, properties)
        else:
            done()

    def _on_socket_open(self, client: paho.Client, userdata: object, sock: paho.SocketLike) -> None:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        pending = getattr(sock, "pending", None)  # bytes the TLS layer has decrypted
        # A buffer of this connection's own: nothing of an earlier one is left in it.
        reads = BufferedRecv(functools.partial(paho.Client._sock_recv, client))
        client._sock_recv = reads.recv  # type: ignore[method-assign,assignment]
        held = reads.pending

        def kept() -> bool:
            """Bytes already read that the socket's readiness will not announce again."""
            return held() > 0 or (pending is not None and pending() > 0)

        def read() -> None:
            if client.socket() is not sock:
                return  # a read called for on a connection since replaced
            try:
                for _ in range(READ_BURST):
                    client.loop_read()
                    if client.socket() is not sock:
                        return
                    if not kept() and not poller.poll(0):
                        return
                if kept():
                    # The burst ended with packets read but not handled: their turn comes
                    # next, since the socket will not wake the loop for them.
                    self._loop.call_soon(read)
            except Exception as exc:
                self._broken(exc)

        def create_misc_task() -> None:
            self._misc_task = self._loop.create_task(self._misc_loop())

        # paho calls this from the thread that connects: hand the work to the loop.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), read)
        self._loop.call_soon_threadsafe(create_misc_task)

    def _on_socket_register_write(
        self, client: paho.Client, userdata: object, sock: paho.SocketLike
    ) -> None:
        # As aiomqtt's, but the writer is added only if the socket is still the client's
        # and open when the loop gets to it: a burst read can see the connection close
        # after a packet that asked for a write, and its descriptor may be reused.
        fd = sock.fileno()
        waiting = client._out_packet
        cork = [TCP_CORK is not None]

        def write() -> None:
            # paho sends each packet with a send() of its own: several waiting (a flush's
            # publications and acknowledgements) go out corked, in as few segments as fit,
            # and the broker reads them with one wake-up.
            hold = cork[0] and len(waiting) > 1
            if hold:
                hold = cork[0] = corked(sock, True)
            try:
                client.loop_write()
            except Exception as exc:
                self._broken(exc)
            finally:
                if hold:
                    corked(sock, False)

        def add() -> None:
            if client.socket() is sock and sock.fileno() == fd:
                self._loop.add_writer(fd, write)

        # paho asks once per burst of packets. From the loop's own thread (a publish)
        # the writer goes on the next turn without waking the loop through its pipe.
        if threading.get_ident() == self.loop_thread:
            self._loop.call_soon(add)
        else:
            self._loop.call_soon_threadsafe(add)

    def _broken(self, exc: Exception) -> None:
        """As aiomqtt's callbacks: an error on the socket means the connection broke."""
        if not self._disconnected.done():
            self._disconnected.set_exception(exc)


def make_client(**kwargs: object) -> BurstClient:
    """A ``BurstClient`` (aiomqtt's keyword arguments), its private names checked first."""
    check_class(BurstClient)
    client = BurstClient(**kwargs)
    check_client(client)
    return client


def publish_nowait(
    client: BurstClient,
    topic: str,
    payload: bytes,
    qos: int,
    retain: bool,
    done: Callable[[], object],
) -> None:
    """Queue a publish with paho; ``done`` is called once it is acknowledged (QoS 1) or
    written (QoS 0). Raises ``BusError`` when paho refuses it (no connection)."""
    info = client._client.publish(topic, payload, qos, retain)
    if info.rc != paho.MQTT_ERR_SUCCESS:
        raise BusError(f"publish refused: {paho.error_string(info.rc)}")
    if info.is_published():
        done()
    else:
        client.acks[info.mid] = done


def queued(client: aiomqtt.Client) -> Callable[[], aiomqtt.Message | None]:
    """A function that takes the next message already received, or None: a consumer
    handles what one read of the socket queued without a task and a wait each."""
    queue: asyncio.Queue[aiomqtt.Message] = client._queue

    def take() -> aiomqtt.Message | None:
        return None if queue.empty() else queue.get_nowait()

    return take


def set_manual_ack(client: aiomqtt.Client) -> None:
    """QoS 1 messages are acknowledged only by ``acknowledger``'s function."""
    client._client.manual_ack_set(True)


def acknowledger(client: aiomqtt.Client) -> Callable[[int, int], object]:
    """paho's ``ack(mid, qos)``: aiomqtt does not expose manual acknowledgement."""
    ack: Callable[[int, int], object] = client._client.ack
    return ack


def take_disconnect_error(client: aiomqtt.Client) -> BaseException | None:
    """Why the connection broke, if it did; marks it seen.

    aiomqtt keeps it in a future that only its message iterator reads: a client
    whose messages nobody was reading at the time leaves it unread, and asyncio
    prints "Future exception was never retrieved" with a traceback when the
    client is collected. Taking it here lets the bus log it once, as a line.
    """
    future: asyncio.Future[None] = client._disconnected
    if not future.done() or future.cancelled():
        return None
    return future.exception()


@contextlib.contextmanager
def failing_fast(client: aiomqtt.Client) -> Iterator[None]:
    """Make the call inside end with ``BusError`` as soon as the connection breaks.

    aiomqtt's publish and subscribe wait for the broker's answer with a timeout
    (10 s) and do not watch the connection: a publish sent just before the
    connection broke ended 10 s later as "Operation timed out", which hid the
    real reason and held the service that long. This cancels the waiting task
    when the connection breaks (as ``asyncio.timeout`` does), and says why.
    """
    lost: asyncio.Future[None] = client._disconnected
    task = asyncio.current_task()
    if task is None or lost.done():
        yield  # already broken: the call fails on its own at once
        return
    fired = False

    def on_lost(_: object) -> None:
        nonlocal fired
        fired = True
        task.cancel()

    lost.add_done_callback(on_lost)
    try:
        yield
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            cause = None if lost.cancelled() else lost.exception()
            raise BusError(f"connection lost: {cause or 'closed'}") from cause
        raise
    finally:
        lost.remove_done_callback(on_lost)


async def open_connection(client: aiomqtt.Client) -> None:
    """Connect (aiomqtt's ``__aenter__``), failing if the connection broke meanwhile.

    aiomqtt replaces its disconnect future once connected if that one is already
    done: a connection dropped just after the broker accepted it (another client
    took its id over) then looked connected, its calls waiting for their 10 s
    timeout, and its error was never read (asyncio's "Future exception was never
    retrieved" traceback).
    """
    first: asyncio.Future[None] = client._disconnected
    await client.__aenter__()
    if client._disconnected is not first and first.done():
        cause = None if first.cancelled() else first.exception()
        with contextlib.suppress(aiomqtt.MqttError, OSError):
            await client.__aexit__(None, None, None)
        raise BusError(f"connection lost as it opened: {cause or 'closed'}") from cause
