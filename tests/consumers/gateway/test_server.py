"""The websocket gateway against a real Mosquitto and real websocket clients.

Standings are hand-made ``board.Snapshot`` / ``board.Delta`` messages published
the way the projector publishes them; clients are ``websockets`` clients, and
HTTP is plain urllib.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
import structlog.testing
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import board, control, topics
from consumers.gateway.core.requests import parse_request
from consumers.gateway.core.session import Frame, Outbox, TokenBucket
from consumers.gateway.server import GatewaySettings
from tests.support.gateway import running_gateway
from tests.support.procs import parse_metrics

WAIT_S = 10.0
CLASSES = ["P1", "P2", "PC", "GT", "GTC"]
# (number, class, team): two cars per class, in starting order.
ENTRIES = [
    ("6", "P1", "Muscle Milk Pickett Racing"),
    ("16", "P1", "Dyson Racing Team"),
    ("552", "P2", "Level 5 Motorsports"),
    ("01", "P2", "Extreme Speed Motorsports"),
    ("05", "PC", "CORE autosport"),
    ("52", "PC", "PR1 Mathiasen Motorsports"),
    ("56", "GT", "BMW Team RLL"),
    ("4", "GT", "Corvette Racing"),
    ("45", "GTC", "Flying Lizard Motorsports"),
    ("22", "GTC", "Alex Job Racing"),
]


# -- hand-made standings -----------------------------------------------------


class Standings:
    """A tiny race that changes places on every step: the source of test snapshots and deltas."""

    def __init__(self, race: str, *, seq: int = 1, padding: int = 0) -> None:
        self.race = race
        self.seq = seq
        self.order = [number for number, _, _ in ENTRIES]
        self.info = {number: (cls, team) for number, cls, team in ENTRIES}
        self.padding = padding
        """Extra characters in the team names; they name the car's place too, so that a
        delta carries them for every car moved (as large as a real field's whole rows)."""
        self.laps = dict.fromkeys(self.order, 0)
        self.rows = self._rows()
        self.session = self._session()

    def _session(self) -> board.SessionView:
        return board.SessionView(
            name=f"Test race {self.race}",
            t_ms=self.seq * 1000,
            remaining_ms=4 * 3600_000 - self.seq * 1000,
            leader_laps=max(self.laps.values()),
            classes=CLASSES,
            speed=10.0,
        )

    def _rows(self) -> dict[str, board.CarRow]:
        rows: dict[str, board.CarRow] = {}
        class_pos: dict[str, int] = {}
        for position, number in enumerate(self.order, start=1):
            cls, team = self.info[number]
            if self.padding:
                team = f"{team} P{position}" + " " * self.padding
            class_pos[cls] = class_pos.get(cls, 0) + 1
            rows[number] = board.CarRow(
                car=number,
                cls=cls,
                position=position,
                class_position=class_pos[cls],
                team=team,
                driver=f"Driver {number}",
                laps=self.laps[number],
                gap_ms=None if position == 1 else (position - 1) * 1500,
                last_lap_ms=82_000 + position * 100 if self.laps[number] else None,
                gained=ENTRIES.index(next(e for e in ENTRIES if e[0] == number)) + 1 - position,
            )
        return rows

    def snapshot(self) -> board.Snapshot:
        return board.Snapshot(
            race=self.race,
            seq=self.seq,
            session=self.session,
            cars=sorted(self.rows.values(), key=lambda r: r.position),
            wall=1000.0 + self.seq,
        )

    def step(self) -> board.Delta:
        """One lap crossing: the car at place ``k`` passes the one ahead of it."""
        k = 1 + self.seq % (len(self.order) - 1)
        self.order[k - 1], self.order[k] = self.order[k], self.order[k - 1]
        self.laps[self.order[k - 1]] += 1
        prev = self.seq
        self.seq += 1
        before, session = self.rows, self.session
        self.rows = self._rows()
        self.session = self._session()
        in_order = sorted(self.rows.values(), key=lambda r: r.position)
        changed = [board.row_patch(before[row.car], row) for row in in_order]
        return board.Delta(
            race=self.race,
            seq=self.seq,
            prev_seq=prev,
            session=board.session_patch(session, self.session),
            cars=[patch for patch in changed if patch is not None],
            wall=1000.0 + self.seq,
        )

    def patch(
        self, car: str | None = None, *, session: dict[str, Any] | None = None, **fields: Any
    ) -> board.Delta:
        """A delta that changes fields of one car's row and of the session view, places kept."""
        prev = self.seq
        self.seq += 1
        changed = []
        if car is not None:
            before = self.rows[car]
            self.rows[car] = msgspec.structs.replace(before, **fields)
            patch = board.row_patch(before, self.rows[car])
            changed = [patch] if patch is not None else []
        kept = {"flag": self.session.flag, "fastest": self.session.fastest}
        old = self.session
        self.session = msgspec.structs.replace(self._session(), **{**kept, **(session or {})})
        return board.Delta(
            race=self.race,
            seq=self.seq,
            prev_seq=prev,
            session=board.session_patch(old, self.session),
            cars=changed,
            wall=1000.0 + self.seq,
        )


async def publish_snapshot(pub: bus.Bus, snapshot: board.Snapshot) -> None:
    await pub.publish(
        topics.topic(snapshot.race, topics.STANDINGS), board.encode(snapshot), retain=True
    )


async def publish_delta(pub: bus.Bus, delta: board.Delta) -> None:
    await pub.publish(topics.topic(delta.race, topics.STANDINGS_DELTA), board.encode(delta))


async def publish_status(pub: bus.Bus, race: str, state: control.ProducerState, **kw: Any) -> None:
    status = control.Status(race=race, state=state, **kw)
    await pub.publish(topics.topic(race, topics.STATUS), control.encode(status), retain=True)


# -- harness -----------------------------------------------------------------


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait until ``predicate()`` holds (checked every few ms), or fail naming ``what``."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not predicate():  # noqa: ASYNC110 - the condition is another component's state
                await asyncio.sleep(0.005)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


async def recv(ws: ClientConnection) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), WAIT_S)
    assert isinstance(raw, str), "the gateway sends text frames"
    message: dict[str, Any] = json.loads(raw)
    return message


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of ``kind``, skipping status frames."""
    while True:
        message = await recv(ws)
        if message["type"] == kind:
            return message
        assert message["type"] == "status", f"expected {kind}, got {message}"


async def request(ws: ClientConnection, message: object) -> dict[str, Any]:
    await ws.send(json.dumps(message))
    return await recv(ws)


def http_get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=WAIT_S) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def small_socket(port: int) -> socket.socket:
    """A connected socket to the gateway with a small receive buffer: a client that stops
    reading backs its frames up into the gateway quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


