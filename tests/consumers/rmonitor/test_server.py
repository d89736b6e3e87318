"""RMonitor out: a race replayed at full speed, read from the TCP port by real clients.

The lines are read back with a small decoder written here, independently of
the importer; the round trip then checks the importer and the server against
each other: an RMonitor recording imported, replayed, served, recorded from
the socket and imported again gives the same laps and classification.
"""

from __future__ import annotations

import asyncio
import csv
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from msgspec.structs import replace

from chequered.contract import events as ev
from consumers.rmonitor.encoder import Encoder, clock, run_name
from consumers.rmonitor.server import RMonitorServer, RMonitorSettings
from simulator.importers.rmonitor import decode
from simulator.importers.rmonitor_session import Options, import_session
from simulator.live.producer import ReplaySpec, run_producer
from simulator.recording.format import Recording
from simulator.timeline.timing_replay import replay
from tests.conftest import TESTS_DATA

DATA = TESTS_DATA / "rmonitor"
MOCK = DATA / "Orbits_Mock_Session.txt"
SEBRING = DATA / "2009_Sebring_ALMS_Session_4.txt"


# -- an independent reader of the lines ---------------------------------------------


def records(data: bytes) -> list[list[str]]:
    """Each line as [type, field, ...]; fails on anything that is not a record."""
    out: list[list[str]] = []
    for raw in data.split(b"\r\n"):
        if not raw:
            continue
        text = raw.decode("cp1252")
        assert text.startswith("$"), text
        fields = next(csv.reader([text]))
        out.append([fields[0][1:], *fields[1:]])
    return out


def ms(text: str) -> int:
    h, m, s = text.split(":")
    return round((int(h) * 3600 + int(m) * 60 + float(s)) * 1000)


def recording(path: Path, **options: object) -> Recording:
    return import_session(decode(path.read_bytes(), path.name), Options(**options)).recording  # type: ignore[arg-type]


# -- the pure encoder ------------------------------------------------------------------


def test_clock_and_run_names() -> None:
    assert clock(7_203_686) == "02:00:03.686"
    assert clock(61_000, millis=False) == "00:01:01"
    assert run_name("Laguna Seca 2022", "qualifying") == "Laguna Seca 2022 Qualifying"
    assert run_name("Test Race", "race") == "Test Race"


def test_every_lap_is_a_passing_with_its_lap_count_and_position() -> None:
    rec = recording(MOCK, season=2020)
    events = replay(rec, race="mock")
    encoder = Encoder(race="mock")
    lines: list[str] = []
    for event in events:
        lines += encoder.apply(event)
    recs = records(("\r\n".join(lines) + "\r\n").encode())
    kinds = [r[0] for r in recs]
    assert kinds[:2] == ["B", "C"]
    assert kinds.count("A") == kinds.count("COMP") == len(rec.entries)
    assert ["E", "TRACKNAME", "Brands Hatch"] in recs
    laps = [e for e in events if isinstance(e, ev.Lap)]
    passings = [r for r in recs if r[0] == "J"]
    assert [(p[1], ms(p[2]), ms(p[3])) for p in passings] == [
        (e.car, e.lap_ms or 0, e.t_ms) for e in laps
    ]
    # The $G after each passing gives the car's laps, as Orbits does.
    for i, r in enumerate(recs):
        if r[0] == "J":
            g = next(x for x in recs[i + 1 :] if x[0] == "G")
            assert g[2] == r[1]
            assert ms(g[4]) == ms(r[3])
    final_g = {}
    for r in recs:
        if r[0] == "G":
            final_g[r[2]] = (int(r[1]), int(r[3] or 0))
    assert final_g == {row.number: (row.position, row.laps) for row in rec.classification}
    flags = [r[5] for r in recs if r[0] == "F"]
    assert "Yellow" in flags and flags[-1] == "Finish"


def test_a_client_joining_gets_the_whole_picture() -> None:
    rec = recording(MOCK, season=2020)
    encoder = Encoder(race="mock")
    for event in replay(rec, race="mock")[:30]:
        encoder.apply(event)
    greeting = records(("\r\n".join(encoder.greeting()) + "\r\n").encode())
    kinds = [r[0] for r in greeting]
    assert kinds[0] == "I" and kinds[1] == "B" and kinds[-1] == "F"
    assert kinds.count("G") == kinds.count("H") == len(rec.entries)


def test_a_reset_starts_a_new_run() -> None:
    rec = recording(MOCK, season=2020)
    events = replay(rec, race="mock")
    encoder = Encoder(race="mock")
    for event in events[:20]:
        encoder.apply(event)
    lines = encoder.apply(ev.Reset(race="mock", seq=100, t_ms=0, target_ms=0))
    assert lines[0].startswith("$I,")
    opened = events[0]
    assert isinstance(opened, ev.SessionOpened)
    lines = encoder.apply(replace(opened, seq=101))
    assert lines[0] == '$B,2,"Brands Hatch Test Race 2020"'


