"""The load test: sequence checking, latency aggregation, the report, the client, a real run."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import py_compile
import time
from pathlib import Path

import msgspec
import pytest
from hdrh.histogram import HdrHistogram
from websockets.asyncio.server import ServerConnection, serve

from broker.mosquitto import binary
from chequered.cli import main as cli
from loadtest import plot as loadplot
from loadtest import run as loadtest
from loadtest.client import (
    Assignment,
    ClientState,
    LeanProtocol,
    Recorder,
    WorkerConfig,
    run_lean_client,
    run_websockets_client,
    worker_main,
)
from loadtest.run import LoadConfig
from loadtest.stats import (
    Aggregate,
    ClientResult,
    LatencyTally,
    SeqChain,
    WorkerTick,
    histogram_buckets,
    latency_summary,
    loss_summary,
    new_histogram,
    record_latency,
    tick_decoder,
    tick_encoder,
)

REPO = Path(__file__).resolve().parents[2]
LOAD_RECORDING = "imsa-2022-laguna-seca-race"
"""A real race replayed as recorded: 2.7 hours, 10,000 events; 10 s at 1000x."""

# -- sequence checking -------------------------------------------------------------


def test_a_contiguous_chain_has_no_faults() -> None:
    chain = SeqChain()
    assert chain.snapshot(10)
    assert chain.delta(12, 10)
    assert chain.delta(13, 12)
    assert chain.delta(20, 13)  # one delta can cover several events (a batch)
    assert chain.faults == 0 and chain.last == 20


def test_a_delta_past_the_last_seq_is_a_gap_counting_the_missed_seqs() -> None:
    chain = SeqChain()
    chain.snapshot(5)
    chain.delta(6, 5)
    assert chain.delta(12, 9)  # 7..9 never arrived
    assert (chain.gaps, chain.missed_seqs, chain.duplicates) == (1, 3, 0)
    assert chain.last == 12
    assert chain.delta(13, 12)
    assert chain.gaps == 1


def test_a_delta_at_or_before_the_last_seq_is_a_duplicate_and_not_applied() -> None:
    chain = SeqChain()
    chain.snapshot(5)
    chain.delta(7, 5)
    assert not chain.delta(7, 5)
    assert not chain.delta(6, 5)
    assert (chain.duplicates, chain.gaps, chain.last) == (2, 0, 7)


def test_an_overlapping_delta_and_an_early_delta_are_faults() -> None:
    chain = SeqChain()
    assert chain.delta(3, 2)
    assert chain.early == 1
    chain.delta(9, 3)
    chain.delta(12, 8)  # starts before 9: the chain is broken
    assert chain.overlaps == 1
    assert chain.faults == 2


def test_a_later_snapshot_is_a_resync_and_a_stale_one_a_duplicate() -> None:
    chain = SeqChain()
    chain.snapshot(4)
    chain.delta(6, 4)
    assert chain.snapshot(30)
    assert chain.resyncs == 1 and chain.last == 30
    assert not chain.snapshot(10)
    assert chain.duplicates == 1 and chain.last == 30
    assert chain.delta(31, 30) and chain.gaps == 0


# -- latency and aggregation ------------------------------------------------------------


def test_latency_summary_is_ordered_and_in_milliseconds() -> None:
    hist = new_histogram()
    for ms in range(1, 1001):
        assert record_latency(hist, ms / 1000)
    assert not record_latency(hist, -0.001)
    s = latency_summary(hist)
    assert s["count"] == 1000
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["p99.9"] <= s["max"]
    assert 495 <= s["p50"] <= 505
    assert 985 <= s["p99"] <= 995
    assert 999 <= s["max"] <= 1001
    buckets = histogram_buckets(hist)
    assert sum(c for _, c in buckets) == 1000
    assert [b for b, _ in buckets] == sorted(b for b, _ in buckets)


def test_a_tally_records_the_same_histogram_as_recording_each_value() -> None:
    import random

    rng = random.Random(7)
    values = [rng.lognormvariate(-4, 2) for _ in range(5000)] + [0.0, 1e-7, 5000.0]
    direct = new_histogram()
    tally = LatencyTally()
    for v in values:
        record_latency(direct, v)
        tally.add(v)
    tally.add(-0.5)
    bulk = new_histogram()
    tally.record_into(bulk)
    assert tally.counts == {} and tally.negative == 1
    assert bulk.get_total_count() == direct.get_total_count() == len(values)
    assert latency_summary(bulk) == latency_summary(direct)

    def buckets(hist: HdrHistogram) -> list[tuple[int, int]]:
        return [
            (x.value_iterated_to, x.count_added_in_this_iter_step)
            for x in hist.get_recorded_iterator()
        ]

    assert buckets(bulk) == buckets(direct)
    assert tally.sum_s == pytest.approx(sum(values))


def test_an_empty_histogram_summarises_to_zeros() -> None:
    s = latency_summary(new_histogram())
    assert s["count"] == 0 and s["p99"] == 0.0
    assert histogram_buckets(new_histogram()) == []


def _tick(worker: int, wall: float, latencies_ms: list[float], **kw: object) -> WorkerTick:
    hist = new_histogram()
    for ms in latencies_ms:
        record_latency(hist, ms / 1000)
    fields: dict[str, object] = {
        "worker": worker,
        "wall": wall,
        "connected": 3,
        "failed": 0,
        "messages": len(latencies_ms),
        "received_bytes": 100 * len(latencies_ms),
        "negative": 0,
        "histogram": hist.encode() if latencies_ms else b"",
        "faults": 0,
        "race_min_seq": {},
    }
    fields.update(kw)
    return WorkerTick(**fields)  # type: ignore[arg-type]


def test_ticks_of_several_workers_merge_into_totals_and_intervals() -> None:
    agg = Aggregate(started=1000.0)
    for tick in (
        _tick(0, 1000.9, [1, 2, 3], race_min_seq={"a": 5, "b": 7}),
        _tick(1, 1001.0, [4, 5], race_min_seq={"a": 3}),
        _tick(0, 1001.9, [100], race_min_seq={"a": 9, "b": 9}, faults=2),
    ):
        agg.add(tick_decoder.decode(tick_encoder.encode(tick)))
    agg.wire(1000.5, produced=40, folded=39)
    assert agg.messages == 6 and agg.received_bytes == 600
    assert agg.total.get_total_count() == 6
    assert agg.clients_connected == 6
    assert agg.fault_count == 2
    assert agg.min_seq() == {"a": 3, "b": 9}
    rows = agg.series()
    assert [r["t"] for r in rows] == [1.0, 2.0]
    assert rows[0]["messages_per_s"] == 5 and rows[1]["messages_per_s"] == 1
    assert rows[0]["events_per_s"] == 40 and rows[0]["folded_per_s"] == 39
    assert rows[1]["p99_ms"] >= 99


def test_loss_summary_counts_faults_and_clients_left_behind() -> None:
    clients = [
        ClientResult(client=0, race="a", connected=True, last_seq=50),
        ClientResult(client=1, race="a", connected=True, last_seq=40, gaps=1, missed_seqs=3),
        ClientResult(client=2, race="b", connected=True, last_seq=70, duplicates=2),
    ]
    loss = loss_summary(clients, {"a": 50, "b": 70})
    assert loss["gaps"] == 1 and loss["missed_seqs"] == 3 and loss["duplicates"] == 2
    assert loss["clients_with_faults"] == 2
    assert loss["clients_behind"] == 1
    assert loss["lossless"] is False
    clean = loss_summary(clients[:1], {"a": 50})
    assert clean["lossless"] is True


# -- the client against a real websockets server ------------------------------------------


def _frame(kind: str, seq: int, prev: int = 0, *, pad: int = 0) -> str:
    body: dict[str, object] = {"type": kind, "race": "r", "seq": seq, "wall": time.time()}
    if kind == "delta":
        body["prev_seq"] = prev
    body["cars"] = [{"car": str(i), "pad": "x" * pad} for i in range(3)]
    return json.dumps(body)


async def _script(ws: ServerConnection) -> None:
    """A gateway stand-in: checks the subscribe, then sends every kind of frame."""
    request = json.loads(await ws.recv())
    assert request == {"op": "subscribe", "race": "r"}
    await ws.send(_frame("snapshot", 1))
    await ws.ping(b"are you there")
    await ws.send(_frame("delta", 2, 1))
    await ws.send(_frame("delta", 3, 2, pad=70_000))  # 64-bit length
    await ws.send(_frame("delta", 4, 3, pad=300))  # 16-bit length
    text = _frame("delta", 6, 5)  # a gap: 5 never sent
    await ws.send([text[:10], text[10:20], text[20:]])  # fragmented
    await ws.send(_frame("delta", 6, 5))  # a duplicate
    await ws.send(b"not json")
    await ws.close()


@pytest.mark.parametrize("impl", ["lean", "deflate", "websockets"])
async def test_a_client_reads_every_frame_and_checks_the_chain(impl: str) -> None:
    async with serve(_script, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/ws"
        state = ClientState(Assignment(0, "r"))
        recorder = Recorder()
        stop = asyncio.Event()
        if impl == "websockets":
            await asyncio.wait_for(run_websockets_client(state, recorder, url, stop=stop), 10)
        else:
            # With permessage-deflate (websockets compresses each frame), the lean reader
            # inflates them.
            lean = run_lean_client(state, recorder, url, stop=stop, compression=impl == "deflate")
            await asyncio.wait_for(lean, 10)
    assert state.connected
    assert state.messages == 7 and state.snapshots == 1
    assert state.chain.last == 6
    assert (state.chain.gaps, state.chain.missed_seqs, state.chain.duplicates) == (1, 1, 1)
    assert state.errors == 1
    assert recorder.take_histogram().get_total_count() == 4  # the four new deltas
    assert state.error == "closed by the server"


async def test_a_refused_handshake_fails_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    async with server:
        _, proto = await loop.create_connection(
            lambda: LeanProtocol("127.0.0.1", port, "/ws", lambda p, t: None), "127.0.0.1", port
        )
        with pytest.raises(ConnectionError, match="404"):
            await asyncio.wait_for(proto.opened, 5)


def test_a_client_process_reports_ticks_and_final_results() -> None:
    """Several clients in one spawned process, against a real server in another."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=_serve_stream, args=(ready,), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=30)
        parent, child = ctx.Pipe()
        cfg = WorkerConfig(
            worker=0,
            url=f"ws://127.0.0.1:{port}/ws",
            clients=tuple(Assignment(i, f"r{i % 2}") for i in range(6)),
            interval_s=0.2,
        )
        proc = ctx.Process(target=worker_main, args=(cfg, child), daemon=True)
        proc.start()
        agg = Aggregate(started=time.time())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert parent.poll(10)
            agg.add(tick_decoder.decode(parent.recv_bytes()))
            if agg.min_seq() == {"r0": 20, "r1": 20} and agg.clients_connected == 6:
                break
        parent.send("stop")
        while not agg.finals:
            assert parent.poll(10)
            agg.add(tick_decoder.decode(parent.recv_bytes()))
        proc.join(10)
    finally:
        server.terminate()
        server.join(10)
    assert len(agg.clients) == 6
    assert all(c.connected and c.last_seq == 20 and c.gaps == 0 for c in agg.clients)
    assert agg.messages == 6 * 20
    assert agg.total.get_total_count() == 6 * 19


