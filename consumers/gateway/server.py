"""Websocket gateway: pushes the projector's standings from MQTT to browsers, read-only.

Stateless: it keeps only a cache of what the broker retains (snapshot, meta and
status per race, with deltas applied), rebuilt from the broker on start. Each
client gets a snapshot, then contiguous deltas, through a bounded outbox that a
slow client's backlog is coalesced into. Also serves the widget, health and metrics.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import json
import random
import socket
import ssl
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from broker import bus as busmod
from chequered import log as logmod
from chequered.contract import board, control, topics
from consumers.metrics import Registry

log = logmod.get(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
WS_PATH = "/ws"

CLOSE_TOO_BIG = 1009
CLOSE_POLICY = 1008


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Every limit of the gateway, with defaults that suit the demo (permissive)."""

    max_size: int = 4096
    """Largest client frame in bytes; a larger one closes the connection with 1009."""
    rate_per_s: float = 20.0
    """Client frames per second allowed on average (token bucket refill)."""
    burst: int = 40
    """Client frames allowed at once; going over the bucket closes with 1008."""
    max_in_queue: int = 16
    """Client frames buffered before the gateway stops reading a connection."""
    queue_frames: int = 64
    """Frames waiting in one client's outbox before its backlog is coalesced."""
    queue_bytes: int = 1 << 20
    """Bytes waiting in one client's outbox before its backlog is coalesced."""
    write_limit: int = 64 * 1024
    """High-water mark of a connection's transport buffer; above it frames wait in the outbox."""
    send_buffer: int | None = None
    """SO_SNDBUF of each client socket in bytes; None keeps the OS default."""
    max_subscriptions: int = 16
    """Races one client may follow at once."""
    allowed_origins: tuple[str, ...] | None = None
    """Origins (``scheme://host[:port]``) allowed to open /ws; None allows any."""
    allow_missing_origin: bool = True
    """Whether clients that send no Origin header (not browsers) may connect."""
    token: str | None = None
    """When set, /ws requires ``?token=<token>``."""
    max_connections_per_address: int | None = None
    """Websocket connections allowed from one IP address; None: no limit."""
    max_clients: int | None = None
    """Websocket connections allowed in all; None: no limit."""
    max_races: int = 1000
    """Races the cache holds; messages of further races are dropped and counted."""
    delta_backlog: int = 256
    """Recent deltas kept per race, to catch up from a snapshot older than the latest delta."""
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 5.0
    open_timeout_s: float = 10.0
    reconnect_min_s: float = 0.2
    """First wait before reconnecting to the broker; doubles up to ``reconnect_max_s``."""
    reconnect_max_s: float = 10.0
    snapshot_grace_s: float = 0.5
    """How long a live snapshot ahead of the cache waits for its delta before it is sent."""
    broker_close_timeout_s: float = 2.0
    """How long the broker connection may take to close before the stop is repeated."""
    resync_interval_s: float = 1.0
    """Least time between two re-reads of the retained snapshots after a gap."""
    startup_grace_s: float = 2.0
    """After the start and each broker (re)connection, how long a subscribe to a race not in
    the cache is held for the race's retained standings before it is refused (unknown_race)."""
    web_dir: Path = WEB_DIR
    client_id: str | None = None
    """MQTT client id; a random one when None."""
    tls_certfile: Path | None = None
    """Certificate chain (PEM) to serve ``wss://`` and ``https://``; None serves plain text."""
    tls_keyfile: Path | None = None
    """Private key (PEM) of ``tls_certfile``; None when the key is in that file."""


# -- pure parts ------------------------------------------------------------


class TokenBucket:
    """Rate limit: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


FrameKind = Literal["snapshot", "delta", "status", "reply"]


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    data: bytes
    race: str | None = None


class Outbox:
    """One client's bounded queue of encoded frames.

    When it grows past its bounds, ``coalesce`` replaces every queued snapshot
    and delta of a race by one fresh snapshot, and keeps only the latest status:
    what a client that cannot keep up needs, in a size that does not grow.
    """

    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames: deque[Frame] = deque()
        self.size = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self.frames)

    def push(self, frame: Frame) -> None:
        self.frames.append(frame)
        self.size += len(frame.data)
        self.high_water = max(self.high_water, len(self.frames))

    def pop(self) -> Frame:
        frame = self.frames.popleft()
        self.size -= len(frame.data)
        return frame

    def over(self) -> bool:
        return len(self.frames) > self.max_frames or self.size > self.max_bytes

    def drop_race(self, race: str) -> int:
        """Drop the queued frames of one race; returns how many."""
        kept = deque(f for f in self.frames if f.race != race)
        dropped = len(self.frames) - len(kept)
        self.frames = kept
        self.size = sum(len(f.data) for f in kept)
        return dropped

    def coalesce(self, fresh: Callable[[str], Frame | None]) -> int:
        """Replace each race's queued standings by ``fresh(race)``; returns frames dropped."""
        races: list[str] = []
        statuses: dict[str, Frame] = {}
        kept: deque[Frame] = deque()
        for frame in self.frames:
            if frame.race is None:
                kept.append(frame)
            elif frame.kind == "status":
                statuses[frame.race] = frame
            elif frame.race not in races:
                races.append(frame.race)
        before = len(self.frames)
        kept.extend(statuses.values())
        for race in races:
            snapshot = fresh(race)
            if snapshot is not None:
                kept.append(snapshot)
        self.frames = kept
        self.size = sum(len(f.data) for f in kept)
        return before - len(kept)


