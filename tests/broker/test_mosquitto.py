"""The private broker fixture and the bus surface, against a real Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from broker.bus import BrokerUrlError, Will, connect, parse_url, topic_matches
from broker.mosquitto import Mosquitto
from tests.conftest import REPO


async def _first(bus_messages: object, n: int) -> list[tuple[str, bytes, bool]]:
    out: list[tuple[str, bytes, bool]] = []
    async for m in bus_messages:  # type: ignore[attr-defined]
        out.append((m.topic, m.payload, m.retain))
        if len(out) == n:
            return out
    return out


async def test_retained_and_live_messages_reach_a_subscriber(mosquitto: Mosquitto) -> None:
    async with connect(mosquitto.url) as pub:
        await pub.publish("chequered/v2/r1/meta", b"facts", retain=True)
        async with connect(mosquitto.url) as sub:
            await sub.subscribe("chequered/v2/+/#")
            await pub.publish("chequered/v2/r1/events", b"e1")
            got = await asyncio.wait_for(_first(sub.messages(), 2), 10)
    assert ("chequered/v2/r1/meta", b"facts", True) in got
    assert ("chequered/v2/r1/events", b"e1", False) in got


async def test_memory_bus_has_the_same_semantics() -> None:
    will = Will("chequered/v2/r2/status", b"offline")
    async with connect("memory://t1") as pub:
        await pub.publish("chequered/v2/r2/meta", b"facts", retain=True)
        async with connect("memory://t1") as sub:
            await sub.subscribe("chequered/v2/r2/#")
            try:
                async with connect("memory://t1", will=will) as dying:
                    await dying.publish("chequered/v2/r2/events", b"e1")
                    raise RuntimeError("crash")
            except RuntimeError:
                pass
            got = await asyncio.wait_for(_first(sub.messages(), 3), 5)
    assert got == [
        ("chequered/v2/r2/meta", b"facts", True),
        ("chequered/v2/r2/events", b"e1", False),
        ("chequered/v2/r2/status", b"offline", False),
    ]


def test_topic_filters_and_urls() -> None:
    assert topic_matches("chequered/v2/+/events", "chequered/v2/r/events")
    assert not topic_matches("chequered/v2/+/events", "chequered/v2/r/standings")
    assert topic_matches("chequered/#", "chequered/v2/r/standings/delta")
    assert not topic_matches("a/+", "a/b/c")
    addr = parse_url("mqtt://user:p%40ss@example.org:1999")
    assert (addr.host, addr.port, addr.username, addr.password) == (
        "example.org",
        1999,
        "user",
        "p@ss",
    )
    assert parse_url("mqtts://h").port == 8883


@pytest.mark.parametrize(
    "url",
    [
        "mqtt://user:s3cret@host:notaport",
        "mqtt://user:s3cret@",
        "http://user:s3cret@host:1883",
        "mqtt://user:s3/c?r#et@host:99999",
    ],
)
def test_a_bad_broker_url_is_named_without_its_password(url: str) -> None:
    with pytest.raises(BrokerUrlError) as caught:
        parse_url(url)
    message = str(caught.value)
    assert "***@" in message and "s3" not in message, message


def test_the_cli_names_a_bad_broker_url_without_its_password() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chequered", "status", "some-race", "--broker",
         "mqtt://user:s3cret@127.0.0.1:notaport"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 2
    assert "bad port" in result.stderr and "s3cret" not in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
