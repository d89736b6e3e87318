"""Hostile and broken websocket clients: clear errors, proper close codes, no harm to others.

While each attack runs, a well-behaved client follows a race whose standings
change every few milliseconds; it must see one snapshot and then every delta
in an unbroken chain, ending on exactly the board that was published.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from broker import bus
from broker.mosquitto import Mosquitto
from consumers.gateway.server import Gateway, GatewaySettings
from tests.conftest import requires_mosquitto
from tests.support.gateway import running_gateway
from tests.support.standings import Ticker
from tests.support.wait import until
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto]

WAIT_S = 10.0
TICK_S = 0.005
"""Pace of the stand-in projector: one delta every 5 ms while an attack runs."""
MIN_DELTAS = 20
"""Deltas the good client must see during an attack for the test to mean anything."""
SETTINGS = GatewaySettings(
    max_size=4096, rate_per_s=20.0, burst=40, max_subscriptions=4, startup_grace_s=0.0
)
"""No startup grace: a race that does not exist is refused at once (the grace, which holds
such a subscribe for a while, has its own test in test_gateway.py)."""


@asynccontextmanager
async def scene(
    broker: Mosquitto, race: str
) -> AsyncIterator[tuple[Gateway, str, Watcher, Ticker]]:
    """A gateway, a race changing every tick, and a good client following it.

    On exit the ticking stops and the good client must hold the last board
    published, reached by contiguous deltas from a single snapshot.
    """
    ticker = Ticker(race)
    async with bus.connect(broker.url) as pub, running_gateway(broker.url, SETTINGS) as (gw, port):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races and gw.races[race].snapshot, WAIT_S, "the race")
        url = f"ws://127.0.0.1:{port}/ws"
        good = Watcher(url, race)
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                await ticker.publish_step(pub)
                await asyncio.sleep(TICK_S)  # pacing of the source, not synchronisation

        async with watching(good):
            async with asyncio.timeout(WAIT_S):
                await good.wait_connects(1)
            start_seq = good.seq
            assert start_seq == ticker.seq
            ticking = asyncio.create_task(tick())
            try:
                yield gw, url, good, ticker
            finally:
                stop.set()
                await ticking
            async with asyncio.timeout(WAIT_S):
                await good.wait_seq(ticker.seq)
        final = ticker.snapshot()
    assert ticker.seq - start_seq >= MIN_DELTAS, "the attack was over before the race moved"
    assert good.gaps == 0, "the good client saw a broken delta chain"
    assert good.snapshots == 1 and good.connects == 1, "the good client had to start over"
    assert good.deltas == final.seq - start_seq, "the good client missed deltas"
    assert good.errors == []
    assert good.view is not None
    assert (good.view.seq, good.view.cars, good.view.session) == (
        final.seq,
        final.cars,
        final.session,
    )


async def _reply(ws: ClientConnection) -> dict[str, Any]:
    """The next reply or error frame (standings frames of other races are skipped)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message.get("type") not in ("snapshot", "delta", "status"):
                return message


async def _close_code(ws: ClientConnection) -> int | None:
    async with asyncio.timeout(WAIT_S):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
    return ws.close_code


async def _while_ticking(ticker: Ticker, attack: Callable[[], Awaitable[None]]) -> None:
    """Run the attack, and go on attacking until the race has moved on meanwhile."""
    start = ticker.seq
    await attack()
    await until(lambda: ticker.seq - start >= MIN_DELTAS, WAIT_S, "the race to move")


GARBAGE: list[tuple[str, str]] = [
    ("not json at all", "invalid_json"),
    ('{"op": "subscribe", "race": ', "invalid_json"),
    ("[1, 2, 3]", "invalid_message"),
    ('"subscribe"', "invalid_message"),
    ("{}", "missing_op"),
    ('{"op": "fly"}', "unknown_op"),
    ('{"op": "publish", "race": "x", "standings": {}}', "unknown_op"),
    ('{"op": "subscribe"}', "missing_race"),
    ('{"op": "subscribe", "race": 5}', "invalid_field"),
    ('{"op": "subscribe", "race": ""}', "invalid_field"),
    ('{"op": "subscribe", "race": "' + "r" * 500 + '"}', "invalid_field"),
    ('{"op": "subscribe", "race": "no-such-race"}', "unknown_race"),
    ('{"op": "subscribe", "race": "../../etc/passwd"}', "unknown_race"),
    ('{"op": "subscribe", "race": "chequered/v2/#"}', "unknown_race"),
    ('{"op": "unsubscribe", "race": "never-subscribed"}', "not_subscribed"),
    ('{"op": "ping", "id": {"nested": true}}', "invalid_field"),
    ('{"op": "ping", "id": "' + "i" * 100 + '"}', "invalid_field"),
]


async def test_garbage_frames_get_named_errors_and_the_connection_lives_on(
    mosquitto: Mosquitto,
) -> None:
    async with scene(mosquitto, "hostile-garbage") as (gw, url, _good, ticker):
        async with connect(url) as ws:

            async def attack() -> None:
                for frame, code in GARBAGE:
                    await ws.send(frame)
                    reply = await _reply(ws)
                    assert reply["type"] == "error", frame
                    assert reply["error"] == code, (frame, reply)
                    assert isinstance(reply.get("detail"), str) and reply["detail"], reply
                # Still served afterwards: an id is echoed, a known race subscribes.
                await ws.send('{"op": "ping", "id": "after-garbage"}')
                pong = await _reply(ws)
                assert (pong["type"], pong["id"]) == ("pong", "after-garbage")

            await _while_ticking(ticker, attack)
            await ws.send(json.dumps({"op": "subscribe", "race": ticker.race, "class": "XX"}))
            reply = await _reply(ws)
            assert reply["error"] == "unknown_class" and "GT" in reply["detail"]
            await ws.send(json.dumps({"op": "subscribe", "race": ticker.race}))
            async with asyncio.timeout(WAIT_S):
                first = json.loads(await ws.recv())
            assert first["type"] == "snapshot" and first["race"] == ticker.race
        for _frame, code in GARBAGE:
            assert gw.metrics.errors[code] >= 1, code


