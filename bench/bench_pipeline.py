"""A whole race through the whole pipeline, as fast as possible, beside its two baselines.

Producer -> Mosquitto -> projector -> Mosquitto -> gateway -> one websocket
client, each in its own process: the time from the race's resume command to
the client's receipt of the standings of the last seq. In the same run, on
the same broker, with the very messages the producer published (captured in a
first pass): (a) the broker's raw limit, a paho publisher and subscriber
moving them untouched; (b) the naive consumer (paho callbacks, stdlib json,
standings recomputed from every event on each event). Target: under 1 s for
the 4-hour Monterey race.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import time
from typing import Any

import msgspec

from bench import naive_consumer
from bench.bench_broker import connect_fast, paho_client, raw_pubsub
from bench.workload import DEFAULT_RECORDING, figure
from broker.bus import connect, parse_url
from broker.mosquitto import Mosquitto
from chequered.contract import topics
from loadtest import run as loadtest
from loadtest.client import Assignment, LeanProtocol, subscribe_message

TARGET_S = 1.0
REPEAT = 3
CAPTURE_RACE = "bench-capture"
TIMEOUT_S = 120.0


class _Probe(msgspec.Struct):
    type: str = ""
    seq: int = 0
    wall: float = 0.0
    error: str = ""


_probe = msgspec.json.Decoder(_Probe)


async def _capture(url: str, race: str, last_seq: int) -> list[bytes]:
    """Every payload the producer publishes on the race's events topic, in order."""
    payloads: list[bytes] = []
    seq_probe = msgspec.json.Decoder(_SeqProbe)
    async with connect(url, client_id="bench-capture") as bus:
        await bus.subscribe(topics.topic(race, topics.EVENTS))
        await _resume(url, race)
        async with asyncio.timeout(TIMEOUT_S):
            async for message in bus.messages():
                payloads.append(message.payload)
                probe = seq_probe.decode(message.payload)
                seq = probe.events[-1].seq if probe.events else probe.seq
                if seq >= last_seq:
                    break
    return payloads


class _Seq(msgspec.Struct):
    seq: int = 0


class _SeqProbe(msgspec.Struct):
    seq: int = 0
    events: list[_Seq] = []


async def _resume(url: str, race: str) -> float:
    payload = msgspec.json.encode({"cmd": "resume"})
    async with connect(url, client_id=f"bench-control-{race}") as bus:
        started = time.time()
        await bus.publish(topics.topic(race, topics.CONTROL), payload, qos=1)
    return started


async def _through_pipeline(url: str, ws_port: int, race: str, last_seq: int) -> dict[str, float]:
    """Subscribe one client, resume the race, wait for the standings of ``last_seq``."""
    loop = asyncio.get_running_loop()
    subscribed: asyncio.Future[None] = loop.create_future()
    final: asyncio.Future[tuple[float, float]] = loop.create_future()
    frames = [0]
    request = subscribe_message(Assignment(0, race))
    proto_box: list[LeanProtocol] = []

    def on_message(payload: bytes, now: float) -> None:
        frames[0] += 1
        probe = _probe.decode(payload)
        if probe.type == "error" and probe.error == "unknown_race":
            loop.call_later(0.05, proto_box[0].send_text, request)
        elif probe.type in ("snapshot", "subscribed") and not subscribed.done():
            subscribed.set_result(None)
        if probe.type in ("snapshot", "delta") and probe.seq >= last_seq and not final.done():
            final.set_result((now, probe.wall))

    _, proto = await loop.create_connection(
        lambda: LeanProtocol("127.0.0.1", ws_port, "/ws", on_message), "127.0.0.1", ws_port
    )
    proto_box.append(proto)
    try:
        await asyncio.wait_for(proto.opened, TIMEOUT_S)
        proto.send_text(request)
        await asyncio.wait_for(subscribed, TIMEOUT_S)
        frames[0] = 0
        started = await _resume(url, race)
        received, last_wall = await asyncio.wait_for(final, TIMEOUT_S)
    finally:
        proto.close()
    return {
        "seconds": received - started,
        "producer_s": last_wall - started,
        "after_last_emit_s": received - last_wall,
        "frames": frames[0],
    }