class Follower:
    """A client's view of one race: checks contiguity and rebuilds the board from frames."""

    def __init__(self) -> None:
        self.snapshot: board.Snapshot | None = None
        self.snapshots = 0
        self.deltas = 0

    def feed(self, message: dict[str, Any]) -> None:
        raw = json.dumps(message).encode()
        if message["type"] == "snapshot":
            snap = board.decode_snapshot(raw)
            if self.snapshot is not None:
                assert snap.seq >= self.snapshot.seq, "a fresh snapshot never goes back"
            self.snapshot = snap
            self.snapshots += 1
        elif message["type"] == "delta":
            delta = board.decode_delta(raw)
            assert self.snapshot is not None, "a delta before any snapshot"
            assert delta.prev_seq == self.snapshot.seq, (
                f"gap: delta {delta.seq} on {delta.prev_seq}, client at {self.snapshot.seq}"
            )
            self.snapshot = board.apply_delta(self.snapshot, delta)
            self.deltas += 1

    @property
    def seq(self) -> int | None:
        return None if self.snapshot is None else self.snapshot.seq

    async def follow(self, ws: ClientConnection, until_seq: int) -> None:
        while self.seq != until_seq:
            self.feed(await recv(ws))


def only(snapshot: board.Snapshot, cls: str) -> list[board.CarRow]:
    return [row for row in snapshot.cars if row.cls == cls]


# -- pure parts --------------------------------------------------------------


def test_apply_delta_replaces_rows_and_keeps_position_order() -> None:
    race = Standings("unit")
    snap = race.snapshot()
    deltas = [race.step() for _ in range(12)]
    for delta in deltas:
        snap = board.apply_delta(snap, delta)
    assert board.encode(snap) == board.encode(race.snapshot())
    assert [row.position for row in snap.cars] == list(range(1, len(ENTRIES) + 1))


def test_apply_delta_refuses_a_delta_that_does_not_chain() -> None:
    race = Standings("unit", seq=5)
    snap = race.snapshot()
    race.step()
    second = race.step()
    with pytest.raises(board.SeqMismatch, match="applies on seq 6"):
        board.apply_delta(snap, second)
    other = board.Delta(race="other", seq=6, prev_seq=5)
    with pytest.raises(board.SeqMismatch, match="race"):
        board.apply_delta(snap, other)
    # The snapshot given is left as it was.
    assert snap.seq == 5


def test_outbox_coalesces_a_race_to_one_fresh_snapshot() -> None:
    box = Outbox(max_frames=4, max_bytes=1 << 20)
    box.push(Frame("reply", b'{"type":"pong"}'))
    box.push(Frame("status", b"s1", "a"))
    for i in range(3):
        box.push(Frame("delta", b"d%d" % i, "a"))
    assert box.over()
    dropped = box.coalesce(lambda race: Frame("snapshot", b"fresh-" + race.encode(), race))
    assert [f.data for f in box.frames] == [b'{"type":"pong"}', b"s1", b"fresh-a"]
    assert dropped == 2
    assert box.size == sum(len(f.data) for f in box.frames)
    assert not box.over()
    assert box.high_water == 5


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"race": "x"}', "missing_op"),
        ('{"op": "publish"}', "unknown_op"),
        ('{"op": "subscribe"}', "missing_race"),
        ('{"op": "subscribe", "race": 7}', "invalid_field"),
        ('{"op": "subscribe", "race": "r", "class": ""}', "invalid_field"),
        ('{"op": "ping", "id": {"a": 1}}', "invalid_field"),
    ],
)
def test_requests_that_are_refused_name_their_fault(frame: str, code: str) -> None:
    with pytest.raises(Exception) as info:
        parse_request(frame)
    assert getattr(info.value, "code", None) == code


