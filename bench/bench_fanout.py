"""Gateway fan-out: standings deltas to 1,000 websocket clients, frames per second.

A retained snapshot of the Monterey race at half distance, then the real
deltas of the events that follow, published at QoS 1 as fast as possible on
the race's delta topic (the projector's place). 1,000 clients (two client
processes) follow the race through the gateway; the time runs from the first
publish to the last client's receipt of the last delta. Beside it, in the same
run, with the same clients and the same deltas: (a) the raw limit of a bare
websockets server that broadcasts each MQTT payload to every connection with
no processing, (b) a naive server that decodes and re-encodes each payload
with stdlib json and awaits each client's send in turn, and (c) a prototype
that encodes each frame once and writes each client's frames with one system
call per turn of the event loop. Target: 100,000 frames/s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Literal

from bench.bench_broker import connect_fast, paho_client
from bench.workload import figure, race_events
from broker.bus import parse_url
from broker.mosquitto import Mosquitto
from chequered.contract import board, topics
from consumers.gateway.core.deflate import text_frame
from consumers.standings.fold import apply, delta, new_race, snapshot
from loadtest import run as loadtest
from loadtest.client import Assignment, WorkerConfig, raise_fd_limit
from loadtest.stats import Aggregate, tick_decoder

TARGET_FRAMES_PER_S = 100_000.0
CLIENTS = 1000
CLIENT_PROCESSES = 2
DELTAS = 300
RACE = "fan-0001"
TIMEOUT_S = 120.0
TICK_S = 0.2


def race_deltas(count: int) -> tuple[bytes, list[bytes], int]:
    """The retained snapshot at half distance and the next ``count`` deltas, encoded."""
    events = race_events(RACE)
    state = new_race(RACE)
    half = len(events) // 2
    for event in events[:half]:
        apply(state, event)
    first = previous = snapshot(state)
    deltas: list[bytes] = []
    for event in events[half:]:
        if len(deltas) >= count:
            break
        apply(state, event)
        current = snapshot(state)
        change = delta(previous, current)
        if change is None or (not change.cars and change.session is None):
            continue
        deltas.append(board.encode(change))
        previous = current
    return board.encode(first), deltas, previous.seq


# -- baselines: servers with no gateway logic ---------------------------------------------


ServerMode = Literal["bare", "naive", "coalesced"]


def _bare_server(conn: Connection, url: str, mode: ServerMode) -> None:
    """Send every payload of the delta topic to every connection, and nothing else.

    ``bare``: websockets' ``broadcast`` per payload. ``naive``: stdlib json decode
    and encode, then ``await send`` client by client. ``coalesced``: a prototype of
    what the gateway could do, each frame encoded once, and each client's frames
    written with one system call per turn of the event loop.
    """
    raise_fd_limit()
    import aiomqtt
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    address = parse_url(url)
    clients: set[ServerConnection] = set()
    pending: list[bytes] = []

    def flush() -> None:
        data = b"".join(pending)
        pending.clear()
        for ws in clients:
            ws.transport.write(data)

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for _ in ws:
                pass  # subscribe requests: every client gets everything
        finally:
            clients.discard(ws)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with (
            serve(handler, "127.0.0.1", 0, compression=None, max_queue=None) as server,
            aiomqtt.Client(address.host, address.port) as mqtt,
        ):
            await mqtt.subscribe(topics.topic(RACE, topics.STANDINGS_DELTA), qos=1)
            conn.send(("ready", server.sockets[0].getsockname()[1]))
            async for message in mqtt.messages:
                payload = message.payload
                assert isinstance(payload, bytes)
                if mode == "naive":
                    for ws in list(clients):
                        await ws.send(json.dumps(json.loads(payload)))
                elif mode == "coalesced":
                    if not pending:
                        loop.call_soon(flush)
                    pending.append(text_frame(payload))
                else:
                    broadcast(clients, payload.decode())

    asyncio.run(main())


# -- one measurement ------------------------------------------------------------------------


async def _measure(
    url: str,
    port: int,
    first_seq: int,
    deltas: list[bytes],
    last_seq: int,
    *,
    bare: bool,
    server_pid: int,
    compression: bool = False,
) -> dict[str, Any]:
    clients = [
        loadtest._spawn_workers(
            w,
            WorkerConfig(
                worker=w,
                url=f"ws://127.0.0.1:{port}/ws",
                clients=tuple(
                    Assignment(i, RACE) for i in range(CLIENTS) if i % CLIENT_PROCESSES == w
                ),
                interval_s=TICK_S,
                compression=compression,
            ),
        )
        for w in range(CLIENT_PROCESSES)
    ]
    agg = Aggregate(started=time.time(), interval_s=TICK_S)

    def pump() -> None:
        for c in clients:
            for data in c.drain():
                agg.add(tick_decoder.decode(data))

    async def until(condition: Any, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT_S
        while not condition():
            pump()
            if time.monotonic() > deadline:
                raise RuntimeError(f"fan-out: {what} after {TIMEOUT_S}s")
            await asyncio.sleep(0.02)

    try:
        await until(lambda: agg.clients_connected + agg.clients_failed >= CLIENTS, "connect")
        if not bare:
            await until(lambda: agg.min_seq().get(RACE, -1) >= first_seq, "snapshots")
        address = parse_url(url)
        pub = paho_client(f"bench-fanout-{bare}")
        connect_fast(pub, address.host, address.port)
        pub.loop_start()
        server = loadtest.ProcessWatch("server", [server_pid])
        client_cpu = loadtest.ProcessWatch("clients", [loadtest._pid(c) for c in clients])
        server.start()
        client_cpu.start()
        messages_before = agg.messages
        started = time.time()
        for payload in deltas:
            pub.publish(topics.topic(RACE, topics.STANDINGS_DELTA), payload, qos=1)
        await until(lambda: agg.min_seq().get(RACE, -1) >= last_seq, "last delta")
        server.end()
        client_cpu.end()
        pub.loop_stop()
        pub.disconnect()
        for c in clients:
            c.conn.send("stop")
        await until(lambda: len(agg.finals) == len(clients), "final reports")
    finally:
        for c in clients:
            loadtest._terminate(c)
    ends = sorted(c.last_at - started for c in agg.clients if c.last_at)
    finished = started + ends[-1]
    frames = agg.messages - messages_before
    seconds = finished - started
    return {
        "clients": len(agg.clients),
        "connected": sum(1 for c in agg.clients if c.connected),
        "frames": frames,
        "seconds": round(seconds, 4),
        "client_done_s": {
            "p10": round(ends[len(ends) // 10], 4),
            "p50": round(ends[len(ends) // 2], 4),
            "p90": round(ends[len(ends) * 9 // 10], 4),
        },
        "frames_per_s": round(frames / seconds, 1) if seconds > 0 else 0.0,
        "server_cpu_s": round(server.cpu_end - server.cpu_start, 3),
        "frames_per_server_cpu_s": round(frames / max(server.cpu_end - server.cpu_start, 1e-6), 1),
        "clients_cpu_s": round(client_cpu.cpu_end - client_cpu.cpu_start, 3),
        "gaps": sum(c.gaps for c in agg.clients),
        "resyncs": sum(c.resyncs for c in agg.clients),
        "latency_p99_ms": agg.total.get_value_at_percentile(99) / 1000,
    }


async def _gateway_run(
    url: str, snap: bytes, deltas: list[bytes], last_seq: int, *, compression: bool = False
) -> dict[str, Any]:
    gateway = loadtest._spawn("gateway", loadtest._gateway_child, url, "127.0.0.1")
    try:
        port = await loadtest._wait_for(gateway, "ready", loadtest.READY_TIMEOUT_S)
        from broker.bus import connect

        async with connect(url, client_id="bench-fanout-snapshot") as bus:
            await bus.publish(topics.topic(RACE, topics.STANDINGS), snap, qos=1, retain=True)
        first_seq = board.decode_snapshot(snap).seq
        result = await _measure(
            url,
            port,
            first_seq,
            deltas,
            last_seq,
            bare=False,
            server_pid=loadtest._pid(gateway),
            compression=compression,
        )
        metrics = gateway.latest("metrics") or {}
        result["gateway"] = {k: v for k, v in metrics.items() if k != "seqs"}
        return result
    finally:
        loadtest._terminate(gateway)


async def _bare_run(
    url: str, deltas: list[bytes], last_seq: int, *, mode: ServerMode
) -> dict[str, Any]:
    server = loadtest._spawn("bare", _bare_server, url, mode)
    try:
        port = await loadtest._wait_for(server, "ready", loadtest.READY_TIMEOUT_S)
        return await _measure(
            url, port, 0, deltas, last_seq, bare=True, server_pid=loadtest._pid(server)
        )
    finally:
        loadtest._terminate(server)


def _wire_bytes(metrics: dict[str, Any]) -> float:
    frames = float(metrics.get("deflated", 0)) + float(metrics.get("deflate_shared", 0))
    return float(metrics.get("deflate_out_bytes", 0)) / frames if frames else 0.0


def run(quick: bool = False) -> dict[str, Any]:
    count = 60 if quick else DELTAS
    snap, deltas, last_seq = race_deltas(count)
    with Mosquitto() as broker:
        gateway = asyncio.run(_gateway_run(broker.url, snap, deltas, last_seq))
        deflating = asyncio.run(_gateway_run(broker.url, snap, deltas, last_seq, compression=True))
        bare = asyncio.run(_bare_run(broker.url, deltas, last_seq, mode="bare"))
        naive = asyncio.run(_bare_run(broker.url, deltas, last_seq, mode="naive"))
        coalesced = asyncio.run(_bare_run(broker.url, deltas, last_seq, mode="coalesced"))
    return {
        "name": "fanout",
        "deltas": len(deltas),
        "mean_delta_bytes": round(sum(map(len, deltas)) / len(deltas), 1),
        "gateway": gateway,
        "gateway_deflate": deflating,
        "bare_broadcast": bare,
        "naive_server": naive,
        "coalesced_prototype": coalesced,
        "figures": [
            figure(
                f"gateway fan-out, {len(deltas)} deltas to {CLIENTS} websocket clients",
                gateway["frames_per_s"],
                "frames/s",
                target=TARGET_FRAMES_PER_S,
                baselines={
                    "bare websockets broadcast": bare["frames_per_s"],
                    "naive server": naive["frames_per_s"],
                    "coalesced writes (prototype)": coalesced["frames_per_s"],
                },
                note=f"gaps {gateway['gaps']}, coalesced {gateway['gateway'].get('coalesced')}",
            ),
            figure(
                "gateway fan-out per CPU-second of the gateway process",
                gateway["frames_per_server_cpu_s"],
                "frames/s",
                baselines={
                    "bare websockets broadcast": bare["frames_per_server_cpu_s"],
                    "naive server": naive["frames_per_server_cpu_s"],
                    "coalesced writes (prototype)": coalesced["frames_per_server_cpu_s"],
                },
                note="what one idle core would give the gateway; wall time on this machine "
                "includes the clients and the broker",
            ),
            figure(
                "the same, every client asking for permessage-deflate, per CPU-second",
                deflating["frames_per_server_cpu_s"],
                "frames/s",
                note=f"{deflating['frames_per_s']:,.0f} frames/s wall; "
                f"{_wire_bytes(deflating['gateway']):,.0f} bytes a frame on the wire, "
                f"{sum(map(len, deltas)) / len(deltas):,.0f} encoded; gaps {deflating['gaps']}",
            ),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
