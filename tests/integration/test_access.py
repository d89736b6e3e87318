"""Access control: who may write and read what on MQTT, and who may open the websocket.

MQTT: the secure broker configuration (broker/secure/) with one extra,
test-only superuser who reads and writes everything, so that what the broker
lets through can be seen. Every role publishes to every topic of a race and
subscribes to all of them; the observer proves which writes landed and which
reads were served, against the table of roles in the design (written out here,
not read from the ACL: a wrong ACL must fail the test).

Websocket: the gateway's Origin allow-list, optional token and per-address
limit, and the fact that nothing a browser sends reaches the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator

import aiomqtt
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from broker.bus import Bus, connect
from broker.mosquitto import Mosquitto
from chequered.contract import topics
from consumers.gateway.server import GatewaySettings
from tests.conftest import REPO, requires_mosquitto
from tests.support.gateway import running_gateway
from tests.support.standings import Ticker
from tests.support.wait import until

pytestmark = requires_mosquitto

SECURE = REPO / "broker" / "secure"
PASSWORDS = {
    "producer": "producer-dev-only",
    "controller": "controller-dev-only",
    "projector": "projector-dev-only",
    "gateway": "gateway-dev-only",
}
OBSERVER = ("observer", "observer-test-only")
WAIT_S = 10.0

LEAVES = [
    topics.META,
    topics.EVENTS,
    topics.STATUS,
    topics.CONTROL,
    topics.STANDINGS,
    topics.STANDINGS_DELTA,
    topics.DEAD_LETTER,
]
# The roles of the design: each writes only what it owns, reads only what it needs.
MAY_WRITE = {
    "producer": {topics.META, topics.EVENTS, topics.STATUS},
    "controller": {topics.CONTROL},
    "projector": {topics.STANDINGS, topics.STANDINGS_DELTA, topics.DEAD_LETTER, topics.CONTROL},
    "gateway": set(),
}
MAY_READ = {
    "producer": {topics.CONTROL},
    "controller": {topics.STATUS},
    "projector": {topics.EVENTS, topics.META, topics.STATUS},
    "gateway": {topics.STANDINGS, topics.STANDINGS_DELTA, topics.META, topics.STATUS},
}


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """broker/secure/ as shipped, plus the test's observer (in copies of passwords and ACL)."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    workdir = tmp_path_factory.mktemp("secure-access")
    passwords = workdir / "passwords"
    shutil.copy(SECURE / "passwords", passwords)
    subprocess.run(
        ["mosquitto_passwd", "-b", str(passwords), *OBSERVER], check=True, capture_output=True
    )
    acl = workdir / "acl"
    acl.write_text(
        (SECURE / "acl").read_text() + f"\nuser {OBSERVER[0]}\ntopic readwrite chequered/#\n"
    )
    text = (SECURE / "mosquitto.conf").read_text()
    text = text.replace("/mosquitto/config/passwords", str(passwords))
    text = text.replace("/mosquitto/config/acl", str(acl))
    text = text.replace("/mosquitto/data/", f"{workdir}/")
    assert str(passwords) in text and str(acl) in text, "the secure config moved its files"
    conf = workdir / "secure.conf"
    conf.write_text(text)
    broker = Mosquitto(workdir=workdir, base_config=conf).start()
    try:
        yield broker
    finally:
        broker.stop()


def url(broker: Mosquitto, user: str | None, password: str | None = None) -> str:
    if user is None:
        return broker.url
    if user == OBSERVER[0] and password is None:
        password = OBSERVER[1]
    return f"mqtt://{user}:{password or PASSWORDS[user]}@127.0.0.1:{broker.port}"


async def _collect_until(bus: Bus, marker_topic: str, marker: bytes) -> list[tuple[str, bytes]]:
    """Messages received up to and including the marker (same publisher: it comes last)."""
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(WAIT_S):
        async for message in bus.messages():
            got.append((message.topic, message.payload))
            if (message.topic, message.payload) == (marker_topic, marker):
                return got
    raise AssertionError("connection closed")