# -- against Mosquitto -------------------------------------------------------


async def test_clients_get_a_snapshot_then_contiguous_deltas(module_mosquitto: Mosquitto) -> None:
    race = Standings("gw-flow", seq=10)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(lambda: "gw-flow" in gateway.races, "the retained snapshot")
            url = f"ws://127.0.0.1:{port}/ws"
            async with connect(url) as overall, connect(url) as gt:
                await overall.send(json.dumps({"op": "subscribe", "race": "gw-flow"}))
                await gt.send(json.dumps({"op": "subscribe", "race": "gw-flow", "class": "GT"}))
                first_all = await recv(overall)
                first_gt = await recv(gt)
                assert first_all["type"] == first_gt["type"] == "snapshot"
                assert first_all["seq"] == first_gt["seq"] == 10
                assert len(first_all["cars"]) == len(ENTRIES)
                assert {row["cls"] for row in first_gt["cars"]} == {"GT"}

                all_view, gt_view = Follower(), Follower()
                all_view.feed(first_all)
                gt_view.feed(first_gt)
                for _ in range(30):
                    await publish_delta(pub, race.step())
                await all_view.follow(overall, race.seq)
                await gt_view.follow(gt, race.seq)

    expected = race.snapshot()
    assert all_view.snapshots == 1 and all_view.deltas == 30
    assert gt_view.snapshots == 1 and gt_view.deltas == 30
    assert all_view.snapshot is not None and gt_view.snapshot is not None
    assert board.encode(all_view.snapshot) == board.encode(expected)
    assert gt_view.snapshot.cars == only(expected, "GT")
    # Places changed on the way: the rebuilt order is not the starting one.
    assert [row.car for row in expected.cars] != [number for number, _, _ in ENTRIES]


async def test_list_races_ping_and_status(module_mosquitto: Mosquitto) -> None:
    race = Standings("gw-list", seq=3)
    meta = {"race": "gw-list", "session": {"name": "American Le Mans Monterey"}}
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        await pub.publish(
            topics.topic("gw-list", topics.META), json.dumps(meta).encode(), retain=True
        )
        await publish_status(pub, "gw-list", "running", speed=60.0, t_ms=3000)
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(
                lambda: (
                    (c := gateway.races.get("gw-list")) is not None
                    and None not in (c.snapshot, c.meta, c.status)
                ),
                "meta, status and snapshot",
            )
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                pong = await request(ws, {"op": "ping", "id": "p1"})
                assert pong["type"] == "pong" and pong["id"] == "p1"
                listing = await request(ws, {"op": "list", "id": 2})
                assert listing["type"] == "races" and listing["id"] == 2
                entry = next(r for r in listing["races"] if r["race"] == "gw-list")
                assert entry["name"] == "American Le Mans Monterey"
                assert entry["state"] == "running"
                assert entry["speed"] == 60.0
                assert entry["t_ms"] == 3000
                assert entry["seq"] == 3
                assert entry["classes"] == CLASSES

                await ws.send(json.dumps({"op": "subscribe", "race": "gw-list"}))
                assert (await recv(ws))["type"] == "snapshot"
                status = await recv(ws)
                assert status["type"] == "status" and status["state"] == "running"
                await publish_status(pub, "gw-list", "paused", speed=60.0, t_ms=4000)
                status = await recv(ws)
                assert (status["type"], status["state"], status["t_ms"]) == (
                    "status",
                    "paused",
                    4000,
                )

                reply = await request(ws, {"op": "unsubscribe", "race": "gw-list"})
                assert reply == {"type": "unsubscribed", "race": "gw-list"}
                await publish_delta(pub, race.step())
                # Nothing more for this race: the next frame is the answer to the next request.
                assert (await request(ws, {"op": "ping"}))["type"] == "pong"


async def test_every_bad_request_gets_an_error_and_the_connection_stays(
    module_mosquitto: Mosquitto,
) -> None:
    race = Standings("gw-errors")
    no_grace = GatewaySettings(startup_grace_s=0)  # unknown races refused at once
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, no_grace) as (gateway, port):
            await until(lambda: "gw-errors" in gateway.races, "the retained snapshot")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                cases: list[tuple[str | bytes, str]] = [
                    ("not json", "invalid_json"),
                    ('"a string"', "invalid_message"),
                    ('{"op": "shout", "id": 9}', "unknown_op"),
                    ('{"op": "subscribe"}', "missing_race"),
                    ('{"op": "subscribe", "race": "no-such-race"}', "unknown_race"),
                    ('{"op": "subscribe", "race": "gw-errors", "class": "LMP9"}', "unknown_class"),
                    ('{"op": "unsubscribe", "race": "gw-errors"}', "not_subscribed"),
                    (b"\x00\x01binary", "binary_frame"),
                ]
                for frame, code in cases:
                    await ws.send(frame)
                    reply = await recv(ws)
                    assert reply["type"] == "error", reply
                    assert reply["error"] == code, reply
                    assert reply["detail"]
                unknown = await request(ws, {"op": "shout", "id": 9})
                assert unknown["id"] == 9 and "shout" in unknown["detail"]
                # Still connected and serving.
                assert (await request(ws, {"op": "ping"}))["type"] == "pong"
                snap = await request(ws, {"op": "subscribe", "race": "gw-errors", "class": "P1"})
                assert snap["type"] == "snapshot" and len(snap["cars"]) == 2
            assert gateway.metrics.errors["unknown_race"] == 1
            assert gateway.metrics.errors["binary_frame"] == 1
            assert gateway.metrics.errors["unknown_op"] == 2