def _naive(url: str, payloads: list[bytes], events: int, budget_s: float) -> dict[str, float]:
    address = parse_url(url)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=naive_consumer.consume, args=(child, address.host, address.port, events, budget_s)
    )
    proc.start()
    try:
        if not parent.poll(TIMEOUT_S):
            raise RuntimeError("the naive consumer did not subscribe")
        parent.recv()
        pub = paho_client("bench-naive-pub")
        connect_fast(pub, address.host, address.port)
        pub.loop_start()
        started = time.time()
        for payload in payloads:
            pub.publish(naive_consumer.TOPIC_IN, payload, qos=1)
        if not parent.poll(budget_s * 10 + TIMEOUT_S):
            raise RuntimeError("the naive consumer did not finish")
        result = parent.recv()
        pub.loop_stop()
        pub.disconnect()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    seconds = result["last"] - started
    done = result["events"]
    return {
        "events": done,
        "seconds": seconds,
        "projected_s": naive_consumer.project(done, seconds, events),
    }


async def _pipeline_runs(url: str, races: list[str], last_seq: dict[str, int]) -> dict[str, Any]:
    projector = loadtest._spawn("projector", loadtest._projector_child, url, None)
    gateway = loadtest._spawn("gateway", loadtest._gateway_child, url, "127.0.0.1")
    producer = loadtest._spawn(
        "producer",
        loadtest._producer_child,
        url,
        DEFAULT_RECORDING,
        races,
        None,
        0,
        daemon=False,
    )
    children = [projector, gateway, producer]
    try:
        await loadtest._wait_for(projector, "ready", loadtest.READY_TIMEOUT_S)
        port = await loadtest._wait_for(gateway, "ready", loadtest.READY_TIMEOUT_S)
        sizes = await loadtest._wait_for(producer, "built", loadtest.BUILD_TIMEOUT_S)
        last_seq.update(sizes)
        await loadtest.announced(producer, races)
        # The capture pass runs on the first race; the timed runs on the others.
        capture = await _capture(url, races[0], sizes[races[0]])
        runs = []
        for race in races[1:]:
            runs.append(await _through_pipeline(url, port, race, sizes[race]))
        return {"capture": capture, "runs": runs}
    finally:
        for child in reversed(children):
            loadtest._terminate(child)


def run(quick: bool = False) -> dict[str, Any]:
    repeat = 1 if quick else REPEAT
    races = [CAPTURE_RACE, *(f"bench-pipe-{i}" for i in range(1, repeat + 1))]
    last_seq: dict[str, int] = {}
    with Mosquitto() as broker:
        result = asyncio.run(_pipeline_runs(broker.url, races, last_seq))
        payloads: list[bytes] = result["capture"]
        runs: list[dict[str, float]] = result["runs"]
        raw = raw_pubsub(broker.url, payloads)
        events = last_seq[CAPTURE_RACE]
        naive = _naive(broker.url, payloads, events, 3.0 if quick else naive_consumer.BUDGET_S)
    best = min(r["seconds"] for r in runs)
    median = statistics.median(r["seconds"] for r in runs)
    figures = [
        figure(
            f"whole race ({events} events, {len(payloads)} MQTT messages) producer -> broker -> "
            "projector -> gateway -> 1 websocket client, as fast as possible",
            best,
            "s",
            target=TARGET_S,
            higher_is_better=False,
            baselines={
                "raw broker, same messages": raw["seconds"],
                "naive consumer (projected)": naive["projected_s"],
            },
            note=f"best of {len(runs)}, median {median:.3f} s",
        ),
        figure("pipeline throughput", events / best, "events/s"),
    ]
    return {
        "name": "pipeline",
        "recording": DEFAULT_RECORDING,
        "events": events,
        "messages": len(payloads),
        "mean_message_bytes": round(sum(map(len, payloads)) / len(payloads), 1),
        "runs": runs,
        "raw_broker": raw,
        "naive": naive,
        "figures": figures,
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
