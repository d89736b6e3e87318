"""The MQTT bus's failures: one BusError for the callers, one log line, no stray traceback."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
import structlog

from broker.bus import BusError, MqttBus, connect, default_client_id
from broker.mosquitto import Mosquitto, free_port
from tests.support.wait import until


def _unhandled(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """What reaches the loop's exception handler: asyncio's "never retrieved" reports."""
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_a_refused_connection_is_a_bus_error() -> None:
    with pytest.raises(BusError):
        async with connect(f"mqtt://127.0.0.1:{free_port()}"):
            pass


async def test_a_publish_on_a_lost_connection_is_a_bus_error(mosquitto: Mosquitto) -> None:
    with pytest.raises(BusError):
        async with connect(mosquitto.url, keepalive=2) as bus:
            mosquitto.stop(kill=True)
            for _ in range(1000):  # the first may still be written before the loss is seen
                await bus.publish("chequered/v2/lost/status", b"x")


async def test_a_connection_lost_while_nobody_reads_is_logged_once(mosquitto: Mosquitto) -> None:
    """Nobody iterates the messages (a producer idle between commands, the demo after its
    end): the broken connection is logged as one line when the bus closes, and asyncio has
    no unretrieved exception to print as a traceback."""
    unhandled = _unhandled(asyncio.get_running_loop())
    with structlog.testing.capture_logs() as logs:
        async with connect(mosquitto.url, client_id="quiet-reader", keepalive=2) as bus:
            await bus.subscribe("chequered/v2/quiet/#")
            mosquitto.stop(kill=True)
            assert isinstance(bus, MqttBus)
            lost_seen = bus.client._disconnected
            await until(lost_seen.done, 30, "the client to see the loss")
        del bus, lost_seen
        gc.collect()
        await asyncio.sleep(0)  # asyncio reports unretrieved exceptions from the next turn
    lost = [entry for entry in logs if entry["event"] == "bus.connection_lost"]
    assert len(lost) == 1 and lost[0]["client_id"] == "quiet-reader", logs
    assert unhandled == []


async def test_a_lost_connection_the_caller_hears_of_is_not_logged_again(
    mosquitto: Mosquitto,
) -> None:
    """The iterator raises the loss as a BusError: the caller logs it, the bus does not."""
    with structlog.testing.capture_logs() as logs, pytest.raises(BusError):
        async with connect(mosquitto.url, keepalive=2) as bus:
            await bus.subscribe("chequered/v2/heard/#")
            mosquitto.stop(kill=True)
            async for _ in bus.messages():
                pass
    assert [entry for entry in logs if entry["event"] == "bus.connection_lost"] == []


def test_default_client_ids_cannot_be_guessed() -> None:
    ids = {default_client_id("chequered-projector") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("chequered-projector-") and len(i) == 36 for i in ids)