async def test_oversized_frame_closes_with_1009(module_mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(max_size=4096)
    async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"op": "ping", "id": "x" * 5000}))
            with pytest.raises(ConnectionClosed) as closed:
                await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await until(lambda: gateway.metrics.closes["1009"] == 1, "the close to be counted")


async def test_a_compressed_frame_that_inflates_too_big_closes_with_1009(
    module_mosquitto: Mosquitto,
) -> None:
    """A deflate bomb: 1 MB of one letter is ~1 kB on the wire; it is never inflated whole."""
    settings = GatewaySettings(max_size=4096)
    async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url, max_size=None) as bomb, connect(url) as other:
            assert bomb.protocol.extensions, "permessage-deflate agreed"
            await bomb.send(json.dumps({"op": "ping", "id": "x" * 1_000_000}))
            with pytest.raises(ConnectionClosed) as closed:
                await recv(bomb)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
            assert (await request(other, {"op": "ping", "id": 1}))["type"] == "pong"
        await until(lambda: gateway.metrics.closes["1009"] == 1, "the close to be counted")


async def test_a_flood_closes_with_1008(module_mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(rate_per_s=1, burst=40)  # slow refill: the burst decides
    async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
        # max_queue=None: the client keeps reading, so it answers the close frame at once.
        async with connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
            pongs = 0
            with pytest.raises(ConnectionClosed) as closed:
                for i in range(200):
                    await ws.send(json.dumps({"op": "ping", "id": i}))
                while True:
                    pongs += (await recv(ws))["type"] == "pong"
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        assert 40 <= pongs < 200
        await until(lambda: gateway.metrics.closes["1008"] == 1, "the close to be counted")
        assert gateway.metrics.errors["rate_limited"] == 1


async def test_subscribing_before_the_first_snapshot_waits_for_it(
    module_mosquitto: Mosquitto,
) -> None:
    race = Standings("gw-late")
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_status(pub, "gw-late", "idle")
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(lambda: "gw-late" in gateway.races, "the retained status")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                reply = await request(ws, {"op": "subscribe", "race": "gw-late", "id": "s"})
                assert reply == {
                    "type": "subscribed",
                    "id": "s",
                    "race": "gw-late",
                    "waiting": True,
                }
                assert (await recv(ws))["type"] == "status"
                await publish_snapshot(pub, race.snapshot())
                snap = await recv(ws)
                assert snap["type"] == "snapshot" and snap["seq"] == race.seq
                await publish_delta(pub, race.step())
                delta = await recv(ws)
                assert (delta["type"], delta["prev_seq"]) == ("delta", snap["seq"])


async def test_a_gap_in_deltas_is_healed_by_a_fresh_snapshot(module_mosquitto: Mosquitto) -> None:
    race = Standings("gw-gap", seq=20)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(lambda: "gw-gap" in gateway.races, "the retained snapshot")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                view = Follower()
                view.feed(await request(ws, {"op": "subscribe", "race": "gw-gap"}))
                await publish_delta(pub, race.step())
                await view.follow(ws, race.seq)
                race.step()  # lost on the way: never published
                await publish_delta(pub, race.step())
                await until(lambda: gateway.races["gw-gap"].stale, "the gap to be noticed")
                # The projector's next retained snapshot heals it; the client gets it whole.
                await publish_snapshot(pub, race.snapshot())
                await view.follow(ws, race.seq)
                await publish_delta(pub, race.step())
                await view.follow(ws, race.seq)
            assert view.snapshots == 2 and view.deltas == 2
            assert gateway.metrics.gaps.value == 1
            assert not gateway.races["gw-gap"].stale
            assert view.snapshot is not None
            assert board.encode(view.snapshot) == board.encode(race.snapshot())


async def test_a_stuck_client_is_coalesced_while_another_gets_every_delta(
    module_mosquitto: Mosquitto,
) -> None:
    # Small buffers everywhere so that a client that does not read backs up quickly.
    settings = GatewaySettings(
        queue_frames=8, queue_bytes=256 * 1024, write_limit=8192, send_buffer=8192
    )
    race = Standings("gw-stuck", padding=400)  # rows of ~0.5 kB: a delta is a few kB
    deltas = 150
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
            await until(lambda: "gw-stuck" in gateway.races, "the retained snapshot")
            url = f"ws://127.0.0.1:{port}/ws"
            sock = small_socket(port)
            # The reader buffers all it receives (max_queue=None) and reads while we publish.
            # Uncompressed, so that the stuck one's frames fill its buffers as they are.
            async with (
                connect(url, sock=sock, compression=None) as stuck,
                connect(url, max_queue=None) as reader,
            ):
                stuck_view, reader_view = Follower(), Follower()
                stuck_view.feed(await request(stuck, {"op": "subscribe", "race": "gw-stuck"}))
                reader_view.feed(await request(reader, {"op": "subscribe", "race": "gw-stuck"}))
                stuck.transport.pause_reading()  # from here on, it reads nothing

                reading = asyncio.create_task(reader_view.follow(reader, race.seq + deltas))
                for _ in range(deltas):
                    await publish_delta(pub, race.step())
                await asyncio.wait_for(reading, WAIT_S)
                assert reader_view.deltas == deltas and reader_view.snapshots == 1

                await until(
                    lambda: gateway.metrics.coalesced.value > 0, "the stuck client coalesced"
                )
                stuck_stats = next(s for s in gateway.client_stats() if s.coalesced > 0)
                assert stuck_stats.high_water <= settings.queue_frames + 1
                assert stuck_stats.queued_frames <= settings.queue_frames
                assert stuck_stats.queued_bytes <= settings.queue_bytes
                # Only the stuck one was coalesced; the reader's outbox stayed short.
                assert [s.coalesced for s in gateway.client_stats()].count(0) == 1
                assert gateway.metrics.frames_dropped.value > 0

                _, _, body = await asyncio.to_thread(http_get, port, "/metrics")
                metrics = parse_metrics(body.decode())
                assert metrics["chequered_gateway_coalesced_total"] > 0
                assert metrics["chequered_gateway_clients"] == 2

                # Once it reads again it catches up: a fresh snapshot, then deltas as usual.
                stuck.transport.resume_reading()
                await stuck_view.follow(stuck, race.seq)
                assert stuck_view.snapshots >= 2
                assert stuck_view.deltas < deltas
                await publish_delta(pub, race.step())
                await stuck_view.follow(stuck, race.seq)
                await reader_view.follow(reader, race.seq)
    assert stuck_view.snapshot is not None and reader_view.snapshot is not None
    assert board.encode(stuck_view.snapshot) == board.encode(reader_view.snapshot)


async def test_a_slow_client_that_compresses_gets_its_outbox_compressed_and_catches_up(
    module_mosquitto: Mosquitto,
) -> None:
    """Frames that wait in the outbox go out compressed too, in the order of the client's
    chain: its inflater (websockets', checking every frame) reads them all."""
    settings = GatewaySettings(queue_frames=400, write_limit=512, send_buffer=4096)
    race = Standings("gw-slow-deflate", padding=400)
    deltas = 200
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
            await until(lambda: "gw-slow-deflate" in gateway.races, "the retained snapshot")
            sock = small_socket(port)
            url = f"ws://127.0.0.1:{port}/ws"
            async with connect(url, sock=sock, max_queue=None) as slow:
                assert slow.protocol.extensions, "permessage-deflate agreed"
                view = Follower()
                view.feed(await request(slow, {"op": "subscribe", "race": "gw-slow-deflate"}))
                slow.transport.pause_reading()
                for _ in range(deltas):
                    await publish_delta(pub, race.step())
                await until(
                    lambda: any(s.queued_frames for s in gateway.client_stats()),
                    "frames waiting in the slow client's outbox",
                )
                deflated = gateway.metrics.deflated.value
                slow.transport.resume_reading()
                await view.follow(slow, race.seq)
                assert gateway.metrics.deflated.value > deflated  # the outbox, compressed
    assert view.deltas == deltas and view.snapshots == 1  # in order, nothing coalesced
    assert view.snapshot is not None
    assert board.encode(view.snapshot) == board.encode(race.snapshot())


async def test_health_metrics_and_widget_files_over_http(module_mosquitto: Mosquitto) -> None:
    async with running_gateway(module_mosquitto.url) as (gateway, port):
        await until(lambda: gateway.broker_connected, "the broker connection")
        status, ctype, body = await asyncio.to_thread(http_get, port, "/healthz")
        assert status == 200 and ctype == "application/json"
        health = json.loads(body)
        assert health["ok"] is True and health["broker_connected"] is True
        assert health["clients"] == 0 and isinstance(health["races"], int)

        for path, kind, marker in [
            ("/", "text/html", b"<live-leaderboard"),
            ("/leaderboard.js", "text/javascript", b"customElements.define"),
            ("/leaderboard.css", "text/css", b".board"),
        ]:
            status, ctype, body = await asyncio.to_thread(http_get, port, path)
            assert status == 200, path
            assert ctype.startswith(kind), (path, ctype)
            assert marker in body, path

        status, _, body = await asyncio.to_thread(http_get, port, "/nothing-here")
        assert status == 404 and b"/nothing-here" in body

        status, ctype, body = await asyncio.to_thread(http_get, port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        text = body.decode()
        for name in ("clients", "frames_out_total", "coalesced_total", "broker_connected"):
            assert f"# TYPE chequered_gateway_{name} " in text
        assert 'chequered_gateway_http_requests_total{path="/healthz"} 1' in text


async def test_origin_token_and_per_address_limits(module_mosquitto: Mosquitto) -> None:
    settings = GatewaySettings(
        allowed_origins=("https://timing.example",),
        token="s3cret",
        max_connections_per_address=2,
    )
    async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
        base = f"ws://127.0.0.1:{port}/ws"
        good = "https://timing.example"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}?token=s3cret", origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"{base}?token=wrong", origin=good):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            async with connect(base, origin=good):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 401

        async with (
            connect(f"{base}?token=s3cret", origin=good) as one,  # type: ignore[arg-type]
            connect(f"{base}?token=s3cret") as two,  # no Origin: not a browser
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{base}?token=s3cret", origin=good):  # type: ignore[arg-type]
                    pass
            assert refused.value.response.status_code == 429
            assert (await request(one, {"op": "ping"}))["type"] == "pong"
            assert (await request(two, {"op": "ping"}))["type"] == "pong"
        # Closed connections free their places.
        await until(lambda: not gateway.by_address, "the connections to be forgotten")
        async with connect(f"{base}?token=s3cret", origin=good) as three:  # type: ignore[arg-type]
            assert (await request(three, {"op": "ping"}))["type"] == "pong"
        assert gateway.metrics.rejected == {"origin": 1, "token": 2, "per_address": 1}


async def test_clients_stay_connected_while_the_broker_restarts(mosquitto: Mosquitto) -> None:
    race = Standings("gw-restart", seq=5)
    settings = GatewaySettings(reconnect_min_s=0.05, reconnect_max_s=0.5)
    async with running_gateway(mosquitto.url, settings) as (gateway, port):
        async with bus.connect(mosquitto.url) as pub:
            await publish_snapshot(pub, race.snapshot())
        await until(lambda: "gw-restart" in gateway.races, "the retained snapshot")
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            view = Follower()
            view.feed(await request(ws, {"op": "subscribe", "race": "gw-restart"}))

            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: not gateway.broker_connected, "the broker loss")
            status, _, body = await asyncio.to_thread(http_get, port, "/healthz")
            assert status == 503 and json.loads(body)["broker_connected"] is False
            assert (await request(ws, {"op": "ping"}))["type"] == "pong"

            await asyncio.to_thread(mosquitto.start)
            await until(lambda: gateway.broker_connected, "the reconnection")
            async with bus.connect(mosquitto.url) as pub:
                for _ in range(3):
                    await publish_delta(pub, race.step())
            await view.follow(ws, race.seq)
        assert view.snapshots == 1 and view.deltas == 3
        assert gateway.metrics.broker_connects.value == 2


async def test_bad_broker_payloads_are_counted_and_skipped(module_mosquitto: Mosquitto) -> None:
    race = Standings("gw-bad")
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(lambda: "gw-bad" in gateway.races, "the retained snapshot")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                view = Follower()
                view.feed(await request(ws, {"op": "subscribe", "race": "gw-bad"}))
                await pub.publish(topics.topic("gw-bad", topics.STANDINGS_DELTA), b"{broken")
                other = msgspec.structs.replace(Standings("gw-bad").step(), race="other")
                await pub.publish(
                    topics.topic("gw-bad", topics.STANDINGS_DELTA), board.encode(other)
                )
                await publish_delta(pub, race.step())
                await view.follow(ws, race.seq)
            assert gateway.metrics.bad_payloads.value == 2
            assert view.deltas == 1


async def test_a_client_that_never_reads_but_keeps_asking_is_closed(
    module_mosquitto: Mosquitto,
) -> None:
    # Pongs cannot be coalesced: once they alone overflow the outbox the client goes.
    settings = GatewaySettings(
        queue_frames=8, write_limit=8192, send_buffer=8192, close_timeout_s=0.2
    )
    race = Standings("gw-deaf", padding=400)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
            await until(lambda: "gw-deaf" in gateway.races, "the retained snapshot")
            sock = small_socket(port)
            url = f"ws://127.0.0.1:{port}/ws"
            async with connect(url, sock=sock, compression=None) as deaf:
                await request(deaf, {"op": "subscribe", "race": "gw-deaf"})
                deaf.transport.pause_reading()
                for _ in range(60):
                    await publish_delta(pub, race.step())
                await until(lambda: gateway.metrics.coalesced.value > 0, "a coalesced backlog")
                for i in range(settings.queue_frames + 2):
                    await deaf.send(json.dumps({"op": "ping", "id": i}))
                await until(lambda: gateway.metrics.closes["1008"] == 1, "the client to be closed")
                assert not gateway.clients
                deaf.transport.resume_reading()
                with pytest.raises(ConnectionClosed):
                    while True:
                        await recv(deaf)


async def test_a_live_snapshot_ahead_of_its_delta_does_not_reset_clients(
    module_mosquitto: Mosquitto,
) -> None:
    # The projector publishes the retained snapshot of seq N just before the delta to N.
    # A grace as long as the test's patience: the deltas, not the snapshots, must get through.
    settings = GatewaySettings(snapshot_grace_s=WAIT_S)
    race = Standings("gw-ahead", seq=3)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
            await until(lambda: "gw-ahead" in gateway.races, "the retained snapshot")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                view = Follower()
                view.feed(await request(ws, {"op": "subscribe", "race": "gw-ahead"}))
                for _ in range(5):
                    delta = race.step()
                    await publish_snapshot(pub, race.snapshot())
                    await publish_delta(pub, delta)
                await view.follow(ws, race.seq)
                assert (view.snapshots, view.deltas) == (1, 5)
                assert gateway.races["gw-ahead"].pending is None
                assert (await request(ws, {"op": "ping"}))["type"] == "pong"
            assert gateway.metrics.gaps.value == 0


async def test_a_live_snapshot_that_no_delta_follows_is_sent_after_the_grace(
    module_mosquitto: Mosquitto,
) -> None:
    settings = GatewaySettings(snapshot_grace_s=0.05)
    race = Standings("gw-alone", seq=3)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url, settings) as (gateway, port):
            await until(lambda: "gw-alone" in gateway.races, "the retained snapshot")
            async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
                view = Follower()
                view.feed(await request(ws, {"op": "subscribe", "race": "gw-alone"}))
                # A snapshot that no delta follows (after a reset, say) is news after all.
                race.step()
                race.step()
                await publish_snapshot(pub, race.snapshot())
                await view.follow(ws, race.seq)
                assert (view.snapshots, view.deltas) == (2, 0)
                await publish_delta(pub, race.step())
                await view.follow(ws, race.seq)
                assert (view.snapshots, view.deltas) == (2, 1)
            assert gateway.metrics.gaps.value == 0