async def test_binary_frames_are_refused_with_an_error(mosquitto: Mosquitto) -> None:
    async with scene(mosquitto, "hostile-binary") as (gw, url, _good, ticker):
        async with connect(url) as ws:

            async def attack() -> None:
                for payload in (b"\x00\xff\x00", b'{"op": "ping"}', os.urandom(512)):
                    await ws.send(payload)
                    reply = await _reply(ws)
                    assert reply["type"] == "error" and reply["error"] == "binary_frame"
                    assert "text" in reply["detail"]

            await _while_ticking(ticker, attack)
        assert gw.metrics.errors["binary_frame"] == 3


async def test_an_oversized_frame_closes_with_1009(mosquitto: Mosquitto) -> None:
    async with scene(mosquitto, "hostile-big") as (gw, url, _good, ticker):

        async def attack() -> None:
            for size in (SETTINGS.max_size + 1, 1 << 20):
                async with connect(url, max_size=None) as ws:
                    await ws.send(json.dumps({"op": "ping", "pad": "x" * size}))
                    assert await _close_code(ws) == 1009
            # Just under the limit is fine.
            async with connect(url) as ws:
                pad = "x" * (SETTINGS.max_size - 40)
                await ws.send(json.dumps({"op": "ping", "id": 1, "pad": pad}))
                assert (await _reply(ws))["type"] == "pong"

        await _while_ticking(ticker, attack)
        await until(lambda: gw.metrics.closes["1009"] >= 2, WAIT_S, "the 1009 closes counted")


async def test_a_flood_closes_with_1008(mosquitto: Mosquitto) -> None:
    async with scene(mosquitto, "hostile-flood") as (gw, url, _good, ticker):

        async def attack() -> None:
            for _ in range(3):
                async with connect(url) as ws:
                    sent = 0
                    with pytest.raises(ConnectionClosed):
                        for _ in range(5000):
                            await ws.send('{"op": "ping"}')
                            sent += 1
                        while True:
                            await ws.recv()
                    assert ws.close_code == 1008, ws.close_code
                    assert ws.close_reason and "rate" in ws.close_reason
                    assert sent > SETTINGS.burst

        await _while_ticking(ticker, attack)
        await until(lambda: gw.metrics.errors["rate_limited"] >= 3, WAIT_S, "floods counted")


async def test_subscriptions_to_races_that_do_not_exist(mosquitto: Mosquitto) -> None:
    async with scene(mosquitto, "hostile-unknown") as (gw, url, _good, ticker):
        async with connect(url) as ws:

            async def attack() -> None:
                for i in range(SETTINGS.burst // 2):
                    await ws.send(json.dumps({"op": "subscribe", "race": f"ghost-{i}", "id": i}))
                    reply = await _reply(ws)
                    assert reply == {
                        "type": "error",
                        "id": i,
                        "error": "unknown_race",
                        "detail": f"no race 'ghost-{i}'; `list` names the races",
                    }
                # Nothing was created for them: the race list holds the real race only.
                await ws.send('{"op": "list"}')
                races = await _reply(ws)
                assert [r["race"] for r in races["races"]] == [ticker.race]

            await _while_ticking(ticker, attack)
        assert set(gw.races) == {ticker.race}


async def test_broken_websocket_framing_closes_the_connection(mosquitto: Mosquitto) -> None:
    """Below the JSON layer: unmasked frames, bad UTF-8, unknown opcodes, junk instead of HTTP."""
    async with scene(mosquitto, "hostile-framing") as (gw, url, _good, ticker):
        port = int(url.split(":")[2].split("/")[0])

        async def attack() -> None:
            cases = [
                (b"\x81\x05hello", 1002),  # unmasked client frame
                (_masked(0x1, b"\xff\xfe\xfd"), 1007),  # text frame, not UTF-8
                (_masked(0x3, b"??"), 1002),  # reserved opcode
                (_masked(0x9, b"p" * 200), 1002),  # control frame over 125 bytes
            ]
            for frame, code in cases:
                assert await asyncio.to_thread(_raw_session, port, frame) == code
            # Not even HTTP: the server hangs up, nothing else happens.
            assert await asyncio.to_thread(_raw_junk, port) in (b"", b"HTTP/1.1 400")

        await _while_ticking(ticker, attack)
        assert gw.metrics.closes["1002"] >= 3


# -- raw sockets ---------------------------------------------------------------


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    if len(payload) < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload))
    else:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, len(payload))
    return head + mask + body


def _raw_session(port: int, frame: bytes) -> int | None:
    """Open a websocket by hand, send one frame, return the close code the server sends."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(
            (
                "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            assert chunk, "handshake not answered"
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head
        sock.sendall(frame)
        buf = rest
        while True:
            while len(buf) < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = struct.unpack("!H", buf[2:4])[0], 4
            while len(buf) < offset + length:
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                buf += chunk
            payload, buf = buf[offset : offset + length], buf[offset + length :]
            if opcode == 0x8:
                code: int = struct.unpack("!H", payload[:2])[0]
                return code


def _raw_junk(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00" + os.urandom(300) + b"\r\n\r\n")
        try:
            return sock.recv(12)
        except ConnectionResetError:
            return b""