# -- MQTT ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password"),
    [(None, None), ("producer", "wrong"), ("gateway", ""), ("nobody", "x"), ("observer", "x")],
)
async def test_no_connection_without_the_right_password(
    secure_broker: Mosquitto, user: str | None, password: str | None
) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with asyncio.timeout(WAIT_S), connect(url(secure_broker, user, password or "x")):
            pass
    await until(
        lambda: "not authorised" in secure_broker.log() or "Bad username" in secure_broker.log(),
        WAIT_S,
        "the refusal in the broker log",
    )


@pytest.mark.parametrize("role", sorted(PASSWORDS))
async def test_each_role_writes_exactly_its_own_topics(secure_broker: Mosquitto, role: str) -> None:
    race = f"write-{role}"
    marker_topic = topics.topic(race, "marker")
    async with connect(url(secure_broker, OBSERVER[0])) as observer:
        await observer.subscribe(topics.topic(race, "#"))
        for leaf in LEAVES:
            # One connection per attempt: Mosquitto 2.0 with `max_queued_messages 0`
            # acknowledges a denied QoS 1 publish, then drops the connection.
            with contextlib.suppress(aiomqtt.MqttError):
                async with connect(url(secure_broker, role)) as client:
                    await client.publish(topics.topic(race, leaf), f"{role}:{leaf}".encode())
        # Sent after the role disconnected: everything the role published came before.
        async with connect(url(secure_broker, OBSERVER[0])) as marker:
            await marker.publish(marker_topic, b"end")
        got = await _collect_until(observer, marker_topic, b"end")
    landed = {topics.leaf_of(topic) for topic, _ in got} - {"marker"}
    assert landed == MAY_WRITE[role]


@pytest.mark.parametrize("role", sorted(PASSWORDS))
async def test_each_role_reads_exactly_its_own_topics(secure_broker: Mosquitto, role: str) -> None:
    race = f"read-{role}"
    async with connect(url(secure_broker, role)) as client:
        # Both ways of asking: each topic by name, and a wildcard over everything.
        for leaf in LEAVES:
            await client.subscribe(topics.topic(race, leaf))
        await client.subscribe("chequered/#")
        await client.subscribe("#")
        readable = [leaf for leaf in LEAVES if leaf in MAY_READ[role]]
        assert readable, role
        end = topics.topic(race, readable[-1])
        async with connect(url(secure_broker, OBSERVER[0])) as writer:
            for leaf in LEAVES:
                await writer.publish(topics.topic(race, leaf), leaf.encode())
            # Then once more on a topic the role may read: once that arrives,
            # everything published before it has been delivered or withheld.
            await writer.publish(end, b"end")
        got = await _collect_until(client, end, b"end")
        got.remove((end, b"end"))
    assert {topics.leaf_of(topic) for topic, _ in got} == MAY_READ[role]
    # Overlapping subscriptions may deliver a message more than once, never a forbidden one.
    assert {payload.decode() for _, payload in got} == MAY_READ[role]


# -- websocket -----------------------------------------------------------------

ORIGIN = "https://timing.example.org"


