"""TLS where certificates are given: MQTT over TLS (mqtts://) and websockets over TLS (wss://).

A throw-away CA and server certificate are made per module. Clients that
trust the CA talk; clients that do not, or that speak plain text to a TLS
port, are refused.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidMessage

from broker.bus import connect, parse_url
from broker.mosquitto import Mosquitto, free_port
from consumers.gateway.server import GatewaySettings
from tests.conftest import requires_mosquitto
from tests.support.certs import Certs, make_certs, openssl
from tests.support.gateway import running_gateway
from tests.support.standings import Ticker
from tests.support.wait import until, wait_for

pytestmark = [
    requires_mosquitto,
    pytest.mark.skipif(openssl() is None, reason="openssl is not installed"),
]

WAIT_S = 10.0
REFUSED = (aiomqtt.MqttError, ssl.SSLError, OSError)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A second CA that nobody trusts."""
    return make_certs(tmp_path_factory.mktemp("other-certs"), name="impostor")


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Mosquitto]:
    """Mosquitto with its plain loopback listener and a TLS listener beside it."""
    tls_port = free_port()
    broker = Mosquitto(
        workdir=tmp_path_factory.mktemp("mosquitto-tls"),
        extra_config=(
            f"listener {tls_port} 127.0.0.1\n"
            f"cafile {certs.ca}\n"
            f"certfile {certs.cert}\n"
            f"keyfile {certs.key}\n"
            "tls_version tlsv1.2\n"
        ),
    )
    broker.tls_port = tls_port  # type: ignore[attr-defined]
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _tls_url(broker: Mosquitto) -> str:
    return f"mqtts://127.0.0.1:{broker.tls_port}"  # type: ignore[attr-defined]


async def _round_trip(url: str, ca_file: Path, topic: str) -> list[bytes]:
    address = parse_url(url, ca_file=str(ca_file))
    async with connect(address) as sub:
        await sub.subscribe(topic)
        async with connect(address) as pub:
            await pub.publish(topic, b"over tls", retain=True)
            await pub.publish(topic, b"live", retain=False)

        async def two() -> list[bytes]:
            got: list[bytes] = []
            async for message in sub.messages():
                got.append(message.payload)
                if len(got) == 2:
                    return got
            return got

        return await asyncio.wait_for(two(), WAIT_S)


async def test_mqtt_over_tls_with_a_trusted_ca(tls_broker: Mosquitto, certs: Certs) -> None:
    got = await _round_trip(_tls_url(tls_broker), certs.ca, "chequered/v2/tls-1/status")
    assert got == [b"over tls", b"live"]


async def test_mqtt_over_tls_refuses_a_server_signed_by_an_untrusted_ca(
    tls_broker: Mosquitto, other_certs: Certs
) -> None:
    address = parse_url(_tls_url(tls_broker), ca_file=str(other_certs.ca))
    with pytest.raises(REFUSED):
        async with asyncio.timeout(WAIT_S), connect(address) as bus:
            await bus.publish("chequered/v2/tls-2/status", b"must not arrive")


def test_plain_mqtt_to_the_tls_port_is_refused(tls_broker: Mosquitto) -> None:
    """A plain-text MQTT CONNECT on the TLS port gets no CONNACK: the broker drops it."""
    port: int = tls_broker.tls_port  # type: ignore[attr-defined]
    connect_packet = bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 0])
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(connect_packet)
        try:
            answer = sock.recv(16)
        except ConnectionResetError:
            answer = b""
    assert not answer.startswith(b"\x20"), "the TLS port accepted a plain-text MQTT session"
    wait_for(lambda: "wrong version number" in tls_broker.log(), WAIT_S, "the TLS error logged")


# -- websockets over TLS -------------------------------------------------------


async def test_websockets_over_tls(mosquitto: Mosquitto, certs: Certs, other_certs: Certs) -> None:
    """The gateway with a certificate serves wss:// and https://; clients check it."""
    race = "tls-ws"
    ticker = Ticker(race)
    settings = GatewaySettings(tls_certfile=certs.cert, tls_keyfile=certs.key)
    trusted = ssl.create_default_context(cafile=str(certs.ca))
    async with (
        connect(mosquitto.url) as pub,
        running_gateway(mosquitto.url, settings) as (
            gw,
            port,
        ),
    ):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race at the gateway")
        async with ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=trusted) as ws:
            await ws.send(json.dumps({"op": "subscribe", "race": race}))
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert snapshot["type"] == "snapshot" and snapshot["seq"] == ticker.seq
            delta = await ticker.publish_step(pub)
            got = json.loads(await asyncio.wait_for(ws.recv(), WAIT_S))
            assert (got["type"], got["seq"], got["prev_seq"]) == (
                "delta",
                delta.seq,
                delta.prev_seq,
            )
        # The page and the health check over https, with the same certificate.
        health = await asyncio.to_thread(_https_get, port, "/healthz", trusted)
        assert json.loads(health)["broker_connected"] is True
        # A client that does not trust the issuer is refused at the handshake.
        impostor = ssl.create_default_context(cafile=str(other_certs.ca))
        with pytest.raises(ssl.SSLCertVerificationError):
            async with ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=impostor):
                pass
        # Plain ws:// to the TLS port gets no websocket.
        with pytest.raises((InvalidMessage, ConnectionClosed, OSError)):
            async with asyncio.timeout(WAIT_S), ws_connect(f"ws://127.0.0.1:{port}/ws"):
                pass


def _https_get(port: int, path: str, context: ssl.SSLContext) -> bytes:
    url = f"https://127.0.0.1:{port}{path}"
    with urllib.request.urlopen(url, context=context, timeout=WAIT_S) as response:
        body: bytes = response.read()
        return body
