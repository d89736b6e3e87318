"""The broker's raw limit: publish and receive messages with no processing at all.

A paho-mqtt publisher process and a paho-mqtt subscriber process move the
given payloads through Mosquitto at QoS 1 as fast as they can; the time runs
from the first publish to the last message received. The pipeline figures
are held against this: nothing that processes the messages can beat it.

Beside it, what receiving costs through the project's own bus
(``broker.bus``, the projector's and the gateway's reader): the subscriber's
CPU per message while a paho publisher sends QoS 1 messages at the pace of
the target's load (``PACED_RATE`` a second, in bursts of ``PACED_BURST``).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import socket
import time
from multiprocessing.connection import Connection
from typing import Any

from bench.workload import figure, race_events
from broker.bus import connect, parse_url
from broker.mosquitto import Mosquitto
from chequered.contract import events as ev

TOPIC = "bench/raw"
QOS = 1
MAX_INFLIGHT = 1000
TIMEOUT_S = 120.0
BATCH_EVENTS = 100
PUMP_EVERY = 32
"""Messages published between two turns of the publisher's network loop."""
PACED_RATE = 6000
"""Messages a second of the paced publisher: about the target's events a second."""
PACED_BURST = 60
"""Messages the paced publisher sends together (a producer's tick of many races)."""
PACED_BYTES = 700
"""Payload of each paced message: about a producer's batch of a race's events."""


def paho_client(client_id: str) -> Any:
    """A paho-mqtt client set for throughput: wide in-flight window, unbounded queue."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    client.max_inflight_messages_set(MAX_INFLIGHT)
    client.max_queued_messages_set(0)
    return client


def connect_fast(client: Any, host: str, port: int) -> None:
    """Connect with Nagle's algorithm off, as the project's own bus does: without it,
    QoS 1 acknowledgements wait on delayed TCP ACKs and the "limit" measured is 40 ms
    timers, not the broker."""
    client.connect(host, port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _subscriber(conn: Connection, host: str, port: int, expected: int) -> None:
    import threading

    client = paho_client("bench-raw-sub")
    done = threading.Event()
    subscribed = threading.Event()
    state = {"count": 0, "bytes": 0, "first": 0.0, "last": 0.0}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(TOPIC, qos=QOS)

    def on_subscribe(c: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        now = time.time()
        if not state["count"]:
            state["first"] = now
        state["count"] += 1
        state["bytes"] += len(message.payload)
        state["last"] = now
        if state["count"] >= expected:
            done.set()

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    connect_fast(client, host, port)
    client.loop_start()
    subscribed.wait(TIMEOUT_S)
    conn.send("ready")
    done.wait(TIMEOUT_S)
    client.loop_stop()
    client.disconnect()
    conn.send(state)


def _publisher(conn: Connection, host: str, port: int, payloads: list[bytes]) -> None:
    # No network thread: publish() writes straight to the socket, and the loop is
    # turned by hand for the acknowledgements. A second thread would only pass the
    # GIL back and forth on every message.
    client = paho_client("bench-raw-pub")
    connect_fast(client, host, port)
    while not client.is_connected():
        client.loop(0.01)
    conn.recv()  # go
    started = time.time()
    info = None
    for i, payload in enumerate(payloads):
        info = client.publish(TOPIC, payload, qos=QOS)
        if i % PUMP_EVERY == 0:
            client.loop(0)
    deadline = time.monotonic() + TIMEOUT_S
    while info is not None and not info.is_published() and time.monotonic() < deadline:
        client.loop(0.01)
    acked = time.time()
    client.disconnect()
    conn.send({"started": started, "acked": acked})


def raw_pubsub(url: str, payloads: list[bytes]) -> dict[str, float]:
    """Move ``payloads`` publisher -> broker -> subscriber (separate processes), untouched."""
    address = parse_url(url)
    ctx = multiprocessing.get_context("spawn")
    sub_parent, sub_child = ctx.Pipe()
    pub_parent, pub_child = ctx.Pipe()
    sub = ctx.Process(
        target=_subscriber, args=(sub_child, address.host, address.port, len(payloads))
    )
    pub = ctx.Process(target=_publisher, args=(pub_child, address.host, address.port, payloads))
    sub.start()
    pub.start()
    try:
        if not sub_parent.poll(TIMEOUT_S):
            raise RuntimeError("raw subscriber did not subscribe")
        sub_parent.recv()
        pub_parent.send("go")
        if not pub_parent.poll(TIMEOUT_S) or not sub_parent.poll(TIMEOUT_S):
            raise RuntimeError("raw publish/subscribe did not finish")
        pub_result = pub_parent.recv()
        sub_result = sub_parent.recv()
    finally:
        for p in (sub, pub):
            p.join(10)
            if p.is_alive():
                p.kill()
    count = sub_result["count"]
    seconds = sub_result["last"] - pub_result["started"]
    return {
        "messages": count,
        "expected": len(payloads),
        "bytes": sub_result["bytes"],
        "seconds": round(seconds, 6),
        "messages_per_s": round(count / seconds, 1) if seconds > 0 else 0.0,
        "megabytes_per_s": round(sub_result["bytes"] / seconds / 1e6, 2) if seconds > 0 else 0.0,
    }


def _paced_publisher(conn: Connection, host: str, port: int, count: int) -> None:
    client = paho_client("bench-paced-pub")
    connect_fast(client, host, port)
    while not client.is_connected():
        client.loop(0.01)
    conn.recv()  # go
    payload = b"x" * PACED_BYTES
    started = time.monotonic()
    sent = 0
    while sent < count:
        for _ in range(PACED_BURST):
            client.publish(TOPIC, payload, qos=QOS)
            sent += 1
        client.loop(0)
        time.sleep(max(0.0, started + sent / PACED_RATE - time.monotonic()))
    linger = time.monotonic() + 1.0  # the last acknowledgements
    while time.monotonic() < linger:
        client.loop(0.01)
    client.disconnect()


async def _bus_receive(url: str, count: int) -> dict[str, float]:
    address = parse_url(url)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    pub = ctx.Process(target=_paced_publisher, args=(child, address.host, address.port, count))
    pub.start()
    try:
        async with connect(url, client_id="bench-bus-sub") as bus:
            await bus.subscribe(TOPIC, qos=QOS)
            parent.send("go")
            received = 0
            started = 0.0
            async with asyncio.timeout(TIMEOUT_S):
                async for _message in bus.messages():
                    if not received:
                        started = time.process_time()
                    received += 1
                    if received == count:
                        break
            cpu = time.process_time() - started
    finally:
        pub.join(TIMEOUT_S)
        if pub.is_alive():
            pub.kill()
    return {"messages": received, "cpu_s": round(cpu, 6), "cpu_us": cpu / received * 1e6}


def bus_receive(url: str, count: int, repeat: int) -> list[dict[str, float]]:
    """The bus's subscriber CPU per message, ``repeat`` runs of ``count`` paced messages."""
    return [asyncio.run(_bus_receive(url, count)) for _ in range(repeat)]