async def _status_of(url: str, origin: str | None = None) -> int:
    """HTTP status of a websocket handshake: 101 when accepted."""
    headers = {"Origin": origin} if origin else None
    try:
        async with asyncio.timeout(WAIT_S), ws_connect(url, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_origin_allow_list(mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(allowed_origins=(ORIGIN,), allow_missing_origin=False)
    async with running_gateway(mosquitto.url, settings) as (gw, port):
        ws = f"ws://127.0.0.1:{port}/ws"
        assert await _status_of(ws, ORIGIN) == 101
        assert await _status_of(ws, "https://evil.example") == 403
        assert await _status_of(ws, "http://timing.example.org") == 403  # scheme matters
        assert await _status_of(ws, ORIGIN + ".evil.example") == 403
        assert await _status_of(ws, "null") == 403
        assert await _status_of(ws) == 403  # no Origin at all
        assert gw.metrics.rejected["origin"] == 5
    lenient = GatewaySettings(allowed_origins=(ORIGIN,), allow_missing_origin=True)
    async with running_gateway(mosquitto.url, lenient) as (_gw, port):
        ws = f"ws://127.0.0.1:{port}/ws"
        assert await _status_of(ws) == 101  # a non-browser client
        assert await _status_of(ws, "https://evil.example") == 403


async def test_token(mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(token="s3cret-token")
    async with running_gateway(mosquitto.url, settings) as (gw, port):
        base = f"ws://127.0.0.1:{port}/ws"
        assert await _status_of(f"{base}?token=s3cret-token") == 101
        assert await _status_of(base) == 401
        assert await _status_of(f"{base}?token=") == 401
        assert await _status_of(f"{base}?token=s3cret-toke") == 401
        assert await _status_of(f"{base}?token=s3cret-token-and-more") == 401
        assert await _status_of(f"{base}?Token=s3cret-token") == 401
        assert gw.metrics.rejected["token"] == 5


async def test_connections_per_address_are_limited(mosquitto: Mosquitto) -> None:
    limit = 3
    settings = GatewaySettings(max_connections_per_address=limit)
    async with running_gateway(mosquitto.url, settings) as (gw, port):
        ws = f"ws://127.0.0.1:{port}/ws"
        held = [await ws_connect(ws) for _ in range(limit)]
        try:
            assert await _status_of(ws) == 429
            assert await _status_of(ws) == 429
            assert gw.metrics.rejected["per_address"] == 2
            # One leaves: its place is free again.
            await held.pop().close()
            await until(
                lambda: len(gw.by_address.get("127.0.0.1", ())) < limit, WAIT_S, "the slot freed"
            )
            held.append(await ws_connect(ws))
            assert await _status_of(ws) == 429
        finally:
            for conn in held:
                await conn.close()


async def test_browsers_cannot_write_to_the_broker(mosquitto: Mosquitto) -> None:
    """Whatever a client sends, nothing reaches MQTT: the gateway only reads."""
    race = "read-only"
    ticker = Ticker(race)
    async with (
        connect(mosquitto.url) as observer,
        connect(mosquitto.url) as pub,
        running_gateway(mosquitto.url) as (gw, port),
    ):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race at the gateway")
        await observer.subscribe("#")
        attempts = [
            {"op": "publish", "topic": topics.topic(race, topics.EVENTS), "payload": "x"},
            {"op": "control", "race": race, "cmd": "pause"},
            {"op": "pause", "race": race},
            {"op": "seek", "race": race, "t_ms": 0},
            {"cmd": "pause", "race": race},
            {"kind": "lap", "race": race, "seq": 99, "t_ms": 1, "car": "6", "lap": 1},
            {"op": "subscribe", "race": race, "retain": True, "payload": "x"},
            {"op": "subscribe", "race": "+"},
            {"op": "subscribe", "race": "#"},
        ]
        async with ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
            for attempt in attempts:
                await ws.send(json.dumps(attempt))
            replies = []
            async with asyncio.timeout(WAIT_S):
                while len(replies) < len(attempts):
                    message = json.loads(await ws.recv())
                    if message["type"] in ("error", "snapshot"):
                        replies.append(message)
        assert [r.get("error") for r in replies[:6]] == ["unknown_op"] * 4 + ["missing_op"] * 2
        marker = topics.topic(race, "marker")
        await pub.publish(marker, b"end")
        got = await _collect_until(observer, marker, b"end")
    # Only the test's own publishes (the retained snapshot, the marker) were seen.
    assert {topic for topic, _ in got} <= {topics.topic(race, topics.STANDINGS), marker}