def meta_name(meta: Any) -> str | None:
    """The race's display name in a retained meta document, wherever it keeps it."""
    if not isinstance(meta, dict):
        return None
    for holder in (meta, meta.get("session"), meta.get("facts")):
        if isinstance(holder, dict) and isinstance(holder.get("name"), str):
            name: str = holder["name"]
            return name
    return None


# -- protocol messages -------------------------------------------------------


class ClientFault(Exception):
    """A client message the gateway refuses; answered with an error frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


_json = msgspec.json.Encoder()
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 64
OPS = ("list", "subscribe", "unsubscribe", "ping")


def _reply(kind: str, request_id: object = None, **fields: object) -> bytes:
    body: dict[str, object] = {"type": kind}
    if request_id is not None:
        body["id"] = request_id
    body.update(fields)
    return _json.encode(body)


def parse_request(text: str) -> dict[str, Any]:
    """Decode and check one client frame; raises ClientFault naming the fault."""
    try:
        message = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise ClientFault("invalid_json", f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ClientFault("invalid_message", "frame must be a JSON object with an `op` field")
    request_id = message.get("id")
    if request_id is not None and not (
        (isinstance(request_id, str) and len(request_id) <= MAX_ID_CHARS)
        or (isinstance(request_id, int) and not isinstance(request_id, bool))
    ):
        raise ClientFault("invalid_field", f"`id` must be a string of at most {MAX_ID_CHARS}")
    op = message.get("op")
    if op is None:
        raise ClientFault("missing_op", "frame has no `op`; one of " + ", ".join(OPS))
    if op not in OPS:
        raise ClientFault("unknown_op", f"unknown op {op!r}; one of " + ", ".join(OPS))
    if op in ("subscribe", "unsubscribe"):
        race = message.get("race")
        if race is None:
            raise ClientFault("missing_race", f"`{op}` needs `race`")
        if not isinstance(race, str) or not 0 < len(race) <= MAX_NAME_CHARS:
            raise ClientFault("invalid_field", "`race` must be a race id string")
        cls = message.get("class")
        if cls is not None and (not isinstance(cls, str) or not 0 < len(cls) <= MAX_NAME_CHARS):
            raise ClientFault("invalid_field", "`class` must be a class name string or null")
    return message


# -- metrics -----------------------------------------------------------------


class GatewayMetrics:
    """The gateway's counters (on the shared registry) and its labelled counts."""

    def __init__(self) -> None:
        reg = self.registry = Registry("chequered_gateway")
        self.connections = reg.counter("connections", "websocket connections accepted")
        self.frames_out = reg.counter("frames_out", "frames sent to clients")
        self.bytes_out = reg.counter("bytes_out", "bytes sent to clients")
        self.writes = reg.counter(
            "writes", "writes handed to client transports (each carries a turn's frames)"
        )
        self.coalesced = reg.counter("coalesced", "client backlogs replaced by a fresh snapshot")
        self.frames_dropped = reg.counter("frames_dropped", "queued frames dropped by coalescing")
        self.broker_messages = reg.counter("broker_messages", "MQTT messages received")
        self.bad_payloads = reg.counter("bad_payloads", "MQTT payloads that did not decode")
        self.gaps = reg.counter("gaps", "deltas that did not apply on the cached snapshot")
        self.resyncs = reg.counter("resyncs", "re-reads of the retained snapshots")
        self.broker_connects = reg.counter("broker_connects", "connections made to the broker")
        self.clients = reg.gauge("clients", "websocket clients connected")
        self.races = reg.gauge("races", "races in the cache")
        self.stale_races = reg.gauge("stale_races", "races waiting for a snapshot after a gap")
        self.broker_connected = reg.gauge("broker_connected", "1 while connected to the broker")
        self.lag = reg.gauge(
            "lag_seconds", "seconds from the emission of the newest delta's event to the gateway"
        )
        self.queued_frames = reg.gauge("queued_frames", "frames waiting in all client outboxes")
        self.queued_bytes = reg.gauge("queued_bytes", "bytes waiting in all client outboxes")
        self.queue_high_water = reg.gauge(
            "queue_high_water_frames", "most frames ever waiting in one client's outbox"
        )
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.rejected: Counter[str] = Counter()
        self.http: Counter[str] = Counter()

    def render(self) -> str:
        lines = [self.registry.render().rstrip("\n")]
        labelled: dict[str, tuple[str, Counter[str] | Counter[int], str]] = {
            "errors_total": ("error", self.errors, "error frames sent, by error code"),
            "closes_total": ("code", self.closes, "websocket connections closed, by close code"),
            "rejected_total": (
                "reason",
                self.rejected,
                "websocket handshakes refused (and races beyond max_races), by reason",
            ),
            "http_requests_total": ("path", self.http, "plain HTTP requests served, by path"),
        }
        for name, (label, counts, help_text) in labelled.items():
            full = f"{self.registry.namespace}_{name}"
            lines.append(f"# HELP {full} {help_text}")
            lines.append(f"# TYPE {full} counter")
            for key, value in sorted(counts.items(), key=lambda kv: str(kv[0])):
                lines.append(f'{full}{{{label}="{key}"}} {value}')
        return "\n".join(lines) + "\n"


# -- state -------------------------------------------------------------------


