"""The borrowed aiomqtt internals: the release is a tested one, and a missing name is named."""

from __future__ import annotations

import asyncio
import importlib.metadata
import socket
import tomllib

import pytest

from broker import aiomqtt_internals as internals
from broker.bus import BusError, connect
from broker.mosquitto import Mosquitto
from tests.conftest import REPO


def test_the_installed_aiomqtt_is_a_tested_release() -> None:
    installed = importlib.metadata.version("aiomqtt")
    low, high = internals.TESTED_AIOMQTT
    assert internals.is_tested(installed), (
        f"aiomqtt {installed} is outside the tested range {low} to {high} (excluded):"
        " check broker/aiomqtt_internals.py against it, then widen TESTED_AIOMQTT"
    )


def test_pyproject_pins_the_tested_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    low, high = internals.TESTED_AIOMQTT
    pin = f"aiomqtt>={low[0]}.{low[1]},<{high[0]}.{high[1]}"
    assert pin in project["project"]["dependencies"]


@pytest.mark.parametrize(
    ("text", "tested"), [("2.5.0", True), ("2.5.1", True), ("2.6.0", False), ("2.4.9", False)]
)
def test_release_numbers_are_read_by_major_and_minor(text: str, tested: bool) -> None:
    assert internals.is_tested(text) is tested


def test_the_installed_client_has_every_name_the_bus_borrows() -> None:
    internals.check_class()  # raises BusError naming what is missing


class _StandIn:
    _client = object()
    _loop = object()


def test_a_missing_attribute_is_named_in_one_clear_error() -> None:
    with pytest.raises(BusError) as caught:
        internals.check_client(_StandIn())  # type: ignore[arg-type]
    message = str(caught.value)
    assert "lacks _queue, _disconnected, _misc_task" in message
    assert f"aiomqtt {importlib.metadata.version('aiomqtt')}" in message
    assert "chequered is tested with aiomqtt 2.5" in message


def test_a_client_class_without_the_replaced_callbacks_is_refused() -> None:
    with pytest.raises(BusError, match="lacks _on_socket_open, _on_socket_register_write"):
        internals.check_class(type("Bare", (), {"_misc_loop": None}))


def test_no_module_outside_it_names_aiomqtt_or_paho_internals() -> None:
    for path in (REPO / "broker").glob("*.py"):
        if path.name == "aiomqtt_internals.py":
            continue
        text = path.read_text()
        for name in ("._client", "._disconnected", "_misc_", "_on_socket", "paho"):
            assert name not in text, f"{path.name} uses {name}: keep it in aiomqtt_internals.py"


class _PahoStandIn:
    pass


class _ClientStandIn:
    _client = _PahoStandIn()
    _loop = _queue = _disconnected = _misc_task = object()


def test_a_paho_client_without_its_packet_queue_is_named() -> None:
    with pytest.raises(BusError, match=r"paho-mqtt under aiomqtt .* lacks _out_packet"):
        internals.check_client(_ClientStandIn())  # type: ignore[arg-type]


def test_cork_is_set_and_cleared_on_tcp_and_refused_elsewhere() -> None:
    if internals.TCP_CORK is None:
        pytest.skip("no TCP_CORK on this system")
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname()) as tcp:
        assert internals.corked(tcp, True)
        assert tcp.getsockopt(socket.IPPROTO_TCP, internals.TCP_CORK) == 1
        assert internals.corked(tcp, False)
        assert tcp.getsockopt(socket.IPPROTO_TCP, internals.TCP_CORK) == 0
    left, right = socket.socketpair()
    with left, right:
        assert not internals.corked(left, True)  # a Unix socket has no TCP options
    assert not internals.corked(object(), True)


def test_buffered_reads_hand_paho_its_bytes_from_one_read_of_the_socket() -> None:
    reads: list[bytes | type[BlockingIOError]] = [b"\x30\x05hello\x30", BlockingIOError]
    reads += [b"\x05world", b""]
    asked: list[int] = []

    def read(size: int) -> bytes:
        asked.append(size)
        got = reads.pop(0)
        if not isinstance(got, bytes):
            raise got()
        return got

    buffered = internals.BufferedRecv(read)
    # One read of the socket serves a packet's command byte, its length and its body.
    assert [buffered.recv(1), buffered.recv(1), buffered.recv(5)] == [b"\x30", b"\x05", b"hello"]
    assert buffered.pending() == 1 and asked == [internals.READ_BYTES]
    assert buffered.recv(1) == b"\x30"
    with pytest.raises(BlockingIOError):  # paho's "again": nothing more yet
        buffered.recv(1)
    assert buffered.recv(1) == b"\x05"
    assert buffered.recv(10) == b"world"  # a short read, as recv() may give
    assert buffered.pending() == 0
    assert buffered.recv(1) == b""  # the connection closed
    assert len(asked) == 4


async def test_a_burst_longer_than_one_turn_is_read_whole(mosquitto: Mosquitto) -> None:
    """More packets arrive at once than one turn of the loop handles (``READ_BURST``);
    the rest are read already and the socket does not wake the loop for them again."""
    count = internals.READ_BURST * 20
    # No keepalive ping in the wait: nothing but the burst could wake the reader.
    async with connect(mosquitto.url, keepalive=60) as sub, connect(mosquitto.url) as pub:
        await sub.subscribe("chequered/v2/burst/#", qos=1)
        for i in range(count):
            pub.publish_nowait(f"chequered/v2/burst/{i}", b"x", lambda: None, qos=1)
        await pub.publish("chequered/v2/burst/end", b"", qos=1)
        seen: list[str] = []

        async def take() -> None:
            async for message in sub.messages():
                seen.append(message.topic)
                if message.topic.endswith("/end"):
                    return

        async with asyncio.timeout(10):
            await take()
        assert seen == [f"chequered/v2/burst/{i}" for i in range(count)] + [
            "chequered/v2/burst/end"
        ]
