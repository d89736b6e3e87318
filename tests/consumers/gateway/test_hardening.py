"""What a hostile client on the network can try, and the limit that stops each attempt.

Real Mosquitto, a real gateway, and raw sockets or http.client where a well-behaved
client library would not send what is being tested (a request head that never
ends, two Origin headers, TRACE).
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import structlog.testing
from websockets.asyncio.client import connect

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import board
from consumers.gateway.server import Gateway, GatewaySettings
from tests.conftest import requires_mosquitto
from tests.support.gateway import running_gateway
from tests.support.procs import parse_metrics
from tests.support.standings import Ticker
from tests.support.wait import until

pytestmark = [requires_mosquitto]

WAIT_S = 10.0


@asynccontextmanager
async def gateway(
    broker: Mosquitto, settings: GatewaySettings | None = None
) -> AsyncIterator[tuple[Gateway, int]]:
    async with running_gateway(broker.url, settings) as (gw, port):
        await until(lambda: gw.broker_connected, WAIT_S, "the broker connection")
        yield gw, port


def _head(port: int, *lines: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "\r\n".join(
            [
                "GET /ws HTTP/1.1",
                f"Host: 127.0.0.1:{port}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                f"Sec-WebSocket-Key: {key}",
                "Sec-WebSocket-Version: 13",
                *lines,
            ]
        )
        + "\r\n\r\n"
    ).encode()


def _status_line(sock: socket.socket) -> bytes:
    """The first line the server sends (b"" if it hangs up without a word)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _raw(port: int, payload: bytes | None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        if payload is not None:
            sock.sendall(payload)
        return _status_line(sock)


def _http(
    port: int, path: str, method: str = "GET", headers: list[tuple[str, str]] | None = None
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers or []:
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


# -- before admission ----------------------------------------------------------------


async def test_an_address_is_refused_at_accept_before_it_sends_a_byte(
    mosquitto: Mosquitto,
) -> None:
    settings = GatewaySettings(max_connections_per_address=4, open_timeout_s=WAIT_S)
    async with gateway(mosquitto, settings) as (gw, port):
        unfinished = []
        try:
            for _ in range(4):
                sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
                sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and never the rest
                unfinished.append(sock)
            await until(lambda: len(gw.by_address.get("127.0.0.1", ())) == 4, WAIT_S, "held")
            # The next one is answered before it has sent anything at all.
            assert await asyncio.to_thread(_raw, port, None) == b"HTTP/1.1 429 Too Many Requests"
            assert gw.metrics.rejected["per_address"] == 1
        finally:
            for sock in unfinished:
                sock.close()
        # Hanging up frees the places.
        await until(lambda: not gw.by_address, WAIT_S, "the places freed")
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send('{"op": "ping"}')
            assert json.loads(await ws.recv())["type"] == "pong"


async def test_handshake_heads_are_small(mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(max_headers=32, max_line_bytes=4096)
    async with gateway(mosquitto, settings) as (_gw, port):
        # Within the limits: accepted.
        fine = _head(port, *[f"X-Pad-{i}: {'p' * 100}" for i in range(20)])
        assert (await asyncio.to_thread(_raw, port, fine)).startswith(b"HTTP/1.1 101")
        # websockets would take 128 lines of 8 KiB: these are refused.
        many = _head(port, *[f"X-Pad-{i}: p" for i in range(40)])
        assert (await asyncio.to_thread(_raw, port, many)).startswith(b"HTTP/1.1 431")
        long = _head(port, "X-Pad: " + "p" * 5000)
        assert (await asyncio.to_thread(_raw, port, long)).startswith(b"HTTP/1.1 431")


# -- the handshake -------------------------------------------------------------------


async def test_two_origin_headers_are_refused_with_403(mosquitto: Mosquitto) -> None:
    for settings in (
        GatewaySettings(),
        GatewaySettings(allowed_origins=("https://a.example",)),
    ):
        with structlog.testing.capture_logs() as lines:
            async with gateway(mosquitto, settings) as (gw, port):
                twice = _head(port, "Origin: https://a.example", "Origin: https://b.example")
                assert await asyncio.to_thread(_raw, port, twice) == b"HTTP/1.1 403 Forbidden"
                assert gw.metrics.rejected == {"origin": 1}
        assert not [line for line in lines if "exc_info" in line or line["log_level"] == "error"]


# -- the websocket -------------------------------------------------------------------


async def test_json_nested_deep_is_invalid_json_and_the_connection_stays(
    mosquitto: Mosquitto,
) -> None:
    with structlog.testing.capture_logs() as lines:
        async with gateway(mosquitto) as (gw, port), connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send("[" * 2000)
            reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert (reply["type"], reply["error"]) == ("error", "invalid_json")
            await ws.send('{"op": "ping"}')
            assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["type"] == "pong"
            assert gw.metrics.errors["invalid_json"] == 1
    assert not [line for line in lines if "exc_info" in line or line["log_level"] == "error"]


async def test_log_lines_cut_what_a_client_sends(mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(log_value_chars=64)
    op = "o" * 3500
    with structlog.testing.capture_logs() as lines:
        async with gateway(mosquitto, settings) as (_gw, port):
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send(json.dumps({"op": op}))
                reply = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
                assert reply["error"] == "unknown_op"
            hostile = _head(port, "Origin: " + "h" * 3000, "Origin: x")
            assert (await asyncio.to_thread(_raw, port, hostile)).startswith(b"HTTP/1.1 403")
    errors = [line for line in lines if line["event"] == "client_error"]
    assert errors and all(len(str(line["detail"])) < 64 + 64 for line in errors)
    refused = [line for line in lines if line["event"] == "client_refused"]
    assert refused and all(len(o) < 64 + 32 for line in refused for o in line["origin"])
    assert "o" * 100 not in repr(lines) and "h" * 100 not in repr(lines)


async def test_resubscribing_in_a_loop_is_limited(mosquitto: Mosquitto) -> None:
    race = "hardening-resubscribe"
    ticker = Ticker(race, padding=200)
    settings = GatewaySettings(subscribe_rate_per_s=1.0, subscribe_burst=4)
    async with bus.connect(mosquitto.url) as pub, gateway(mosquitto, settings) as (gw, port):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race")
        async with connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
            for i in range(30):
                await ws.send(json.dumps({"op": "subscribe", "race": race, "id": i}))
            kinds = []
            for _ in range(30):
                kinds.append(json.loads(await asyncio.wait_for(ws.recv(), WAIT_S)).get("error"))
        # The burst is served (4 snapshots); at 1 a second, perhaps one more meanwhile.
        assert 4 <= kinds.count(None) <= 6
        assert kinds.count("too_many_subscribes") == 30 - kinds.count(None)
        # What went out: the few snapshots served and small errors, not 30 snapshots.
        snapshot = len(board.encode(ticker.snapshot()))
        assert gw.metrics.bytes_out.value < 7 * snapshot + 30 * 300


async def test_held_subscribes_leave_room_for_the_races_the_broker_names(
    mosquitto: Mosquitto,
) -> None:
    settings = GatewaySettings(max_races=2, startup_grace_s=WAIT_S)
    async with gateway(mosquitto, settings) as (gw, port):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for i in range(2):
                await ws.send(json.dumps({"op": "subscribe", "race": f"ghost-{i}"}))
                assert json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))["waiting"] is True
            async with bus.connect(mosquitto.url) as pub:
                for race in ("hardening-real-1", "hardening-real-2"):
                    await Ticker(race).publish_snapshot(pub)
            await until(
                lambda: {"hardening-real-1", "hardening-real-2"} <= set(gw.races),
                WAIT_S,
                "the real races in the cache",
            )
        assert gw.metrics.rejected["max_races"] == 0


@pytest.mark.parametrize(
    ("code", "label"), [(4321, "private"), (3003, "application"), (1000, "1000")]
)
async def test_client_close_codes_are_grouped(mosquitto: Mosquitto, code: int, label: str) -> None:
    async with gateway(mosquitto) as (gw, port):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.close(code)
        await until(lambda: sum(gw.metrics.closes.values()) == 1, WAIT_S, "the close counted")
        assert dict(gw.metrics.closes) == {label: 1}
        _, _, body = await asyncio.to_thread(_http, port, "/metrics")
        series = f'chequered_gateway_closes_total{{code="{label}"}}'
        assert parse_metrics(body.decode())[series] == 1


# -- the HTTP face ---------------------------------------------------------------------


def _security_headers(headers: Any) -> None:
    assert headers.get("Server") is None
    assert headers.get("Access-Control-Allow-Origin") is None
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    csp = headers["Content-Security-Policy"]
    for directive in ("default-src 'none'", "frame-ancestors 'none'", "connect-src 'self'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


async def test_every_response_carries_the_security_headers_and_no_version(
    mosquitto: Mosquitto,
) -> None:
    async with gateway(mosquitto) as (_gw, port):
        for path in ("/", "/leaderboard.js", "/leaderboard.css", "/healthz", "/metrics", "/nope"):
            status, headers, _ = await asyncio.to_thread(_http, port, path)
            assert status in (200, 404), path
            _security_headers(headers)
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            assert ws.response is not None and ws.response.headers.get("Server") is None


async def test_only_get_is_served(mosquitto: Mosquitto) -> None:
    async with gateway(mosquitto) as (gw, port):
        for method in ("POST", "PUT", "DELETE", "TRACE", "OPTIONS", "PATCH"):
            status, headers, body = await asyncio.to_thread(_http, port, "/", method)
            assert (status, headers["Allow"]) == (405, "GET"), method
            assert b"<live-leaderboard" not in body
        assert gw.metrics.http["method"] == 6


async def test_cors_only_for_the_origin_configured(mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(allow_cors="https://timing.example")
    async with gateway(mosquitto, settings) as (_gw, port):
        _, headers, _ = await asyncio.to_thread(_http, port, "/leaderboard.js")
        assert headers["Access-Control-Allow-Origin"] == "https://timing.example"


async def test_metrics_stay_off_the_public_port(mosquitto: Mosquitto) -> None:
    async with gateway(mosquitto) as (gw, port):
        # From this host: served. Through a proxy (which makes every request look local): not.
        status, _, body = await asyncio.to_thread(_http, port, "/metrics")
        assert status == 200 and b"chequered_gateway_clients" in body
        for header in ("X-Forwarded-For", "Forwarded"):
            status, _, body = await asyncio.to_thread(
                _http, port, "/metrics", "GET", [(header, "for=198.51.100.7")]
            )
            assert status == 403 and b"chequered_gateway" not in body
        assert gw.metrics.rejected["metrics"] == 2
    locked = GatewaySettings(token="s3cret")
    async with gateway(mosquitto, locked) as (_gw, port):
        assert (await asyncio.to_thread(_http, port, "/metrics"))[0] == 401
        bearer = [("Authorization", "Bearer s3cret")]
        assert (await asyncio.to_thread(_http, port, "/metrics", "GET", bearer))[0] == 200
        assert (await asyncio.to_thread(_http, port, "/metrics?token=s3cret"))[0] == 200
    apart = GatewaySettings(metrics_port=0)
    async with gateway(mosquitto, apart) as (gw, port):
        assert (await asyncio.to_thread(_http, port, "/metrics"))[0] == 404
        assert gw.metrics_port is not None and gw.metrics_port != port
        status, headers, body = await asyncio.to_thread(_http, gw.metrics_port, "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert "chequered_gateway_broker_connected" in parse_metrics(body.decode())
        health = await asyncio.to_thread(_http, gw.metrics_port, "/healthz")
        assert health[0] == 200 and json.loads(health[2])["broker_connected"] is True
        assert (await asyncio.to_thread(_http, gw.metrics_port, "/ws"))[0] == 404
        assert (await asyncio.to_thread(_http, gw.metrics_port, "/metrics", "POST"))[0] == 405


async def test_only_the_widgets_files_are_served(
    mosquitto: Mosquitto,
) -> None:
    async with gateway(mosquitto) as (_gw, port):
        for path in (
            "/../../etc/passwd",
            "/%2e%2e/%2e%2e/etc/passwd",
            "/..%2f..%2fetc%2fpasswd",
            "/leaderboard.js%00.html",
            "/leaderboard.js/.",
            "//etc/passwd",
            "/web/index.html",
            "/server.py",
        ):
            status, _, body = await asyncio.to_thread(_http, port, path)
            assert status == 404, path
            assert b"root:" not in body and b"import" not in body