def _serve_stream(ready: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        await ws.send(_frame("snapshot", 1).replace('"race": "r"', f'"race": "{request["race"]}"'))
        for seq in range(2, 21):
            await ws.send(_frame("delta", seq, seq - 1))
        await ws.wait_closed()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", 0) as server:
            ready.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


# -- the whole load test, for real ----------------------------------------------------

REPORT_KEYS = {
    "version",
    "started",
    "config",
    "machine",
    "timing",
    "events",
    "websocket",
    "latency_ms",
    "latency_negative",
    "latency_histogram",
    "loss",
    "processes",
    "cpu_cores_used",
    "component_metrics",
    "timeseries",
    "per_client",
}


@pytest.mark.slow
def test_a_small_load_test_runs_the_real_pipeline_without_loss(tmp_path: Path) -> None:
    """Two races at 1000x through producer, Mosquitto, projector and gateway to 20 clients."""
    if binary() is None:
        pytest.skip("mosquitto is not installed")
    out = tmp_path / "report"
    config = LoadConfig(
        races=2, speed=1000.0, clients=20, duration_s=6.0, out=out, recording=LOAD_RECORDING
    )
    report = loadtest.run(config)
    assert set(report) >= REPORT_KEYS
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["loss"] == report["loss"]
    page = (out / "report.html").read_text()
    assert page.count("<svg") == 5 and "Latency histogram" in page

    events = report["events"]
    assert events["produced"] > 1000
    assert events["folded"] == events["produced"]
    assert set(events["per_race"]) == {"load-0001", "load-0002"}
    ws = report["websocket"]
    assert ws["connected"] == 20 and ws["failed"] == 0
    assert ws["messages"] > 20
    loss = report["loss"]
    assert loss["gaps"] == 0 and loss["duplicates"] == 0 and loss["overlaps"] == 0
    assert loss["clients_behind"] == 0 and loss["lossless"] is True
    lat = report["latency_ms"]
    assert lat["count"] > 0
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
    for name in ("producer", "projector", "gateway", "mosquitto", "clients"):
        proc = report["processes"][name]
        assert proc["cpu_s"] > 0 and proc["peak_rss_mb"] > 1, name
    assert 0 < report["cpu_cores_used"] <= report["machine"]["cores"]
    assert len(report["machine"]["load_average"]["start"]) == 3
    assert len(report["per_client"]) == 20
    assert {c["race"] for c in report["per_client"]} == {"load-0001", "load-0002"}
    assert all(
        c["last_seq"] == events["per_race"][c["race"]]["standings_seq"]
        for c in report["per_client"]
    )
    assert report["timeseries"] and report["timeseries"][0]["t"] >= 0


def test_clients_go_round_robin_over_races_and_processes() -> None:
    plan = loadtest.assignments(["a", "b", "c"], 7, 2, None)
    assert [[(x.client, x.race) for x in w] for w in plan] == [
        [(0, "a"), (2, "c"), (4, "b"), (6, "a")],
        [(1, "b"), (3, "a"), (5, "c")],
    ]
    assert LoadConfig(clients=2000).workers() <= loadtest.MAX_CLIENT_WORKERS
    assert LoadConfig(clients=20).workers() == 1
    assert LoadConfig(races=3).race_ids() == ["load-0001", "load-0002", "load-0003"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--races", "0"], "--races 0"),
        (["--speed", "fast"], "is not a speed"),
        (["--recording", "no-such-race"], "no such recording"),
    ],
)
def test_bad_load_test_arguments_are_one_line_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        status = cli.main(["loadtest", *args])
    except SystemExit as exc:  # argparse refuses a bad value itself
        status = int(exc.code or 0)
    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert "Traceback" not in err