async def test_a_full_gateway_refuses_with_503(module_mosquitto: Mosquitto) -> None:
    async with running_gateway(module_mosquitto.url, GatewaySettings(max_clients=1)) as (
        gateway,
        port,
    ):
        url = f"ws://127.0.0.1:{port}/ws"
        async with connect(url) as first:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url):
                    pass
            assert refused.value.response.status_code == 503
            assert (await request(first, {"op": "ping"}))["type"] == "pong"
        assert gateway.metrics.rejected == {"capacity": 1}


async def test_the_broker_password_never_reaches_the_log(mosquitto: Mosquitto) -> None:
    password = "pw-f00d-s3cret"
    url = mosquitto.url.replace("mqtt://", f"mqtt://gateway:{password}@")
    settings = GatewaySettings(reconnect_min_s=0.05, reconnect_max_s=0.5)
    with structlog.testing.capture_logs() as lines:

        def logged(event: str) -> list[dict[str, Any]]:
            return [line for line in lines if line["event"] == event]

        async with running_gateway(url, settings) as (gateway, _):
            await until(lambda: bool(logged("broker_connected")), "the broker connection")
            await asyncio.to_thread(mosquitto.stop)
            await until(lambda: bool(logged("broker_lost")), "the broker loss")
    listening = logged("gateway_listening")
    assert listening and listening[0]["broker"] == mosquitto.url
    assert logged("broker_connected")[0]["url"] == mosquitto.url
    assert logged("broker_lost")[0]["url"] == mosquitto.url
    assert gateway.url == mosquitto.url
    assert password not in repr(lines)