# -- the TCP server ----------------------------------------------------------------------


@asynccontextmanager
async def serving(bus: str, race: str | None, **settings: object) -> AsyncIterator[RMonitorServer]:
    server = RMonitorServer(race=race, settings=RMonitorSettings(port=0, **settings))  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(server.run(bus, stop))
    await asyncio.wait_for(server.ready.wait(), 10)
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _read_all(reader: asyncio.StreamReader, into: bytearray) -> None:
    while chunk := await reader.read(65536):
        into += chunk


async def _served(rec: Recording, race: str, bus: str, clients: int = 3) -> list[bytes]:
    events = replay(rec, race=race)
    async with serving(bus, race) as server:
        conns = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(clients)]
        buffers = [bytearray() for _ in conns]
        readers = [
            asyncio.create_task(_read_all(r, b)) for (r, _), b in zip(conns, buffers, strict=True)
        ]
        stop = asyncio.Event()
        producer = asyncio.create_task(
            run_producer(bus, [ReplaySpec(race=race, events=events, speed=None)], stop=stop)
        )
        for _ in range(400):
            if server.encoder is not None and server.encoder.closed:
                break
            await asyncio.sleep(0.05)
        assert server.encoder is not None and server.encoder.closed
        await asyncio.sleep(0.2)
        stop.set()
        await asyncio.wait_for(producer, 10)
    await asyncio.wait_for(asyncio.gather(*readers), 10)
    return [bytes(b) for b in buffers]


@pytest.mark.parametrize(
    ("path", "options"),
    [(MOCK, {"season": 2020}), (SEBRING, {})],
    ids=["mock-race", "sebring-practice"],
)
async def test_round_trip_through_the_socket(path: Path, options: dict[str, object]) -> None:
    original = recording(path, **options)
    race = original.facts.id
    streams = await _served(original, race, f"memory://rt-{race}")
    assert len(set(streams)) == 1, "every client gets the same bytes"
    again = import_session(
        decode(streams[0], "socket"), Options(season=original.facts.season)
    ).recording

    def lap(r: object) -> tuple[object, ...]:
        return tuple(
            getattr(r, f)
            for f in ("number", "lap", "lap_ms", "elapsed_ms", "in_pit", "pit_ms", "flag")
        )

    def row(r: object) -> tuple[object, ...]:
        return tuple(
            getattr(r, f)
            for f in ("position", "number", "laps", "total_ms", "best_lap_ms", "best_lap")
        )

    assert sorted(map(lap, again.laps)) == sorted(map(lap, original.laps))
    assert [row(r) for r in again.classification] == [row(r) for r in original.classification]
    assert again.facts.session == original.facts.session
    assert again.facts.circuit.name == original.facts.circuit.name
    assert again.facts.start_time == original.facts.start_time


async def test_a_client_that_stops_reading_is_closed_and_the_others_go_on() -> None:
    # Two hours of practice at 1000x (7 s, 85 KB of lines): a small kernel buffer per
    # client, so that one that does not read fills it and its 16 KB allowance soon.
    rec = recording(SEBRING)
    race = "stuck"
    bus = "memory://rt-stuck"
    events = replay(rec, race=race)
    async with serving(bus, race, client_buffer_bytes=16384, send_buffer_bytes=4096) as server:
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        stuck.connect(("127.0.0.1", server.port))
        stuck.setblocking(False)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        got = bytearray()
        reading = asyncio.create_task(_read_all(reader, got))
        stop = asyncio.Event()
        producer = asyncio.create_task(
            run_producer(bus, [ReplaySpec(race=race, events=events, speed=1000)], stop=stop)
        )
        for _ in range(400):
            if server.encoder is not None and server.encoder.closed:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert server.closed_stuck == 1
        assert len(server.clients) == 1
        stop.set()
        await asyncio.wait_for(producer, 10)
    await asyncio.wait_for(reading, 10)
    writer.close()
    stuck.close()
    passings = [r for r in records(bytes(got)) if r[0] == "J"]
    assert len(passings) == sum(isinstance(e, ev.Lap) for e in events)


async def test_a_late_client_gets_the_session_then_the_race() -> None:
    rec = recording(MOCK, season=2020)
    race = "late"
    bus = "memory://rt-late"
    events = replay(rec, race=race)
    async with serving(bus, None) as server:
        stop = asyncio.Event()
        producer = asyncio.create_task(
            run_producer(bus, [ReplaySpec(race=race, events=events, speed=None)], stop=stop)
        )
        for _ in range(400):
            if server.encoder is not None and server.encoder.closed:
                break
            await asyncio.sleep(0.05)
        assert server.race == race
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        first = await asyncio.wait_for(reader.readuntil(b"$F"), 5)
        stop.set()
        await asyncio.wait_for(producer, 10)
        writer.close()
    kinds = [r[0] for r in records(first[:-2])]
    assert kinds[:2] == ["I", "B"]
    assert kinds.count("G") == len(rec.entries)
