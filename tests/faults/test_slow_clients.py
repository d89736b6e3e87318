"""A hundred websocket clients that never read: bounded gateway memory, other clients unharmed.

The gateway runs as a real process; a stand-in projector publishes a delta
every few milliseconds. Ten good clients measure delivery latency (receive
time minus the delta's emission time) first alone, then while a hundred
clients that subscribed and never read their socket sit on the same gateway.
The gateway must coalesce the stuck clients' backlogs (its queue metrics stay
within their bounds, its RSS stops growing), and the good clients' p99
latency must stay within twice that of runs without them (runs alternate).
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import statistics
import struct
from pathlib import Path

import psutil
import pytest

from broker import bus
from broker.mosquitto import Mosquitto, free_port
from chequered.contract import board
from consumers.gateway.server import GatewaySettings
from tests.conftest import requires_mosquitto
from tests.support.procs import Service, parse_metrics, scrape, wait_metrics
from tests.support.standings import Ticker
from tests.support.wait import until
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto, pytest.mark.slow]

GOOD = 10
STUCK = 100
DELTAS = 200
"""Deltas per measured run: 2,000 latency samples per run."""
ROUNDS = 5
"""Runs without, then with, the stuck clients."""
TICK_S = 0.01
PADDING = 1000
"""Bytes of team name per car: frames of a few kB, like a real field's."""
WAIT_S = 60.0
WARM_BURST = 50
"""Deltas published flat out between two looks at the coalescing counter."""
WARM_PADDING = 20_000
"""Team names while filling the stuck clients' buffers: a few large frames fill them."""
RSS_GROWTH_MAX = 16 * 1024 * 1024
"""Growth allowed while a whole phase is pushed at the stuck clients (unbounded: ~300 MB)."""
DEFAULTS = GatewaySettings()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def stuck_client(port: int, race: str) -> socket.socket:
    """A websocket that subscribes, then never reads again (a tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: not one byte of the stream after the head
        assert chunk, "handshake refused"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    payload = b'{"op": "subscribe", "race": "%s"}' % race.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked)
    return sock


async def run_phase(pub: bus.Bus, ticker: Ticker, good: list[Watcher]) -> list[float]:
    """Publish DELTAS deltas at the pace; the good clients' latencies for them."""
    marks = [len(w.latencies_s) for w in good]
    for _ in range(DELTAS):
        await ticker.publish_step(pub)
        await asyncio.sleep(TICK_S)  # the source's pace, not a synchronisation
    for watcher in good:
        async with asyncio.timeout(WAIT_S):
            await watcher.wait_seq(ticker.seq)
    return [lat for w, mark in zip(good, marks, strict=True) for lat in w.latencies_s[mark:]]


async def test_stuck_clients_cost_bounded_memory_and_no_latency(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    race = "slow-clients"
    port = free_port()
    # Every client connects from this machine: room for all of them on one address.
    gateway = Service(
        "gateway",
        ["serve", "--broker", mosquitto.url, "--port", str(port),
         "--max-per-address", str(2 * (GOOD + STUCK))],
        tmp_path,
    )  # fmt: skip
    ticker = Ticker(race, padding=PADDING)
    good = [Watcher(f"ws://127.0.0.1:{port}/ws", race, seed=i) for i in range(GOOD)]
    stuck: list[socket.socket] = []
    alone: list[float] = []
    crowded: list[float] = []
    growth: list[int] = []
    rss: list[int] = []
    largest_frame = 0

    def gateway_metrics() -> dict[str, float]:
        return parse_metrics(scrape(port))

    try:
        gateway.start()
        wait_metrics(port, WAIT_S)
        process = psutil.Process(gateway.pid)
        async with bus.connect(mosquitto.url) as pub:
            await ticker.publish_snapshot(pub)
            async with watching(*good):
                for watcher in good:
                    async with asyncio.timeout(WAIT_S):
                        await watcher.wait_connects(1)
                # Rounds of a run without, then a run with the stuck clients: drift of a
                # busy machine over the test falls on both alike.
                rss_start = process.memory_info().rss
                for _ in range(ROUNDS):
                    alone.append(p99(await run_phase(pub, ticker, good)))
                    coalesced = gateway_metrics()["chequered_gateway_coalesced_total"]
                    for _ in range(STUCK):
                        stuck.append(await asyncio.to_thread(stuck_client, port, race))
                    await until(
                        lambda: gateway_metrics()["chequered_gateway_clients"] == GOOD + STUCK,
                        WAIT_S,
                        "every client connected",
                    )
                    # Push large frames flat out until every stuck client is past its bounds
                    # (kernel buffers, transport, outbox) and has been coalesced.
                    ticker.padding = WARM_PADDING
                    largest_frame = len(board.encode(ticker.snapshot()))
                    while gateway_metrics()["chequered_gateway_coalesced_total"] < (
                        coalesced + 2 * STUCK
                    ):
                        for _ in range(WARM_BURST):
                            await ticker.publish_step(pub)
                    ticker.padding = PADDING
                    await ticker.publish_step(pub)
                    for watcher in good:
                        async with asyncio.timeout(WAIT_S):
                            await watcher.wait_seq(ticker.seq)
                    before = process.memory_info().rss
                    crowded.append(p99(await run_phase(pub, ticker, good)))
                    rss.append(process.memory_info().rss)
                    growth.append(rss[-1] - before)
                    metrics = gateway_metrics()
                    # Still connected, all of them: coalesced, not dropped.
                    assert metrics["chequered_gateway_clients"] == GOOD + STUCK
                    assert metrics["chequered_gateway_queued_frames"] <= (GOOD + STUCK) * (
                        DEFAULTS.queue_frames + 1
                    )
                    assert metrics["chequered_gateway_queued_bytes"] <= (
                        (GOOD + STUCK) * DEFAULTS.queue_bytes
                    )
                    assert (
                        metrics["chequered_gateway_queue_high_water_frames"]
                        <= DEFAULTS.queue_frames + 1
                    )
                    while stuck:
                        stuck.pop().close()
                    await until(
                        lambda: gateway_metrics()["chequered_gateway_clients"] == GOOD,
                        WAIT_S,
                        "the stuck clients gone",
                    )
        assert gateway.stop() == 0
    finally:
        for sock in stuck:
            sock.close()
        if gateway.alive:
            gateway.kill()

    # Memory: flat while a whole run is pushed at the stuck clients; and never more than
    # the stuck clients may hold: a full outbox each, plus the transport's buffer, which
    # takes a frame while it holds less than write_limit (unbounded, the large frames of
    # the warm-ups alone would have queued gigabytes).
    per_stuck_client = DEFAULTS.queue_bytes + DEFAULTS.write_limit + largest_frame
    assert max(growth) < RSS_GROWTH_MAX, growth
    assert max(rss) - rss_start < STUCK * per_stuck_client + RSS_GROWTH_MAX, (rss_start, rss)
    # The good clients: every delta, in order, and latency not hurt by the stuck ones.
    for watcher in good:
        assert watcher.gaps == 0 and watcher.connects == 1
    # Each run's p99; the typical (median) run with stuck clients against the typical
    # run without: one stall of the machine spoils one run, not the comparison.
    assert statistics.median(crowded) <= 2 * statistics.median(alone), (alone, crowded)
