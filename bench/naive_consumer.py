"""The naive baseline consumer: what the projector is measured against.

paho-mqtt callbacks, the standard library's json, and on every event the
whole standings recomputed from every event so far, then published. This is
the obvious first version of a live leaderboard; its cost grows with the
square of the race's length, so a run stops at a time budget and the full
race's time is projected from the events it did fold.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

TOPIC_IN = "bench/naive/events"
TOPIC_OUT = "bench/naive/standings"
BUDGET_S = 10.0


def naive_standings(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Standings from scratch: per car laps, time of last crossing, status; sorted."""
    cars: dict[str, dict[str, Any]] = {}
    for e in events:
        kind = e.get("kind")
        if kind == "session_open":
            for entry in e["entries"]:
                cars[entry["number"]] = {
                    "car": entry["number"],
                    "cls": entry["cls"],
                    "laps": 0,
                    "t": 0,
                    "status": "running",
                    "best": None,
                    "last": None,
                }
        elif kind == "lap" and e["car"] in cars:
            car = cars[e["car"]]
            car["laps"] = e["lap"]
            car["t"] = e["t_ms"]
            car["last"] = e.get("lap_ms")
            if car["last"] is not None and (car["best"] is None or car["last"] < car["best"]):
                car["best"] = car["last"]
        elif kind == "pit_in" and e["car"] in cars:
            cars[e["car"]]["status"] = "in_pit"
        elif kind == "pit_out" and e["car"] in cars:
            cars[e["car"]]["status"] = "running"
        elif kind == "retire" and e["car"] in cars:
            cars[e["car"]]["status"] = "retired"
        elif kind == "finish" and e["car"] in cars:
            cars[e["car"]]["status"] = "finished"
    ordered = sorted(cars.values(), key=lambda c: (c["status"] == "retired", -c["laps"], c["t"]))
    for position, car in enumerate(ordered, 1):
        car["position"] = position
    return ordered


def consume(conn: Connection, host: str, port: int, expected_events: int, budget_s: float) -> None:
    """Process entry: subscribe, fold naively until every event or the budget is spent."""
    from bench.bench_broker import connect_fast, paho_client

    client = paho_client("bench-naive")
    done = threading.Event()
    subscribed = threading.Event()
    seen: list[dict[str, Any]] = []
    state = {"first": 0.0, "last": 0.0, "published": 0}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        c.subscribe(TOPIC_IN, qos=1)

    def on_subscribe(c: Any, userdata: Any, mid: Any, reasons: Any, props: Any) -> None:
        subscribed.set()

    def on_message(c: Any, userdata: Any, message: Any) -> None:
        if done.is_set():
            return
        if not state["first"]:
            state["first"] = time.time()
        body = json.loads(message.payload)
        for event in body["events"] if body.get("kind") == "batch" else [body]:
            seen.append(event)
            standings = naive_standings(seen)
            c.publish(TOPIC_OUT, json.dumps({"seq": event["seq"], "cars": standings}), qos=0)
            state["published"] += 1
            state["last"] = time.time()
            if len(seen) >= expected_events or state["last"] - state["first"] > budget_s:
                done.set()
                return

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    connect_fast(client, host, port)
    client.loop_start()
    subscribed.wait(30)
    conn.send("ready")
    done.wait(budget_s * 10 + 60)
    client.loop_stop()
    client.disconnect()
    conn.send({"events": len(seen), "first": state["first"], "last": state["last"]})


def project(events_done: int, seconds: float, events_total: int) -> float:
    """Time for the whole race, from a partial run of a cost that grows as n squared."""
    if events_done <= 0:
        return float("inf")
    if events_done >= events_total:
        return seconds
    return seconds * (events_total / events_done) ** 2