async def test_a_subscribe_during_the_startup_grace_waits_for_the_retained_standings(
    module_mosquitto: Mosquitto,
) -> None:
    race = Standings("gw-grace", seq=7)
    async with running_gateway(module_mosquitto.url) as (gateway, port):
        await until(lambda: gateway.broker_connected, "the broker connection")
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            # Before the race's standings reach the gateway: held, not refused.
            held = await request(ws, {"op": "subscribe", "race": "gw-grace", "id": 1})
            assert held == {"type": "subscribed", "id": 1, "race": "gw-grace", "waiting": True}
            ghost = await request(ws, {"op": "subscribe", "race": "gw-ghost", "id": 2})
            assert ghost == {"type": "subscribed", "id": 2, "race": "gw-ghost", "waiting": True}
            listed = [r["race"] for r in (await request(ws, {"op": "list"}))["races"]]
            assert "gw-grace" not in listed and "gw-ghost" not in listed

            async with bus.connect(module_mosquitto.url) as pub:
                await publish_snapshot(pub, race.snapshot())
                snapshot = await recv_type(ws, "snapshot")
                assert (snapshot["race"], snapshot["seq"]) == ("gw-grace", 7)
                await publish_delta(pub, race.step())
                assert (await recv_type(ws, "delta"))["seq"] == 8

            # A race the broker never names is refused once the grace is over, with its id.
            refused = await recv_type(ws, "error")
            assert (refused["id"], refused["error"]) == (2, "unknown_race")
            assert "gw-ghost" not in gateway.races
            # After the grace, an unknown race is refused at once, as before.
            again = await request(ws, {"op": "subscribe", "race": "gw-ghost", "id": 3})
            assert (again["type"], again["id"], again["error"]) == ("error", 3, "unknown_race")
            assert (await request(ws, {"op": "ping"}))["type"] == "pong"
        assert gateway.metrics.errors["unknown_race"] == 2