@dataclass(slots=True)
class Subscription:
    cls: str | None
    last_seq: int | None = None
    """Seq of the last standings frame queued to the client for this race."""
    request_id: object = None
    """The id of the subscribe, for the refusal of one held through the startup grace."""


@dataclass(eq=False)
class RaceCache:
    race: str
    snapshot: board.Snapshot | None = None
    meta: Any = None
    status: control.Status | None = None
    stale: bool = False
    backlog: deque[board.Delta] = field(default_factory=deque)
    encoded: dict[str | None, bytes] = field(default_factory=dict)
    """Encoded snapshot per class filter (None: all cars), until the next change."""
    subscribers: set[Client] = field(default_factory=set)
    pending: tuple[board.Snapshot, bytes] | None = None
    """A live snapshot ahead of the cache, held for the delta that follows it."""
    pending_timer: asyncio.TimerHandle | None = None

    def known(self) -> bool:
        return self.snapshot is not None or self.meta is not None or self.status is not None

    def classes(self) -> list[str]:
        if self.snapshot is None:
            return []
        seen = list(self.snapshot.session.classes)
        for row in self.snapshot.cars:
            if row.cls not in seen:
                seen.append(row.cls)
        return seen


@dataclass(frozen=True, slots=True)
class ClientStats:
    address: str
    queued_frames: int
    queued_bytes: int
    high_water: int
    coalesced: int
    subscriptions: dict[str, int | None]


