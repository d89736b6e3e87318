"""Observability: the projector's and the gateway's metrics, in Prometheus text format.

Each service is scraped over HTTP after known traffic: the body must be
valid text exposition (checked line by line here, and read by the reference
parser), the counters the operations guide lists must be there with the
right types, and their values must agree with what was done to the service.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect as ws_connect

from broker.bus import connect
from broker.mosquitto import Mosquitto, free_port
from chequered.contract import events as ev
from chequered.contract import topics
from tests.conftest import REPO, requires_mosquitto
from tests.support.feed import tiny_race
from tests.support.gateway import running_gateway
from tests.support.procs import Service, parse_metrics, scrape, wait_subscribed
from tests.support.standings import Ticker
from tests.support.wait import until

pytestmark = requires_mosquitto

WAIT_S = 30.0
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
SAMPLE = re.compile(
    r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?P<labels>[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\\n]*")*)?\})? (?P<value>\S+)$'
)
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

PROJECTOR_METRICS = {
    "chequered_projector_messages_in_total": "counter",
    "chequered_projector_events_in_total": "counter",
    "chequered_projector_applied_total": "counter",
    "chequered_projector_duplicates_total": "counter",
    "chequered_projector_gaps_total": "counter",
    "chequered_projector_dead_letters_total": "counter",
    "chequered_projector_reconnects_total": "counter",
    "chequered_projector_snapshots_out_total": "counter",
    "chequered_projector_deltas_out_total": "counter",
    "chequered_projector_checkpoints_total": "counter",
    "chequered_projector_checkpoint_errors_total": "counter",
    "chequered_projector_races": "gauge",
    "chequered_projector_connected": "gauge",
    "chequered_projector_lag_seconds": "gauge",
}
GATEWAY_METRICS = {
    "chequered_gateway_connections_total": "counter",
    "chequered_gateway_frames_out_total": "counter",
    "chequered_gateway_bytes_out_total": "counter",
    "chequered_gateway_coalesced_total": "counter",
    "chequered_gateway_frames_dropped_total": "counter",
    "chequered_gateway_broker_messages_total": "counter",
    "chequered_gateway_bad_payloads_total": "counter",
    "chequered_gateway_gaps_total": "counter",
    "chequered_gateway_resyncs_total": "counter",
    "chequered_gateway_broker_connects_total": "counter",
    "chequered_gateway_deflated_total": "counter",
    "chequered_gateway_deflate_shared_total": "counter",
    "chequered_gateway_deflate_in_bytes_total": "counter",
    "chequered_gateway_deflate_out_bytes_total": "counter",
    "chequered_gateway_clients": "gauge",
    "chequered_gateway_races": "gauge",
    "chequered_gateway_broker_connected": "gauge",
    "chequered_gateway_queued_frames": "gauge",
    "chequered_gateway_queued_bytes": "gauge",
    "chequered_gateway_lag_seconds": "gauge",
    "chequered_gateway_errors_total": "counter",
    "chequered_gateway_closes_total": "counter",
    "chequered_gateway_rejected_total": "counter",
}


def check_exposition(text: str) -> dict[str, str]:
    """Validate text format 0.0.4 line by line; return each family's declared type."""
    assert text.endswith("\n"), "the exposition ends with a line feed"
    types: dict[str, str] = {}
    helped: set[str] = set()
    sampled: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME.fullmatch(name) and name not in helped, where
            assert len(line.split(" ", 3)) == 4 and line.split(" ", 3)[3].strip(), where
            helped.add(name)
        elif line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4 and parts[3] in TYPES, where
            assert parts[2] not in types and parts[2] not in sampled, f"{where}: TYPE too late"
            types[parts[2]] = parts[3]
        elif line.startswith("#") or not line:
            assert not line, f"{where}: stray comment or blank line"
        else:
            match = SAMPLE.match(line)
            assert match, where
            float(match["value"])  # a number, +Inf, -Inf or NaN
            name = match["name"]
            assert name in types, f"{where}: sample before its TYPE"
            if types[name] == "counter":
                assert float(match["value"]) >= 0, where
            sampled.add(name)
    assert helped == set(types), "every family has HELP and TYPE"
    # And the reference parser reads the whole of it.
    families = list(text_string_to_metric_families(text))
    assert families
    return types