# -- compression on the wire -------------------------------------------------


class RawClient:
    """A websocket client on a bare socket, to see the frames as sent: RSV1, and the bytes."""

    KEY = "dGhlIHNhbXBsZSBub25jZQ=="

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.inflater = zlib.decompressobj(-15)
        self.wire_bytes = 0
        self.payload_bytes = 0

    @classmethod
    async def open(cls, port: int, extensions: str) -> tuple[RawClient, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {cls.KEY}\r\n"
                f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {extensions}\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
        assert head.startswith(b"HTTP/1.1 101"), head
        agreed = [
            line.split(b":", 1)[1].strip().decode()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-extensions:")
        ]
        return cls(reader, writer), ";".join(agreed)

    def send(self, message: object) -> None:
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, data: bytes, first: int = 0x81) -> None:
        """One masked frame: ``first`` is FIN, RSV and opcode (0x81: a final text frame)."""
        assert len(data) < 126
        mask = b"\x01\x02\x03\x04"
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(bytes((first, 0x80 | len(data))) + mask + masked)

    async def recv(self) -> tuple[bool, dict[str, Any]]:
        """The next text message and whether it came compressed (RSV1)."""
        while True:
            first, second = await asyncio.wait_for(self.reader.readexactly(2), WAIT_S)
            n = second & 0x7F
            extra = {126: 2, 127: 8}.get(n, 0)
            if extra:
                n = int.from_bytes(await self.reader.readexactly(extra), "big")
            data = await self.reader.readexactly(n)
            assert first & 0x80, "no fragmented frames from the gateway"
            if first & 0x0F != 1:
                continue  # a ping
            compressed = bool(first & 0x40)
            self.wire_bytes += n
            if compressed:
                data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
            self.payload_bytes += len(data)
            message: dict[str, Any] = json.loads(data)
            return compressed, message


