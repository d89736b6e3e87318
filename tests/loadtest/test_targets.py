"""The load test pointed at a service it did not start: a websocket endpoint, an MQTT consumer.

Our own projector and gateway stand in for the user's service: they run in
processes of their own, started by the test, and the load test is given only
the broker and the endpoint. The same runs show the open-loop arrival of
clients and a ramp of races, whose steps are the points of the load curve.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.mosquitto import Mosquitto, binary, free_port
from chequered.cli import main as cli
from loadtest import run as loadtest
from loadtest.client import Assignment, ClientState, Worker, WorkerConfig
from loadtest.probe import ProbeConfig, observe, race_of, subscriptions
from loadtest.run import LoadConfig, _Child
from loadtest.stats import Aggregate, WorkerTick, new_histogram, tick_encoder
from simulator.live.faults import FaultRates

LOAD_RECORDING = "imsa-2022-laguna-seca-race"
"""A real race replayed as recorded: 2.7 hours, 10,000 events; 10 s at 1000x."""

pytestmark = pytest.mark.skipif(binary() is None, reason="mosquitto is not installed")


@pytest.fixture
def service(mosquitto: Mosquitto) -> Iterator[tuple[str, int]]:
    """Someone's service: a projector and a gateway in processes of their own."""
    port = free_port()
    projector = loadtest._spawn(
        "projector", loadtest._projector_child, mosquitto.url, None, "their-projector"
    )
    gateway = loadtest._spawn("gateway", loadtest._gateway_child, mosquitto.url, "127.0.0.1", port)
    children: list[_Child] = [projector, gateway]
    try:
        asyncio.run(loadtest._wait_for(projector, "ready", loadtest.READY_TIMEOUT_S))
        asyncio.run(loadtest._wait_for(gateway, "ready", loadtest.READY_TIMEOUT_S))
        yield mosquitto.url, port
    finally:
        for child in children:
            loadtest._terminate(child)


@pytest.mark.slow
def test_the_load_test_drives_a_websocket_service_it_did_not_start(
    service: tuple[str, int], tmp_path: Path
) -> None:
    """Three races ramped in over 2 s, ten clients arriving at 10 a second."""
    url, port = service
    config = LoadConfig(
        races=3, speed=1000.0, clients=10, duration_s=5.0, out=tmp_path, broker=url,
        recording=LOAD_RECORDING, target=f"ws://127.0.0.1:{port}/ws", connect_rate=10.0,
        ramp_s=2.0,
    )  # fmt: skip
    report = loadtest.run(config)
    assert report["mode"] == "target"
    # Nothing of ours was measured: no projector or gateway process, no fold count.
    assert set(report["processes"]) == {"producer", "clients", "loadtest"}
    assert report["events"]["folded"] is None
    ws = report["websocket"]
    assert ws["connected"] == 10 and ws["failed"] == 0
    loss = report["loss"]
    assert loss["lossless"] is True, loss
    assert report["latency_ms"]["count"] > 0
    # Every client reached the last seq its race's service published: the producer's own.
    per_race = report["events"]["per_race"]
    for client in report["per_client"]:
        assert client["last_seq"] == per_race[client["race"]]["standings_seq"]
    assert all(r["standings_seq"] == r["produced_seq"] > 0 for r in per_race.values())
    # The ramp: the load curve has a point per number of races running, in order of load.
    curve = report["load_curve"]
    assert max(p["races"] for p in curve) == 3 and len({p["races"] for p in curve}) >= 2
    offered = [p["offered_events_per_s"] for p in curve]
    assert offered == sorted(offered)
    assert any(p["messages_per_s"] > 0 and p["p99_ms"] > 0 for p in curve)
    # Open loop: the clients were still arriving while the races ran.
    series = report["timeseries"]
    assert series[0]["clients"] < 10 and max(row["clients"] for row in series) == 10
    page = (tmp_path / "report.html").read_text()
    assert "Throughput against offered load" in page and "p99 latency against offered" in page