def run(quick: bool = False) -> dict[str, Any]:
    """Raw limit for a whole race, one event per message and in batches of 100; the bus's
    receiving cost at the target's pace."""
    events = race_events()
    if quick:
        events = events[:5000]
    singles = [ev.encode(e) for e in events]
    batched = [
        ev.encode(ev.Batch(race=events[0].race, events=events[i : i + BATCH_EVENTS]))
        for i in range(0, len(events), BATCH_EVENTS)
    ]
    with Mosquitto() as broker:
        one = raw_pubsub(broker.url, singles)
        many = raw_pubsub(broker.url, batched)
        paced = bus_receive(broker.url, 6_000 if quick else 30_000, 1 if quick else 3)
    n = len(events)
    receive_us = min(r["cpu_us"] for r in paced)
    return {
        "name": "broker",
        "events": n,
        "single": one,
        "batched": many,
        "bus_receive": paced,
        "figures": [
            figure("raw MQTT QoS 1, one event per message", one["messages_per_s"], "messages/s"),
            figure(
                f"raw MQTT QoS 1, batches of {BATCH_EVENTS} events",
                n / many["seconds"] if many["seconds"] else 0.0,
                "events/s",
                baselines={"one event per message": n / one["seconds"] if one["seconds"] else 0},
            ),
            figure(
                f"bus subscriber CPU per QoS 1 message, {PACED_RATE:,}/s of {PACED_BYTES} B",
                receive_us,
                "us",
                higher_is_better=False,
            ),
        ],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=1))