async def test_a_client_asking_for_deflate_gets_standings_compressed_and_replies_plain(
    module_mosquitto: Mosquitto,
) -> None:
    """Standings (the same bytes for every client in step) are compressed once and shared;
    replies, which echo what a client sent, go uncompressed: no compression oracle."""
    race = Standings("gw-deflate", seq=5, padding=40)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with running_gateway(module_mosquitto.url) as (gateway, port):
            await until(lambda: "gw-deflate" in gateway.races, "the retained snapshot")
            offer = "permessage-deflate; client_max_window_bits"
            clients = []
            for _ in range(3):
                client, agreed = await RawClient.open(port, offer)
                assert "permessage-deflate" in agreed
                assert "server_max_window_bits=13" in agreed
                assert "client_no_context_takeover" in agreed
                clients.append(client)
            plain, agreed = await RawClient.open(port, "x-unknown-extension")
            assert agreed == ""
            views = [Follower() for _ in range(4)]
            for client, view in zip([*clients, plain], views, strict=True):
                client.send({"op": "subscribe", "race": "gw-deflate"})
                compressed, message = await client.recv()
                assert message["type"] == "snapshot"
                assert compressed is (client is not plain)
                view.feed(message)
            deflated = gateway.metrics.deflated.value
            for _ in range(20):
                await publish_delta(pub, race.step())
            for client, view in zip([*clients, plain], views, strict=True):
                while view.seq != race.seq:
                    compressed, message = await client.recv()
                    assert compressed is (client is not plain)
                    view.feed(message)
            # Once per delta for the three clients in step, not once per client.
            assert gateway.metrics.deflated.value - deflated == 20
            assert gateway.metrics.deflate_shared.value >= 40
            secret = "reply-" * 8
            clients[0].send({"op": secret})
            compressed, message = await clients[0].recv()
            assert message["type"] == "error" and secret[:20] in json.dumps(message)
            assert compressed is False
            for client in [*clients, plain]:
                client.writer.close()
    expected = board.encode(race.snapshot())
    assert all(board.encode(view.snapshot) == expected for view in views if view.snapshot)
    assert all(view.deltas == 20 for view in views)
    assert clients[0].wire_bytes < 0.5 * clients[0].payload_bytes
    assert plain.wire_bytes == plain.payload_bytes


async def test_a_compressed_frame_that_does_not_inflate_closes_only_its_connection(
    module_mosquitto: Mosquitto,
) -> None:
    async with running_gateway(module_mosquitto.url) as (gateway, port):
        offer = "permessage-deflate"
        broken, agreed = await RawClient.open(port, offer)
        assert "permessage-deflate" in agreed
        other, _ = await RawClient.open(port, offer)
        broken.send_raw(b"\xff\xfe not deflate at all", first=0xC1)  # RSV1: compressed
        head = await asyncio.wait_for(broken.reader.readexactly(2), WAIT_S)
        assert head[0] & 0x0F == 0x8, "a close frame"
        close = await broken.reader.readexactly(head[1] & 0x7F)
        assert int.from_bytes(close[:2], "big") == 1002
        assert b"decompression failed" in close[2:]  # the reason names what was wrong
        other.send({"op": "ping", "id": 7})
        compressed, message = await other.recv()
        assert message["type"] == "pong" and not compressed
        broken.writer.close()  # it goes without answering the close
        await until(lambda: gateway.metrics.closes["1002"] == 1, "the close to be counted")
        assert len(gateway.clients) == 1
        other.writer.close()