@pytest.mark.slow
def test_the_load_test_probes_an_mqtt_consumer_by_the_standings_it_publishes(
    service: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = service
    config = LoadConfig(races=2, speed=1000.0, duration_s=4.0, out=tmp_path, broker=url,
                        recording=LOAD_RECORDING, target_mqtt=True)  # fmt: skip
    report = loadtest.run(config)
    assert report["mode"] == "target-mqtt"
    assert report["config"]["clients"] == 0
    assert set(report["processes"]) == {"producer", "clients", "loadtest"}
    loss = report["loss"]
    assert loss["connected"] == 2 and loss["lossless"] is True, loss
    assert loss["gaps"] == loss["duplicates"] == 0
    assert report["latency_ms"]["count"] > 0
    per_race = report["events"]["per_race"]
    assert all(r["standings_seq"] == r["produced_seq"] > 0 for r in per_race.values())
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["mode"] == "target-mqtt"


@pytest.mark.slow
def test_a_load_test_on_a_hostile_feed_reports_the_truth_our_projector_counted(
    tmp_path: Path,
) -> None:
    rates = FaultRates(seed=5, duplicate=0.05, drop=0.05, malformed=0.05)
    # Counted against the injector's record, so the projector must not heal the gaps
    # by asking for resends (a replay would be injected into again, and counted anew).
    config = LoadConfig(races=1, speed=1000.0, clients=4, duration_s=4.0, out=tmp_path,
                        recording=LOAD_RECORDING, faults=rates,
                        projector_settings=(("resend_on_gap", "false"),))  # fmt: skip
    report = loadtest.run(config)
    truth = report["injected"]["load-0001"]
    assert set(truth["injected"]) == {"duplicate", "drop", "malformed"}
    projector = report["component_metrics"]["projector"]
    expected = truth["expected"]
    assert expected["gaps"] > 0 and expected["duplicates"] > 0
    assert projector["gaps"] == expected["gaps"]
    assert projector["duplicates"] == expected["duplicates"]
    assert projector["dead_letters"] == expected["malformed"] + expected["gap_events"]
    # The clients follow the projector's own chain of standings: what it folded is
    # delivered without a gap, whatever was lost before it.
    assert report["loss"]["gaps"] == 0 and report["websocket"]["connected"] == 4
    assert any(line.startswith("injected  load-0001: ") for line in loadtest.summary_lines(report))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "ws://127.0.0.1:1/ws"], "--target needs --broker"),
        (["--target-mqtt"], "--target-mqtt needs --broker"),
        (["--broker", "mqtt://127.0.0.1:1", "--target", "http://x/ws"], "give a ws://"),
        (["--broker", "mqtt://127.0.0.1:1", "--target", "wss://x/ws"], "--client-impl websockets"),
        (["--broker", "mqtt://127.0.0.1:1", "--probe", "a/{race}"], "--probe is for"),
        (["--broker", "mqtt://127.0.0.1:1", "--target-mqtt", "--probe", "a/b"], "put {race}"),
        (["--broker", "mqtt://127.0.0.1:1", "--target", "ws://h:1/", "--target-mqtt"],
         "give one service"),
        (["--ramp", "0"], "must be positive"),
        (["--drop", "0.1", "--reorder-window", "99"], "--reorder-window 99: give 1 to 64"),
    ],
)  # fmt: skip
def test_bad_target_arguments_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = cli.main(["loadtest", *args])
    except SystemExit as exc:
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2 and message in err and "Traceback" not in err
    assert err.count("\n") == 1 or "usage:" in err


# -- the probe and the curve, without I/O ------------------------------------------------


def test_the_probe_reads_the_documented_topics_or_the_one_named() -> None:
    plain = ProbeConfig("mqtt://x", ("a", "b"))
    assert subscriptions(plain) == ["chequered/v2/+/standings", "chequered/v2/+/standings/delta"]
    assert race_of(plain, "chequered/v2/a/standings/delta") == "a"
    named = ProbeConfig("mqtt://x", ("a", "b"), "acme/{race}/board")
    assert subscriptions(named) == ["acme/a/board", "acme/b/board"]
    assert race_of(named, "acme/b/board") == "b"
    assert race_of(named, "acme/b/other") is None


def test_the_probe_chains_deltas_and_counts_what_it_cannot_read() -> None:
    worker = Worker(WorkerConfig(worker=0, url="", clients=(Assignment(0, "a"),)), lambda _: None)
    state: ClientState = worker.states[0]
    observe(state, worker, b'{"type":"snapshot","seq":5,"wall":1.0}', True, 2.0)
    observe(state, worker, b'{"type":"delta","seq":7,"prev_seq":5,"wall":2.0}', False, 2.5)
    observe(state, worker, b'{"type":"delta","seq":9,"prev_seq":8,"wall":2.0}', False, 2.5)
    # The standings trail their deltas (held back a moment): not a duplicate.
    observe(state, worker, b'{"type":"snapshot","seq":7,"wall":2.0}', False, 2.6)
    observe(state, worker, b'{"seq":12,"wall":3.0}', False, 3.1)  # a payload of their own
    observe(state, worker, b"garbage", False, 3.2)
    chain = state.chain
    assert (chain.last, chain.gaps, chain.missed_seqs, chain.resyncs) == (12, 1, 1, 1)
    assert state.errors == 1 and state.messages == 6 and chain.duplicates == 0
    # The retained snapshot's age is not a latency; the two deltas and the late view are.
    assert worker.recorder.take_histogram().get_total_count() == 3


def test_the_load_curve_merges_the_intervals_of_each_step_of_the_ramp() -> None:
    agg = Aggregate(started=0.0)
    for t, races, produced, latency_ms in [(1, 1, 100, 1), (2, 1, 100, 1), (3, 2, 400, 50)]:
        hist = new_histogram()
        hist.record_value(latency_ms * 1000)
        agg.add(WorkerTick(worker=0, wall=t - 0.5, connected=4, failed=0, messages=10 * races,
                           received_bytes=0, negative=0, histogram=hist.encode(), faults=0,
                           race_min_seq={}))  # fmt: skip
        agg.wire(t - 0.5, produced=produced, folded=produced)
        agg.running(t - 0.5, races)
    curve = agg.load_curve(stepped=True)
    assert [(p["races"], p["offered_events_per_s"], p["messages_per_s"]) for p in curve] == [
        (1, 100.0, 10.0),
        (2, 400.0, 20.0),
    ]
    assert curve[0]["p99_ms"] < 2 < 40 < curve[1]["p99_ms"]
    assert len(agg.load_curve(stepped=False)) == 3
    assert [p["races"] for p in agg.load_curve(stepped=True, until_s=2.0)] == [1]
    assert tick_encoder.encode(WorkerTick(worker=0, wall=0, connected=0, failed=0, messages=0,
                                          received_bytes=0, negative=0, histogram=b"", faults=0,
                                          race_min_seq={}, race_max_seq={"a": 3}))  # fmt: skip
