"""broker/secure/ against a real Mosquitto: passwords per role, anonymous refused, the ACL.

A refused publish is silent in MQTT 3.1.1, so each check publishes the
forbidden message, then an allowed marker from the same client: a reader that
gets the marker without the forbidden message before it proves the refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from broker.bus import Bus, connect
from broker.mosquitto import Mosquitto
from chequered.cli.live import send_command
from chequered.contract import topics
from chequered.contract.board import decode_snapshot
from chequered.contract.control import Resume, SetSpeed
from simulator.live.producer import ReplaySpec, run_producer
from tests.conftest import REPO, requires_mosquitto
from tests.support.feed import tiny_race

pytestmark = requires_mosquitto

SECURE = REPO / "broker" / "secure"
PASSWORDS = {
    "producer": "producer-dev-only",
    "controller": "controller-dev-only",
    "projector": "projector-dev-only",
    "gateway": "gateway-dev-only",
}
RACE = "secure-race"


def secure_config(workdir: Path) -> Path:
    """broker/secure/mosquitto.conf with the container's paths pointed at this checkout."""
    text = (SECURE / "mosquitto.conf").read_text()
    text = text.replace("/mosquitto/config/", f"{SECURE}/").replace(
        "/mosquitto/data/", f"{workdir}/"
    )
    path = workdir / "secure.conf"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    workdir = tmp_path_factory.mktemp("secure")
    broker = Mosquitto(workdir=workdir, base_config=secure_config(workdir))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def url(
    broker: Mosquitto, user: str | None = None, password: str | None = None, *, port: int = 0
) -> str:
    if user is None:
        return broker.url
    return f"mqtt://{user}:{password or PASSWORDS[user]}@127.0.0.1:{port or broker.port}"


def sessions(broker: Mosquitto, user: str) -> str:
    """The sessions listener, where a client's id is its user name (the projector's)."""
    assert broker.sessions_port is not None
    return url(broker, user, port=broker.sessions_port)


def test_the_passwords_file_holds_hashes_for_the_four_roles() -> None:
    lines = (SECURE / "passwords").read_text().split()
    assert [line.split(":", 1)[0] for line in lines] == list(PASSWORDS)
    assert all(line.split(":", 1)[1].startswith("$7$") for line in lines)  # PBKDF2-SHA512
    assert not any(pw in (SECURE / "passwords").read_text() for pw in PASSWORDS.values())


@pytest.mark.parametrize(
    ("user", "password"), [(None, None), ("producer", "wrong"), ("nobody", "x")]
)
async def test_anonymous_and_wrong_passwords_are_refused(
    secure_broker: Mosquitto, user: str | None, password: str | None
) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with connect(url(secure_broker, user, password)):
            pass


WRITER_OF = {
    topics.META: "producer",
    topics.EVENTS: "producer",
    topics.CONTROL: "controller",
    topics.STANDINGS: "projector",
}
READER_OF = {
    topics.META: "gateway",
    topics.EVENTS: "projector",
    topics.CONTROL: "producer",
    topics.STANDINGS: "gateway",
}


async def first_payload(bus: Bus, topic: str) -> bytes:
    async def read() -> bytes:
        async for message in bus.messages():
            if message.topic == topic:
                return message.payload
        raise AssertionError("connection closed")

    return await asyncio.wait_for(read(), 10)


@pytest.mark.parametrize(
    ("writer", "leaf"),
    [
        ("controller", topics.EVENTS),
        ("projector", topics.EVENTS),
        ("gateway", topics.EVENTS),
        ("gateway", topics.META),
        ("gateway", topics.STANDINGS),
        ("producer", topics.STANDINGS),
        ("producer", topics.CONTROL),
        ("gateway", topics.CONTROL),
    ],
)
async def test_each_role_writes_only_its_own_topics(
    secure_broker: Mosquitto, writer: str, leaf: str
) -> None:
    topic = topics.topic(f"acl-{writer}", leaf)
    async with connect(url(secure_broker, READER_OF[leaf])) as reader:
        await reader.subscribe(topic)
        async with connect(url(secure_broker, writer)) as forger:
            await forger.publish(topic, b"forged")  # acknowledged, and dropped
        async with connect(url(secure_broker, WRITER_OF[leaf])) as rightful:
            await rightful.publish(topic, b"genuine")
        # The forged message was handled before the genuine one was even sent:
        # had the broker let it through, the reader would get it first.
        assert await first_payload(reader, topic) == b"genuine"


async def test_readers_see_only_what_their_role_may_read(secure_broker: Mosquitto) -> None:
    race = "acl-read"
    async with (
        connect(url(secure_broker, "gateway")) as gateway,
        connect(url(secure_broker, "producer")) as producer,
    ):
        # The gateway asks for the events; the broker gives it nothing it may not read.
        await gateway.subscribe(topics.topic(race, topics.EVENTS))
        await gateway.subscribe(topics.topic(race, topics.STATUS))
        await producer.publish(topics.topic(race, topics.EVENTS), b"event")
        await producer.publish(topics.topic(race, topics.STATUS), b"status")
        # The first message it gets is the status, published after the event.
        first = await asyncio.wait_for(anext(aiter(gateway.messages())), 10)
        assert (first.topic, first.payload) == (topics.topic(race, topics.STATUS), b"status")


async def test_the_live_feed_runs_under_the_acl(secure_broker: Mosquitto) -> None:
    """Producer, projector, controller and a gateway reader, each with its own user."""
    from consumers.projector.service import run_projector

    timeline = tiny_race(RACE, cars=3, laps=4)
    controller = url(secure_broker, "controller")
    stop, ready = asyncio.Event(), asyncio.Event()
    projector = asyncio.create_task(
        run_projector(sessions(secure_broker, "projector"), stop=stop, ready=ready)
    )  # fmt: skip
    await asyncio.wait_for(ready.wait(), 10)
    async with connect(url(secure_broker, "gateway")) as gateway:
        await gateway.subscribe(topics.topic(RACE, topics.STANDINGS))
        spec = ReplaySpec(RACE, timeline, speed=1, paused=True)
        producer = asyncio.create_task(
            run_producer(url(secure_broker, "producer"), [spec], stop=stop)
        )
        status = await send_command(controller, RACE, SetSpeed(id="max", speed=None), 10)
        assert status.reply is not None and status.reply.ok and status.state == "paused"
        status = await send_command(controller, RACE, Resume(id="go"), 10)
        assert status.reply is not None and status.reply.ok

        async def final_seq() -> int:
            async for message in gateway.messages():
                snapshot = decode_snapshot(message.payload)
                if snapshot.session.finished:
                    return snapshot.seq
            return 0

        assert await asyncio.wait_for(final_seq(), 30) >= len(timeline)
    stop.set()
    await asyncio.wait_for(asyncio.gather(producer, projector), 10)
