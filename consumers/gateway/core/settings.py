"""Every limit of the websocket gateway, with its default and what it defends."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEB_DIR = Path(__file__).resolve().parents[2] / "web"


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """Every limit of the gateway. The defaults suit a public demo on one host."""

    max_size: int = 4096
    """Largest client frame in bytes; a larger one closes the connection with 1009."""
    rate_per_s: float = 20.0
    """Client frames per second allowed on average (token bucket refill)."""
    burst: int = 40
    """Client frames allowed at once; going over the bucket closes with 1008."""
    subscribe_rate_per_s: float = 2.0
    """Subscribes per second one client may make on average. Each answers with a whole
    snapshot (~250 times the bytes of the request): re-subscribing in a loop is the
    cheapest way to make the gateway send a lot."""
    subscribe_burst: int = 8
    """Subscribes one client may make at once (a page that opens several races)."""
    max_in_queue: int = 16
    """Client frames buffered before the gateway stops reading a connection."""
    queue_frames: int = 64
    """Frames waiting in one client's outbox before its backlog is coalesced."""
    queue_bytes: int = 1 << 20
    """Bytes waiting in one client's outbox before its backlog is coalesced."""
    write_limit: int = 64 * 1024
    """High-water mark of a connection's transport buffer; above it frames wait in the outbox."""
    compression: bool = True
    """Offer permessage-deflate (browsers ask for it): clients in step share each compressed
    frame (``core.deflate``); a client that does not ask gets plain frames."""
    deflate_epoch_s: float = 1.0
    """How often every client's next frame starts a new shared chain, so that clients
    that went their own way (joined, resynced) share frames again."""
    send_buffer: int | None = None
    """SO_SNDBUF of each client socket in bytes; None keeps the OS default."""
    max_subscriptions: int = 16
    """Races one client may follow at once."""
    allowed_origins: tuple[str, ...] | None = None
    """Origins (``scheme://host[:port]``) allowed to open /ws; None allows any."""
    allow_missing_origin: bool = True
    """Whether clients that send no Origin header (not browsers) may connect."""
    token: str | None = None
    """When set, /ws requires ``?token=<token>``, and /metrics on the public port too."""
    max_connections_per_address: int | None = 32
    """Connections (websocket or HTTP, open or still in their opening handshake) from one IP
    address, counted when the connection is accepted, before a byte of it is read; the next
    gets 429. None: no limit (a load test from one machine)."""
    max_clients: int | None = 4096
    """Connections in all, counted the same way; the next gets 503. None: no limit."""
    max_races: int = 1000
    """Races the cache holds; messages of further races are dropped and counted."""
    delta_backlog: int = 256
    """Recent deltas kept per race, to catch up from a snapshot older than the latest delta."""
    max_line_bytes: int = 4096
    """Longest request line or header line of an opening handshake (websockets: 8 KiB)."""
    max_headers: int = 32
    """Most header lines in an opening handshake (websockets: 128). With ``max_line_bytes``
    this bounds what one unfinished handshake can make the gateway hold (128 KiB)."""
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    close_timeout_s: float = 5.0
    open_timeout_s: float = 5.0
    """How long a client has for the TLS and websocket opening handshakes (websockets: 10 s);
    an unfinished one holds its place and its buffer until then."""
    refusal_linger_s: float = 1.0
    """How long a connection refused when it was accepted (429, 503) is kept open, reading
    and discarding, so that the client reads the refusal instead of a reset."""
    reconnect_min_s: float = 0.2
    """Longest first wait before reconnecting to the broker; doubles up to ``reconnect_max_s``."""
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
    log_value_chars: int = 64
    """Longest client-supplied value (an op, a race id, an Origin) a log line repeats."""
    allow_cors: str | None = None
    """Origin sent in ``Access-Control-Allow-Origin`` on the widget's files; None sends none
    (a page on another site still loads the script and the styles, it cannot read them)."""
    metrics_port: int | None = None
    """When set, /metrics and /healthz are served on a listener of their own on
    ``metrics_host`` (0 picks a free port), and /metrics leaves the public port."""
    metrics_host: str = "127.0.0.1"
    web_dir: Path = WEB_DIR
    client_id: str | None = None
    """MQTT client id; a random one when None."""
    tls_certfile: Path | None = None
    """Certificate chain (PEM) to serve ``wss://`` and ``https://``; None serves plain text."""
    tls_keyfile: Path | None = None
    """Private key (PEM) of ``tls_certfile``; None when the key is in that file."""