class Client:
    """One websocket connection: its subscriptions, outbox and writer."""

    def __init__(self, ws: ServerConnection, gateway: Gateway) -> None:
        settings = gateway.settings
        self.ws = ws
        self.gateway = gateway
        self.address = _address(ws)
        self.subs: dict[str, Subscription] = {}
        self.outbox = Outbox(settings.queue_frames, settings.queue_bytes)
        self.bucket = TokenBucket(settings.rate_per_s, settings.burst, time.monotonic())
        self.wake = asyncio.Event()
        self.sending = False
        self.coalesced = 0
        self.closing: asyncio.Task[None] | None = None
        self.due: list[bytes] = []
        """Payloads the transport takes at the end of this turn of the loop, in order."""
        self.due_bytes = 0
        self.written_bytes = 0
        """Bytes written by ``flush`` not yet counted in the metrics (``count_written``)."""
        # Without extensions (compression is off) a server's frame is the same bytes for
        # every client: it is then encoded once and shared (see ``flush``).
        self.plain_frames = not ws.protocol.extensions

    def send(self, frame: Frame) -> None:
        """Queue a frame without ever waiting on the client."""
        metrics = self.gateway.metrics
        ws = self.ws
        if self.closing is not None or ws.protocol.state in (State.CLOSING, State.CLOSED):
            return  # on its way out: nothing more is owed to it
        if (
            not self.outbox.frames
            and not self.sending
            and ws.protocol.state is State.OPEN
            and ws.transport.get_write_buffer_size() + self.due_bytes
            < self.gateway.settings.write_limit
        ):
            # The transport takes it at the end of this turn of the event loop, with the
            # other frames due to this client: one write (one system call) per turn.
            if not self.due:
                self.gateway.flush_later(self)
            self.due.append(frame.data)
            self.due_bytes += len(frame.data)
            return
        self.outbox.push(frame)
        if self.outbox.over():
            dropped = self.outbox.coalesce(self.gateway.fresh_snapshot_for(self))
            self.coalesced += 1
            metrics.coalesced.inc()
            metrics.frames_dropped.inc(dropped)
            # The first time is news; after that the counters tell the story.
            (log.info if self.coalesced == 1 else log.debug)(
                "client_coalesced", client=self.address, dropped=dropped, times=self.coalesced
            )
            if self.outbox.over():
                self.close(CLOSE_POLICY, "outbox overflow: client is not reading")
        if self.outbox.high_water > metrics.queue_high_water.value:
            metrics.queue_high_water.set(self.outbox.high_water)
        self.wake.set()

    def flush(self, wire: dict[int, tuple[bytes, bytes]] | None = None) -> int:
        """Hand the frames due to this client to the transport in one write.

        ``wire`` shares the encoded frames among the clients flushed together (keyed by
        the payload's id; the payload is kept beside its frame so that the id stays its own).
        Returns how many frames were written; the caller counts them (``count_written``).
        """
        due = self.due
        if not due:
            return 0
        size = self.due_bytes
        self.due = []
        self.due_bytes = 0
        ws = self.ws
        protocol = ws.protocol
        if (
            protocol.state is not State.OPEN
            or ws.send_in_progress is not None
            or protocol.expect_continuation_frame
        ):
            return 0  # closing (nothing more is owed to it), or never: no fragmented sends here
        try:
            if self.plain_frames:
                if protocol.writes:
                    ws.send_data()  # whatever the library has queued (a pong) goes first
                frames: list[bytes] = []
                for data in due:
                    known = None if wire is None else wire.get(id(data))
                    if known is None:
                        known = (data, server_frame(data))
                        if wire is not None:
                            wire[id(data)] = known
                    frames.append(known[1])
                if len(frames) == 1:
                    ws.transport.write(frames[0])
                else:
                    ws.transport.writelines(frames)
            else:
                for data in due:
                    protocol.send_text(data)
                ws.transport.writelines(protocol.data_to_send())
        except Exception as exc:  # a transport that went away meanwhile: the handler sees it
            log.debug("client_write_failed", client=self.address, error=str(exc))
            return 0
        self.written_bytes += size
        return len(due)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it (the handler keeps reading)."""
        if self.closing is None:
            self.closing = asyncio.create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        # close() waits for the transport to drain, which a client that does not read never
        # lets happen: past close_timeout the connection is dropped.
        try:
            async with asyncio.timeout(self.gateway.settings.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            log.info("client_dropped", client=self.address, code=code, reason=reason)
            self.ws.transport.abort()

    async def run_writer(self) -> None:
        metrics = self.gateway.metrics
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbox:
                # The frames due before the outbox filled go first.
                self.gateway.count_written(self, self.flush())
                frame = self.outbox.pop()
                self.sending = True
                try:
                    # Waits while the transport buffer is over write_limit: only this client waits.
                    await self.ws.send(frame.data, text=True)
                except ConnectionClosed:
                    return
                finally:
                    self.sending = False
                metrics.frames_out.inc()
                metrics.bytes_out.inc(len(frame.data))

    def stats(self) -> ClientStats:
        return ClientStats(
            address=self.address,
            queued_frames=len(self.outbox),
            queued_bytes=self.outbox.size,
            high_water=self.outbox.high_water,
            coalesced=self.coalesced,
            subscriptions={race: sub.last_seq for race, sub in self.subs.items()},
        )


def server_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame from server to client, with no extension (RFC 6455)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 1 << 16:
        head = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return head + payload


def _address(ws: ServerConnection) -> str:
    remote = ws.remote_address
    if isinstance(remote, tuple) and remote:
        return str(remote[0])
    return str(remote)


# -- the gateway -------------------------------------------------------------


class Gateway:
    """The broker-side cache, the client registry and the HTTP/websocket server."""

    def __init__(
        self, url: busmod.BrokerAddress | str, settings: GatewaySettings | None = None
    ) -> None:
        self.broker = url
        """What ``connect`` takes: a URL, or an address that carries TLS files."""
        self.url = _loggable(url)
        """The broker as logs name it: scheme, host and port, never a user name or password."""
        self.settings = settings or GatewaySettings()
        self.metrics = GatewayMetrics()
        self.races: dict[str, RaceCache] = {}
        self.clients: set[Client] = set()
        self.by_address: dict[str, set[ServerConnection]] = {}
        self.broker_connected = False
        self._stopping = False
        self._connecting = False
        self._resync = asyncio.Event()
        self._grace: asyncio.TimerHandle | None = None
        """Set while subscribes to races not seen yet are held (``startup_grace_s``)."""
        self._static = self._load_static()
        self._tasks: set[asyncio.Task[None]] = set()
        self._due: list[Client] = []
        """Clients with frames due at the end of this turn of the event loop."""
        self._flush_handle: asyncio.Handle | None = None

    def flush_later(self, client: Client) -> None:
        """Have ``client``'s due frames written at the end of this turn of the event loop."""
        self._due.append(client)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        clients = self._due
        self._due = []
        wire: dict[int, tuple[bytes, bytes]] = {}
        frames = size = writes = 0
        for client in clients:
            written = client.flush(wire)
            if written:
                frames += written
                size += client.written_bytes
                client.written_bytes = 0
                writes += 1
        metrics = self.metrics
        metrics.frames_out.inc(frames)
        metrics.bytes_out.inc(size)
        metrics.writes.inc(writes)

    def count_written(self, client: Client, frames: int) -> None:
        if frames:
            self.metrics.frames_out.inc(frames)
            self.metrics.bytes_out.inc(client.written_bytes)
            self.metrics.writes.inc()
            client.written_bytes = 0

    # -- broker side ------------------------------------------------------

    def on_broker_message(self, message: busmod.Message) -> None:
        race = topics.race_of(message.topic)
        leaf = topics.leaf_of(message.topic)
        if race is None or leaf is None:
            return
        self.metrics.broker_messages.inc()
        cache = self.races.get(race)
        if cache is None:
            if not message.payload:
                return
            if len(self.races) >= self.settings.max_races:
                self.metrics.rejected["max_races"] += 1
                return
            cache = self.races[race] = RaceCache(race)
        try:
            if leaf == topics.STANDINGS:
                self._on_snapshot(cache, message.payload, retained=message.retain)
            elif leaf == topics.STANDINGS_DELTA:
                self._on_delta(cache, message.payload)
            elif leaf == topics.META:
                cache.meta = msgspec.json.decode(message.payload) if message.payload else None
            elif leaf == topics.STATUS:
                self._on_status(cache, message.payload)
        except (msgspec.DecodeError, msgspec.ValidationError, board.SeqMismatch) as exc:
            self.metrics.bad_payloads.inc()
            log.warning("bad_payload", topic=message.topic, error=str(exc))
        if not cache.known() and not cache.subscribers:
            del self.races[race]

    def _on_snapshot(self, cache: RaceCache, payload: bytes, *, retained: bool) -> None:
        if not payload:
            self._drop_pending(cache)
            cache.snapshot = None
            cache.encoded.clear()
            return
        snapshot = board.decode_snapshot(payload)
        if snapshot.race != cache.race:
            raise board.SeqMismatch(f"snapshot of race {snapshot.race!r} on {cache.race!r}")
        current = cache.snapshot
        if current is not None:
            if snapshot.seq == current.seq:
                return
            if snapshot.seq < current.seq:
                # An older copy (re-read after a gap, or on reconnect) is not news, unless it
                # comes from a newer run of the race (seq restarted, later wall time).
                if snapshot.wall <= current.wall:
                    return
            elif not (cache.stale or retained):
                # The projector publishes a live snapshot just before the delta of the same
                # seq: hold it, so that clients in step get the small delta, not the snapshot.
                self._hold(cache, snapshot, payload)
                return
        self._adopt(cache, snapshot, payload)

    def _adopt(self, cache: RaceCache, snapshot: board.Snapshot, payload: bytes) -> None:
        """Take a snapshot as the race's standings and send it to every subscriber."""
        self._drop_pending(cache)
        cache.snapshot = snapshot
        cache.encoded = {None: payload}
        # Deltas that arrived before their snapshot: replay the ones that chain on it.
        for delta in list(cache.backlog):
            if delta.prev_seq == cache.snapshot.seq:
                cache.snapshot = board.apply_delta(cache.snapshot, delta)
                cache.encoded.clear()
        cache.stale = False
        for client in list(cache.subscribers):
            self._send_snapshot(client, cache)

    def _hold(self, cache: RaceCache, snapshot: board.Snapshot, payload: bytes) -> None:
        cache.pending = (snapshot, payload)
        if cache.pending_timer is None:
            cache.pending_timer = asyncio.get_running_loop().call_later(
                self.settings.snapshot_grace_s, self._adopt_pending, cache
            )

    def _adopt_pending(self, cache: RaceCache) -> None:
        """A held snapshot that its delta did not catch up with: it is the news after all."""
        cache.pending_timer = None
        pending = cache.pending
        if pending is None:
            return
        if cache.snapshot is not None and pending[0].seq <= cache.snapshot.seq:
            self._drop_pending(cache)
            return
        self._adopt(cache, *pending)

    @staticmethod
    def _drop_pending(cache: RaceCache) -> None:
        cache.pending = None
        if cache.pending_timer is not None:
            cache.pending_timer.cancel()
            cache.pending_timer = None

    def _on_delta(self, cache: RaceCache, payload: bytes) -> None:
        delta = board.decode_delta(payload)
        if delta.wall:  # producer to gateway, through the projector
            self.metrics.lag.set(max(0.0, time.time() - delta.wall))
        if delta.race != cache.race:
            raise board.SeqMismatch(f"delta of race {delta.race!r} on {cache.race!r}")
        cache.backlog.append(delta)
        while len(cache.backlog) > self.settings.delta_backlog:
            cache.backlog.popleft()
        snapshot = cache.snapshot
        if snapshot is not None and delta.seq <= snapshot.seq:
            return  # already folded into the snapshot
        if snapshot is not None and delta.prev_seq == snapshot.seq:
            self._forward(cache, snapshot, delta, payload)
            if cache.pending is not None and cache.pending[0].seq <= delta.seq:
                self._drop_pending(cache)
            return
        if cache.pending is not None:
            self._adopt_pending(cache)  # replays this delta too when it chains on the snapshot
            if cache.snapshot is not None and cache.snapshot.seq >= delta.seq:
                return
        if not cache.stale:
            self.metrics.gaps.inc()
            log.warning(
                "standings_gap",
                race=cache.race,
                at=None if snapshot is None else snapshot.seq,
                delta=delta.seq,
                prev_seq=delta.prev_seq,
            )
        cache.stale = True
        self._resync.set()

    def _forward(
        self, cache: RaceCache, snapshot: board.Snapshot, delta: board.Delta, payload: bytes
    ) -> None:
        """Apply a delta that follows the cache and pass it on to each subscriber."""
        cache.snapshot = board.apply_delta(snapshot, delta)
        cache.encoded.clear()
        cache.stale = False
        race = cache.race
        by_class: dict[str | None, Frame] = {None: Frame("delta", payload, race)}
        for client in list(cache.subscribers):
            sub = client.subs[race]
            if sub.last_seq != delta.prev_seq:
                self._send_snapshot(client, cache)
                continue
            frame = by_class.get(sub.cls)
            if frame is None:
                data = board.encode(
                    msgspec.structs.replace(delta, cars=[r for r in delta.cars if r.cls == sub.cls])
                )
                frame = by_class[sub.cls] = Frame("delta", data, race)
            sub.last_seq = delta.seq
            client.send(frame)

    def _on_status(self, cache: RaceCache, payload: bytes) -> None:
        cache.status = control.decode_status(payload) if payload else None
        if cache.status is None:
            return
        frame = Frame("status", self._status_frame(cache.status), cache.race)
        for client in list(cache.subscribers):
            client.send(frame)

    @staticmethod
    def _status_frame(status: control.Status) -> bytes:
        # Every field spelled out: a null speed (as fast as possible) must reach the client.
        return _json.encode(
            {
                "type": "status",
                "race": status.race,
                "state": status.state,
                "speed": status.speed,
                "t_ms": status.t_ms,
                "end_ms": status.end_ms,
                "last_seq": status.last_seq,
                "wall": status.wall,
            }
        )

    def snapshot_bytes(self, cache: RaceCache, cls: str | None) -> bytes:
        assert cache.snapshot is not None
        data = cache.encoded.get(cls)
        if data is None:
            snapshot = cache.snapshot
            if cls is not None:
                snapshot = msgspec.structs.replace(
                    snapshot, cars=[r for r in snapshot.cars if r.cls == cls]
                )
            data = cache.encoded[cls] = board.encode(snapshot)
        return data

    def _send_snapshot(self, client: Client, cache: RaceCache) -> None:
        if cache.snapshot is None:
            return
        sub = client.subs[cache.race]
        # Whatever of this race still waits in the outbox is superseded by the snapshot.
        self.metrics.frames_dropped.inc(client.outbox.drop_race(cache.race))
        sub.last_seq = cache.snapshot.seq
        client.send(Frame("snapshot", self.snapshot_bytes(cache, sub.cls), cache.race))

    def fresh_snapshot_for(self, client: Client) -> Callable[[str], Frame | None]:
        def fresh(race: str) -> Frame | None:
            cache = self.races.get(race)
            sub = client.subs.get(race)
            if cache is None or cache.snapshot is None or sub is None:
                return None
            sub.last_seq = cache.snapshot.seq
            return Frame("snapshot", self.snapshot_bytes(cache, sub.cls), race)

        return fresh

    async def _broker_loop(self) -> None:
        settings = self.settings
        delay = settings.reconnect_min_s
        client_id = settings.client_id or f"chequered-gateway-{uuid.uuid4().hex[:8]}"
        while not self._stopping:
            try:
                self._connecting = True
                async with busmod.connect(self.broker, client_id=client_id) as bus:
                    for leaf in (
                        topics.STANDINGS,
                        topics.STANDINGS_DELTA,
                        topics.META,
                        topics.STATUS,
                    ):
                        await bus.subscribe(topics.all_races(leaf))
                    self._connecting = False
                    if self._stopping:
                        return  # a stop that came while connecting (see _stop_broker)
                    self.broker_connected = True
                    self.metrics.broker_connects.inc()
                    delay = settings.reconnect_min_s
                    log.info("broker_connected", url=self.url)
                    self._start_grace()
                    resync = asyncio.create_task(self._resync_loop(bus))
                    try:
                        async for message in bus.messages():
                            try:
                                self.on_broker_message(message)
                            except Exception:
                                # One message must not take the gateway down with it.
                                self.metrics.bad_payloads.inc()
                                log.exception("broker_message_failed", topic=message.topic)
                    finally:
                        resync.cancel()
            except (aiomqtt.MqttError, OSError) as exc:
                log.warning("broker_lost", url=self.url, error=str(exc), retry_s=round(delay, 2))
            finally:
                self.broker_connected = False
                self._connecting = False
            if self._stopping:
                return
            # Jitter spreads the reconnects of many gateways after a broker restart.
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, settings.reconnect_max_s)

    def _start_grace(self) -> None:
        """Hold subscribes to races not seen yet: the broker is still sending what it retains."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.settings.startup_grace_s > 0:
            self._grace = asyncio.get_running_loop().call_later(
                self.settings.startup_grace_s, self._end_grace
            )

    def _end_grace(self) -> None:
        """Refuse the held subscribes whose race the broker did not name in time."""
        self._grace = None
        for race, cache in list(self.races.items()):
            if cache.known():
                continue
            for client in list(cache.subscribers):
                sub = client.subs.pop(race, None)
                client.outbox.drop_race(race)
                fault = ClientFault("unknown_race", f"no race {race!r}; `list` names the races")
                self._error(client, fault, request_id=None if sub is None else sub.request_id)
            del self.races[race]

    async def _stop_broker(self, task: asyncio.Task[None]) -> None:
        """Stop the broker loop: a flag it checks, and a cancellation.

        On Python 3.11 a cancellation that lands as the MQTT client's connect or subscribe
        completes is swallowed (``asyncio.wait_for``), and the loop would carry on: the flag
        ends it then, and the cancellation is repeated for as long as it is still running.
        """
        self._stopping = True
        if self._connecting:
            # Cancelled mid-handshake, the MQTT client leaves its socket open: let the
            # handshake end (or fail) instead; the loop returns as soon as it has.
            await asyncio.wait({task}, timeout=self.settings.broker_close_timeout_s)
        while not task.done():
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self.settings.broker_close_timeout_s)
            if not done:
                log.warning("broker_close_slow", url=self.url)
        if not task.cancelled() and task.exception() is not None:
            log.warning("broker_loop_failed", error=str(task.exception()))

    async def _resync_loop(self, bus: busmod.Bus) -> None:
        """After a gap, subscribe again to the snapshots: the broker resends the retained ones."""
        while True:
            await self._resync.wait()
            self._resync.clear()
            self.metrics.resyncs.inc()
            await bus.subscribe(topics.all_races(topics.STANDINGS))
            await asyncio.sleep(self.settings.resync_interval_s)

    # -- client side ------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        settings = self.settings
        if settings.send_buffer is not None:
            sock = ws.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, settings.send_buffer)
        client = Client(ws, self)
        self.clients.add(client)
        self.metrics.connections.inc()
        writer = asyncio.create_task(client.run_writer())
        log.debug("client_connected", client=client.address)
        try:
            async for message in ws:
                if client.closing is not None:
                    continue  # draining, so that the client's close frame gets read
                if not client.bucket.take(time.monotonic()):
                    self.metrics.errors["rate_limited"] += 1
                    log.info("client_rate_limited", client=client.address)
                    client.close(CLOSE_POLICY, "rate limit exceeded")
                    continue
                if isinstance(message, bytes):
                    self._error(client, ClientFault("binary_frame", "frames must be JSON text"))
                    continue
                try:
                    self._on_request(client, parse_request(message))
                except ClientFault as fault:
                    self._error(client, fault, message)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self.clients.discard(client)
            for race in client.subs:
                cache = self.races.get(race)
                if cache is not None:
                    cache.subscribers.discard(client)
            if client.closing is not None:
                await asyncio.gather(client.closing, return_exceptions=True)
            close = ws.protocol.close_sent or ws.protocol.close_rcvd
            code = int(close.code) if close is not None else 1006
            self.metrics.closes[code] += 1
            log.debug("client_closed", client=client.address, code=code)

    def _error(
        self,
        client: Client,
        fault: ClientFault,
        raw: str | None = None,
        *,
        request_id: object = None,
    ) -> None:
        self.metrics.errors[fault.code] += 1
        log.info("client_error", client=client.address, error=fault.code, detail=fault.detail)
        if raw is not None and fault.code not in ("invalid_json", "invalid_field"):
            try:
                parsed = msgspec.json.decode(raw)
                request_id = parsed.get("id") if isinstance(parsed, dict) else None
            except msgspec.DecodeError:
                pass
        client.send(
            Frame("reply", _reply("error", request_id, error=fault.code, detail=fault.detail))
        )

    def _on_request(self, client: Client, message: dict[str, Any]) -> None:
        op = message["op"]
        request_id = message.get("id")
        if op == "ping":
            client.send(Frame("reply", _reply("pong", request_id, t=time.time())))
        elif op == "list":
            client.send(Frame("reply", _reply("races", request_id, races=self.race_list())))
        elif op == "subscribe":
            self._subscribe(client, message["race"], message.get("class"), request_id)
        elif op == "unsubscribe":
            race = message["race"]
            if race not in client.subs:
                raise ClientFault("not_subscribed", f"not subscribed to race {race!r}")
            del client.subs[race]
            cache = self.races.get(race)
            if cache is not None:
                cache.subscribers.discard(client)
            client.outbox.drop_race(race)
            client.send(Frame("reply", _reply("unsubscribed", request_id, race=race)))

    def _subscribe(self, client: Client, race: str, cls: str | None, request_id: object) -> None:
        cache = self.races.get(race)
        if (cache is None or not cache.known()) and not self._may_hold(race):
            raise ClientFault("unknown_race", f"no race {race!r}; `list` names the races")
        classes = cache.classes() if cache is not None else []
        if cls is not None and classes and cls not in classes:
            raise ClientFault(
                "unknown_class", f"race {race!r} has no class {cls!r}; it has {', '.join(classes)}"
            )
        if race not in client.subs and len(client.subs) >= self.settings.max_subscriptions:
            raise ClientFault(
                "too_many_subscriptions",
                f"at most {self.settings.max_subscriptions} races at once; unsubscribe one first",
            )
        if cache is None:
            # Held through the startup grace: the race's retained standings may be on the way.
            cache = self.races[race] = RaceCache(race)
        client.subs[race] = Subscription(cls, request_id=request_id)
        cache.subscribers.add(client)
        if cache.snapshot is not None:
            self._send_snapshot(client, cache)
        else:
            client.outbox.drop_race(race)
            client.send(
                Frame("reply", _reply("subscribed", request_id, race=race, waiting=True), race)
            )
        if cache.status is not None:
            client.send(Frame("status", self._status_frame(cache.status), race))

    def _may_hold(self, race: str) -> bool:
        """Whether a subscribe to a race not in the cache waits for it (startup grace)."""
        if self._grace is None:
            return False
        return race in self.races or len(self.races) < self.settings.max_races

    def race_list(self) -> list[dict[str, object]]:
        races: list[dict[str, object]] = []
        for race, cache in sorted(self.races.items()):
            if not cache.known():
                continue
            session = cache.snapshot.session if cache.snapshot is not None else None
            status = cache.status
            races.append(
                {
                    "race": race,
                    "name": meta_name(cache.meta) or (session.name if session else "") or race,
                    "state": status.state if status else None,
                    "speed": status.speed if status else (session.speed if session else None),
                    "t_ms": status.t_ms if status else (session.t_ms if session else None),
                    "seq": cache.snapshot.seq if cache.snapshot is not None else None,
                    "flag": session.flag if session else None,
                    "classes": cache.classes(),
                    "stale": cache.stale,
                }
            )
        return races

    # -- HTTP side --------------------------------------------------------

    def _load_static(self) -> dict[str, tuple[bytes, str]]:
        types = {
            "/": ("index.html", "text/html; charset=utf-8"),
            "/index.html": ("index.html", "text/html; charset=utf-8"),
            "/leaderboard.js": ("leaderboard.js", "text/javascript; charset=utf-8"),
            "/leaderboard.css": ("leaderboard.css", "text/css; charset=utf-8"),
        }
        static: dict[str, tuple[bytes, str]] = {}
        for path, (name, content_type) in types.items():
            file = self.settings.web_dir / name
            if file.is_file():
                static[path] = (file.read_bytes(), content_type)
            else:
                log.warning("web_file_missing", file=str(file))
        return static

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if path == WS_PATH:
            return self._admit(conn, request, parts.query)
        self.metrics.http[path if path in self._known_paths() else "other"] += 1
        if path in self._static:
            body, content_type = self._static[path]
            return _response(200, body, content_type)
        if path == "/healthz":
            health = {
                "ok": self.broker_connected,
                "races": len([c for c in self.races.values() if c.known()]),
                "clients": len(self.clients),
                "broker_connected": self.broker_connected,
            }
            status = 200 if self.broker_connected else 503
            return _response(status, json.dumps(health).encode(), "application/json")
        if path == "/metrics":
            self.update_gauges()
            body = self.metrics.render().encode()
            return _response(200, body, "text/plain; version=0.0.4; charset=utf-8")
        return _response(404, f"not found: {path}\n".encode(), "text/plain; charset=utf-8")

    def _known_paths(self) -> set[str]:
        return {*self._static, "/healthz", "/metrics"}

    def _admit(self, conn: ServerConnection, request: Request, query: str) -> Response | None:
        settings = self.settings

        def refuse(status: int, reason: str, text: str) -> Response:
            self.metrics.rejected[reason] += 1
            log.info("client_refused", reason=reason, address=_address(conn))
            return _response(status, (text + "\n").encode(), "text/plain; charset=utf-8")

        if settings.allowed_origins is not None:
            origin = request.headers.get("Origin")
            if origin is None:
                if not settings.allow_missing_origin:
                    return refuse(403, "origin", "an Origin header is required")
            elif origin not in settings.allowed_origins:
                return refuse(403, "origin", f"origin {origin} is not allowed")
        if settings.token is not None:
            given = parse_qs(query).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), settings.token.encode()):
                return refuse(401, "token", "a valid ?token= is required")
        if settings.max_clients is not None and self._connections() >= settings.max_clients:
            return refuse(503, "capacity", "the gateway is full; try again later")
        address = _address(conn)
        held = self.by_address.setdefault(address, set())
        limit = settings.max_connections_per_address
        if limit is not None and len(held) >= limit:
            return refuse(429, "per_address", f"at most {limit} connections per address")
        held.add(conn)
        task = asyncio.create_task(self._forget(conn, address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return None

    async def _forget(self, conn: ServerConnection, address: str) -> None:
        await conn.wait_closed()
        held = self.by_address.get(address)
        if held is not None:
            held.discard(conn)
            if not held:
                del self.by_address[address]

    def _connections(self) -> int:
        return sum(len(held) for held in self.by_address.values())

    # -- introspection ----------------------------------------------------

    def update_gauges(self) -> None:
        metrics = self.metrics
        stats = [client.stats() for client in self.clients]
        metrics.clients.set(len(self.clients))
        metrics.races.set(len([c for c in self.races.values() if c.known()]))
        metrics.stale_races.set(len([c for c in self.races.values() if c.stale]))
        metrics.broker_connected.set(1.0 if self.broker_connected else 0.0)
        metrics.queued_frames.set(sum(s.queued_frames for s in stats))
        metrics.queued_bytes.set(sum(s.queued_bytes for s in stats))

    def client_stats(self) -> list[ClientStats]:
        return [client.stats() for client in self.clients]

    # -- running ----------------------------------------------------------

    async def run(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        stop: asyncio.Event | None = None,
        ready: asyncio.Future[int] | None = None,
    ) -> None:
        settings = self.settings
        if isinstance(self.broker, str):
            busmod.parse_url(self.broker)  # a bad URL is the caller's error, not a reason to retry
        self._start_grace()  # the broker's retained standings have not come in yet
        broker_task = asyncio.create_task(self._broker_loop())
        try:
            async with serve(
                self._handle,
                host,
                port,
                compression=None,
                process_request=self._process_request,
                max_size=settings.max_size,
                max_queue=settings.max_in_queue,
                write_limit=settings.write_limit,
                ping_interval=settings.ping_interval_s,
                ping_timeout=settings.ping_timeout_s,
                close_timeout=settings.close_timeout_s,
                open_timeout=settings.open_timeout_s,
                ssl=tls_context(settings),
                logger=None,
            ) as server:
                bound = server.sockets[0].getsockname()[1]
                log.info("gateway_listening", host=host, port=bound, broker=self.url)
                if ready is not None and not ready.done():
                    ready.set_result(bound)
                await (stop or asyncio.Event()).wait()
                # Close every client here, each bounded by close_timeout: a client that does
                # not read would otherwise hold the shutdown until its keepalive runs out.
                for client in list(self.clients):
                    client.close(1001, "gateway shutting down")
                closing = [c.closing for c in self.clients if c.closing is not None]
                await asyncio.gather(*closing, return_exceptions=True)
        except BaseException as exc:
            if ready is not None and not ready.done():
                ready.set_exception(exc)
            raise
        finally:
            await self._stop_broker(broker_task)
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            for cache in self.races.values():
                self._drop_pending(cache)
            for task in list(self._tasks):
                task.cancel()


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


def _response(status: int, body: bytes, content_type: str) -> Response:
    headers = Headers(
        [
            ("Content-Type", content_type),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("Access-Control-Allow-Origin", "*"),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


async def run_gateway(
    url: busmod.BrokerAddress | str,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    stop: asyncio.Event | None = None,
    ready: asyncio.Future[int] | None = None,
    settings: GatewaySettings | None = None,
) -> None:
    """Serve the websocket gateway and the widget until ``stop`` is set.

    ``ready`` resolves to the bound port (``port=0`` picks a free one).
    """
    await Gateway(url, settings).run(host=host, port=port, stop=stop, ready=ready)
