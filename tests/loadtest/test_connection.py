"""The load client's connection: websockets' sans-I/O protocol, in memory and against the gateway.

In memory, a ``Session`` talks to websockets' own ``ServerProtocol`` (plain
function calls, no sockets). Against the real gateway (Mosquitto, the gateway
in this test's loop, standings published as the projector does), a worker's
clients read every delta, keep their chains, answer pings, and count the
gateway's refusals as failed clients.
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from broker import bus
from broker.mosquitto import Mosquitto
from consumers.gateway.server import GatewaySettings
from loadtest.client import (
    Assignment,
    ClientState,
    Recorder,
    Worker,
    WorkerConfig,
    run_lean_client,
)
from loadtest.connection import Session
from loadtest.stats import WorkerTick, tick_decoder
from tests.conftest import requires_mosquitto
from tests.support.gateway import running_gateway
from tests.support.standings import Ticker
from tests.support.wait import until

WAIT_S = 10.0
PING_TIMEOUT_S = 0.2

# -- in memory: a Session against websockets' server protocol -----------------------


def _pair(**kwargs: object) -> tuple[Session, ServerProtocol, list[bytes]]:
    """An open session and the server it handshook with; the list gets its messages."""
    got: list[bytes] = []
    session = Session("ws://example.test/ws", lambda payload, now: got.append(payload), **kwargs)  # type: ignore[arg-type]
    server = ServerProtocol()
    for data in session.writes():
        server.receive_data(data)
    [request] = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    _to_client(server, session)
    assert session.open and not session.failure()
    return session, server, got


def _to_client(server: ServerProtocol, session: Session, *, one_read: bool = True) -> bool:
    data = b"".join(server.data_to_send())
    if one_read:
        return session.receive(data, 1.0)
    plain = True
    for i in range(len(data)):  # byte by byte: every frame split at every place
        plain = session.receive(data[i : i + 1], 1.0) and plain
    return plain


def _to_server(session: Session, server: ServerProtocol) -> list[Frame]:
    for data in session.writes():
        server.receive_data(data)
    return [e for e in server.events_received() if isinstance(e, Frame)]


def assert_closed(session: Session, server: ServerProtocol, got: list[bytes], code: int) -> None:
    """The session ends, handed on nothing, and sends the server a close with ``code``."""
    assert session.closing and got == []
    [close] = _to_server(session, server)
    assert Close.parse(close.data).code == code


@pytest.mark.parametrize("one_read", [True, False])
def test_a_session_hands_on_every_message_whole(one_read: bool) -> None:
    session, server, got = _pair()
    server.send_text(b'{"seq": 1}')
    server.send_binary(b"\x00" * 70_000)  # a 64-bit length
    server.send_text(b"frag", fin=False)
    server.send_continuation(b"men", fin=False)
    server.send_continuation(b"ted", fin=True)
    server.send_text(b"x" * 300)  # a 16-bit length
    assert _to_client(server, session, one_read=one_read)  # messages only: nothing owed
    assert got == [b'{"seq": 1}', b"\x00" * 70_000, b"fragmented", b"x" * 300]
    assert session.writes() == []


def test_a_session_answers_a_ping_with_its_payload_and_sends_masked_text() -> None:
    session, server, got = _pair()
    server.send_ping(b"are you there")
    server.send_text(b"after")
    assert not _to_client(server, session)  # a ping: an answer is owed
    session.send_text(b'{"op": "subscribe"}')
    frames = _to_server(session, server)  # the server refuses unmasked frames
    assert [(f.opcode, f.data) for f in frames] == [
        (Opcode.PONG, b"are you there"),
        (Opcode.TEXT, b'{"op": "subscribe"}'),
    ]
    assert got == [b"after"]


def test_a_session_answers_the_servers_close_and_reads_nothing_after_it() -> None:
    session, server, got = _pair()
    server.send_close(1001, "going away")
    assert not _to_client(server, session)
    assert session.closing
    # A frame after the close: websockets' server would not send one; a broken one might.
    session.receive(Frame(Opcode.TEXT, b"too late").serialize(mask=False), 1.0)
    assert got == []
    [close] = _to_server(session, server)
    assert close.opcode is Opcode.CLOSE
    assert Close.parse(close.data).code == 1001  # echoed


def test_a_session_refuses_an_oversized_or_masked_frame() -> None:
    session, server, got = _pair(max_size=100)
    server.send_text(b"x" * 101)
    assert not _to_client(server, session)
    assert_closed(session, server, got, 1009)

    session, _, got = _pair()
    masked = Frame(Opcode.TEXT, b"masked").serialize(mask=True)
    assert not session.receive(masked, 1.0)
    assert session.closing and got == []


def test_a_refused_handshake_names_the_status() -> None:
    session = Session("ws://example.test/ws", lambda payload, now: None)
    server = ServerProtocol()
    for data in session.writes():
        server.receive_data(data)
    server.send_response(server.reject(429, "Too many connections\n"))
    session.receive(b"".join(server.data_to_send()), 1.0)
    assert not session.open
    assert session.failure() == "handshake refused: HTTP/1.1 429 Too Many Requests"


def _deflate_pair(**factory: object) -> tuple[Session, ServerProtocol, list[bytes]]:
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    got: list[bytes] = []
    session = Session(
        "ws://example.test/ws", lambda p, now: got.append(p), compression=True, max_size=20_000
    )
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory(**factory)])  # type: ignore[arg-type]
    for data in session.writes():
        server.receive_data(data)
    [request] = server.events_received()
    server.send_response(server.accept(request))  # type: ignore[arg-type]
    _to_client(server, session)
    assert session.open and session.frames is not None, "the lean reader inflates"
    return session, server, got


@pytest.mark.parametrize("one_read", [True, False])
@pytest.mark.parametrize(
    "factory",
    [{}, {"server_no_context_takeover": True}, {"server_max_window_bits": 9}],
    ids=["takeover", "no-takeover", "window-9"],
)
def test_a_deflate_session_reads_compressed_messages(
    factory: dict[str, object], one_read: bool
) -> None:
    session, server, got = _deflate_pair(**factory)
    messages = [b'{"type": "delta", "seq": %d}' % i * 40 for i in range(5)]
    for message in messages[:3]:
        server.send_text(message)
    wire = server.data_to_send()
    assert sum(map(len, wire)) < sum(map(len, messages[:3])) / 4  # compressed on the wire
    session.receive(b"".join(wire), 1.0)
    server.send_text(b"plain", fin=False)  # fragmented: RSV1 on the first frame only
    server.send_continuation(messages[3], fin=True)
    server.send_text(messages[4])
    _to_client(server, session, one_read=one_read)
    assert got == [*messages[:3], b"plain" + messages[3], messages[4]]
    assert server.state is State.OPEN and not session.closing


def test_a_deflate_session_refuses_a_message_that_inflates_too_big() -> None:
    session, server, got = _deflate_pair()
    server.send_text(b"x" * 30_000)  # a few dozen bytes on the wire
    assert not _to_client(server, session)
    assert_closed(session, server, got, 1009)


def test_a_compressed_message_that_does_not_inflate_is_a_protocol_error() -> None:
    session, server, got = _deflate_pair()
    payload = b"\xff\xfe not deflate"
    assert not session.receive(bytes((0xC1, len(payload))) + payload, 1.0)
    assert_closed(session, server, got, 1002)


def test_rsv1_without_permessage_deflate_is_a_protocol_error() -> None:
    session, server, got = _pair()
    payload = b"not compressed"
    frame = bytes((0xC1, len(payload))) + payload  # FIN, RSV1, text; unmasked
    assert not session.receive(frame, 1.0)
    assert_closed(session, server, got, 1002)


# -- against the real gateway ---------------------------------------------------------


@requires_mosquitto
@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
async def test_clients_read_every_delta_of_the_real_gateway(
    mosquitto: Mosquitto, compression: bool
) -> None:
    race = "conn-live"
    ticker = Ticker(race, padding=100)
    settings = GatewaySettings(ping_interval_s=0.05, ping_timeout_s=PING_TIMEOUT_S)
    recorder = Recorder()
    states = [ClientState(Assignment(i, race)) for i in range(4)]
    stop = asyncio.Event()
    async with (
        bus.connect(mosquitto.url) as pub,
        running_gateway(mosquitto.url, settings) as (
            gw,
            port,
        ),
    ):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race")
        url = f"ws://127.0.0.1:{port}/ws"
        clients = [
            asyncio.ensure_future(
                run_lean_client(s, recorder, url, stop=stop, compression=compression)
            )
            for s in states
        ]
        await until(lambda: all(s.snapshots for s in states), WAIT_S, "every snapshot")
        first = ticker.seq
        for _ in range(30):
            await ticker.publish_step(pub)
        await until(
            lambda: all(s.chain.last == ticker.seq for s in states), WAIT_S, "the last delta"
        )
        # What is awaited is time itself: five ping timeouts, with a ping every 50 ms. A
        # client that left one unanswered would have been closed by now.
        await asyncio.sleep(5 * PING_TIMEOUT_S)
        assert all(not c.done() for c in clients), [c for c in clients if c.done()]
        stop.set()
        await asyncio.gather(*clients)
    for s in states:
        assert s.connected and not s.error and s.errors == 0
        assert (s.chain.gaps, s.chain.duplicates, s.chain.resyncs) == (0, 0, 0)
        assert s.messages == 1 + (ticker.seq - first)  # snapshot, then one delta per step
    # Every delta's latency, none of the first snapshots'.
    assert recorder.take_histogram().get_total_count() == 4 * (ticker.seq - first)
    # Compressed once per delta for the four, when they asked for it.
    assert gw.metrics.deflate_shared.value >= (3 * 30 if compression else 0)
    assert (gw.metrics.deflated.value > 0) is compression


@requires_mosquitto
@pytest.mark.parametrize(
    ("limit", "status"),
    [({"max_connections_per_address": 2}, "429"), ({"max_clients": 2}, "503")],
)
async def test_the_gateways_refusals_are_counted_as_failed_clients(
    mosquitto: Mosquitto, limit: dict[str, int], status: str
) -> None:
    race = "conn-refused"
    settings = GatewaySettings(refusal_linger_s=0.1, **limit)  # type: ignore[arg-type]
    ticks: list[WorkerTick] = []
    async with (
        bus.connect(mosquitto.url) as pub,
        running_gateway(mosquitto.url, settings) as (
            gw,
            port,
        ),
    ):
        await Ticker(race).publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race")
        config = WorkerConfig(
            worker=0,
            url=f"ws://127.0.0.1:{port}/ws",
            clients=tuple(Assignment(i, race) for i in range(3)),
            interval_s=0.05,
            connect_concurrency=1,  # one after the other: the third is the one refused
        )
        worker = Worker(config, lambda b: ticks.append(tick_decoder.decode(b)))
        commands: asyncio.Queue[str] = asyncio.Queue()
        running = asyncio.ensure_future(worker.run(commands))
        await until(
            lambda: bool(ticks) and ticks[-1].connected + ticks[-1].failed == 3,
            WAIT_S,
            "every client connected or failed",
        )
        commands.put_nowait("stop")
        await running
    final = ticks[-1]
    assert final.final and (final.connected, final.failed) == (2, 1)
    [refused] = [c for c in final.clients if not c.connected]
    assert status in refused.error and refused.error.startswith("ConnectionError: handshake")