def http_get(port: int, path: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read().decode()


async def test_projector_metrics(mosquitto: Mosquitto, tmp_path: Path) -> None:
    race = "metrics-race"
    good = tiny_race(race, cars=3, laps=3)
    port = free_port()
    projector = Service(
        "projector",
        ["project", "--broker", mosquitto.url, "--checkpoint-dir", str(tmp_path / "ckpt"),
         "--client-id", "metrics-projector", "--metrics-port", str(port)],
        tmp_path,
    )  # fmt: skip
    try:
        projector.start()
        wait_subscribed(port, WAIT_S)

        def counted(name: str) -> float:
            return parse_metrics(scrape(port))[f"chequered_projector_{name}_total"]

        async with connect(mosquitto.url) as pub:
            events_topic = topics.topic(race, topics.EVENTS)
            half = len(good) // 2
            for n, event in enumerate(good):
                if n == half:
                    # The first board published (a snapshot), the rest folds into a delta.
                    await until(lambda: counted("snapshots_out") >= 1, WAIT_S, "a snapshot")
                stamped = msgspec.structs.replace(event, wall=time.time())
                await pub.publish(events_topic, ev.encode(stamped))
            await pub.publish(events_topic, ev.encode(good[3]))  # a redelivery
            await pub.publish(events_topic, b"garbage")  # a dead letter
            skipped = msgspec.structs.replace(good[-1], seq=good[-1].seq + 3)
            await pub.publish(events_topic, ev.encode(skipped))  # two seqs missing

            def settled() -> bool:
                # Every message counted, and the flush after the last one published.
                return counted("messages_in") == len(good) + 3 and counted("deltas_out") >= 1

            await until(settled, WAIT_S, "every message counted")
        status, ctype, text = await asyncio.to_thread(http_get, port, "/metrics")
        assert status == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
        types = check_exposition(text)
        assert projector.stop() == 0
    finally:
        if projector.alive:
            projector.kill()
    for name, kind in PROJECTOR_METRICS.items():
        family = name.removesuffix("_total")
        assert types.get(name, types.get(family)) == kind, name
    values = parse_metrics(text)
    assert values["chequered_projector_events_in_total"] == len(good) + 2
    assert values["chequered_projector_applied_total"] == len(good) + 1
    assert values["chequered_projector_duplicates_total"] == 1
    assert values["chequered_projector_gaps_total"] == 2
    # The bad payload, and the gap (its first event after the hole goes to the dead letters too).
    assert values["chequered_projector_dead_letters_total"] == 2
    assert values["chequered_projector_connected"] == 1
    assert values["chequered_projector_races"] == 1
    assert values["chequered_projector_reconnects_total"] == 0
    assert values["chequered_projector_deltas_out_total"] >= 1
    assert values["chequered_projector_snapshots_out_total"] >= 1
    # Stamped as they were sent: the lag is how long folding took, never negative.
    assert 0 <= values["chequered_projector_lag_seconds"] < WAIT_S
    documented(text)


async def test_gateway_metrics(mosquitto: Mosquitto) -> None:
    race = "metrics-gateway"
    ticker = Ticker(race)
    async with connect(mosquitto.url) as pub, running_gateway(mosquitto.url) as (gw, port):
        await ticker.publish_snapshot(pub)
        await until(lambda: race in gw.races, WAIT_S, "the race at the gateway")
        url = f"ws://127.0.0.1:{port}/ws"
        async with ws_connect(url) as one, ws_connect(url) as two:
            await one.send(json.dumps({"op": "subscribe", "race": race}))
            await two.send("not json")
            await two.recv()
            assert json.loads(await one.recv())["type"] == "snapshot"
            for _ in range(5):
                await ticker.publish_step(pub)
            for _ in range(5):
                assert json.loads(await one.recv())["type"] == "delta"
            await pub.publish(topics.topic(race, topics.STANDINGS_DELTA), b"garbage")
            await until(lambda: gw.metrics.bad_payloads.value == 1, WAIT_S, "the bad payload")
            status, ctype, text = await asyncio.to_thread(http_get, port, "/metrics")
        await until(lambda: not gw.clients, WAIT_S, "the clients gone")
        _, _, after = await asyncio.to_thread(http_get, port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain") and "version=0.0.4" in ctype
    types = check_exposition(text)
    check_exposition(after)
    for name, kind in GATEWAY_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert types.get(name, types.get(family)) == kind, name
    values = parse_metrics(text)
    assert values["chequered_gateway_clients"] == 2
    assert values["chequered_gateway_connections_total"] == 2
    assert values["chequered_gateway_races"] == 1
    assert values["chequered_gateway_broker_connected"] == 1
    assert values["chequered_gateway_bad_payloads_total"] == 1
    assert values['chequered_gateway_errors_total{error="invalid_json"}'] == 1
    assert values["chequered_gateway_frames_out_total"] >= 1 + 5 + 1
    assert values["chequered_gateway_broker_messages_total"] >= 1 + 5 * 2 + 1
    assert 0 <= values["chequered_gateway_lag_seconds"] < WAIT_S
    documented(text)
    assert parse_metrics(after)["chequered_gateway_clients"] == 0
    assert parse_metrics(after)['chequered_gateway_closes_total{code="1000"}'] == 2


def documented(text: str) -> None:
    """Every family a service exposes has its row in docs/OPERATIONS.md ("Metrics")."""
    guide = (REPO / "docs" / "OPERATIONS.md").read_text()
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        assert f"`{name}`" in guide, f"{name}: document it in docs/OPERATIONS.md, Metrics"


def test_every_metric_is_explained_in_the_operations_guide() -> None:
    """Each counter and gauge has a line in docs/OPERATIONS.md saying what to do when it moves."""
    guide = (REPO / "docs" / "OPERATIONS.md").read_text()
    for name in [*PROJECTOR_METRICS, *GATEWAY_METRICS]:
        assert f"`{name}`" in guide, name