def test_a_report_renders_to_a_page_of_charts() -> None:
    report = {
        "config": {"races": 1, "clients": 2},
        "latency_ms": {"count": 2, "p50": 1.0, "p99": 2.0, "max": 2.0},
        "latency_histogram": [(1.0, 1), (2.0, 1)],
        "timeseries": [
            {
                "t": 1.0,
                "events_per_s": 5,
                "folded_per_s": 5,
                "messages_per_s": 9,
                "latency_count": 2,
                "p50_ms": 1.0,
                "p99_ms": 2.0,
                "max_ms": 2.0,
            },
        ],
    }
    page = loadplot.render(report)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 5
    assert "p99 2.0 ms" in page
    empty = loadplot.render({"timeseries": [], "latency_histogram": []})
    assert empty.count("no data") == 5


def test_benchmark_figures_compare_with_their_target_and_baselines() -> None:
    from bench.run import table
    from bench.workload import figure

    fast = figure("fold", 300_000, "events/s", target=200_000, baselines={"naive": 1_000})
    assert fast["met"] is True and fast["ratios"] == {"naive": 300.0}
    slow = figure("race", 2.0, "s", target=1.0, higher_is_better=False, baselines={"raw": 0.5})
    assert slow["met"] is False and slow["ratios"] == {"raw": 0.25}
    text = table([{"name": "x", "figures": [fast, slow]}, {"name": "y", "error": "Boom"}])
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["bench", "figure", "value"]
    assert ">= 200,000" in lines[2] and "yes" in lines[2] and "naive: x300" in lines[2]
    assert "<= 1" in lines[3] and "NO" in lines[3]
    assert "FAILED: Boom" in lines[4]


def test_the_locust_scenario_compiles() -> None:
    py_compile.compile(str(REPO / "bench" / "locustfile.py"), doraise=True)


def test_ticks_round_trip_through_msgpack() -> None:
    tick = _tick(2, 5.0, [1.5], clients=[ClientResult(client=1, race="a", connected=True)])
    back = tick_decoder.decode(tick_encoder.encode(tick))
    assert msgspec.structs.asdict(back) == msgspec.structs.asdict(tick)
