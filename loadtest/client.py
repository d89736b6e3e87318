"""Websocket load clients: many leaderboard subscribers per process, cheap to run.

A client process opens its share of the load test's connections, subscribes
each to one race, checks every client's ``prev_seq`` chain, records latency
from the event's emission (``wall``) to receipt in an HDR histogram, and
reports to the load test once per interval over a pipe. The default client
(``loadtest.connection``) is websockets' sans-I/O ``ClientProtocol`` on an
asyncio ``BufferedProtocol``: no task, future or queue per frame, each read
parsed whole, so that the clients take as little CPU as possible from the
processes being measured; ``impl="websockets"`` uses the library's asyncio
client instead, as a cross-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal
from urllib.parse import urlsplit

import msgspec
from hdrh.histogram import HdrHistogram

from chequered import heap
from loadtest.connection import MAX_MESSAGE_BYTES, OnMessage, SessionProtocol
from loadtest.stats import (
    ClientResult,
    LatencyTally,
    SeqChain,
    WorkerTick,
    new_histogram,
    tick_encoder,
)

ClientImpl = Literal["lean", "websockets"]

CONNECT_TIMEOUT_S = 10.0
"""Time allowed for one connection's TCP connect and websocket handshake."""
CONNECT_CONCURRENCY = 32
"""Handshakes in flight per client process (kept under the server's listen backlog)."""
CONNECT_ATTEMPTS = 3
"""A client whose connection fails is tried this many times before it counts as failed."""
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES
"""A message larger than this closes the connection as an error."""
TICK_INTERVAL_S = 1.0
RESUBSCRIBE_DELAY_S = 0.25
"""Wait before subscribing again when the gateway does not know the race yet."""
MAX_RESUBSCRIBES = 40


class _Probe(msgspec.Struct):
    """The fields of a gateway message the load test reads; the rest is skipped unparsed."""

    type: str = ""
    seq: int = 0
    prev_seq: int = 0
    wall: float = 0.0
    error: str = ""


_probe_decoder = msgspec.json.Decoder(_Probe)
_json_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class Assignment:
    client: int
    race: str
    cls: str | None = None


EventLoop = Literal["asyncio", "uvloop"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    worker: int
    url: str
    """Websocket URL of the gateway, e.g. ``ws://127.0.0.1:8765/ws``."""
    clients: tuple[Assignment, ...]
    impl: ClientImpl = "lean"
    compression: bool = False
    """Offer permessage-deflate, as browsers do (either impl)."""
    interval_s: float = TICK_INTERVAL_S
    connect_concurrency: int = CONNECT_CONCURRENCY
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    nice: int = 0
    connect_rate: float | None = None
    """Open loop: this process's clients connect at this many per second from its start,
    each when its time comes whether or not the ones before it got in; None connects
    them all at once (at most ``connect_concurrency`` handshakes in flight)."""
    loop: EventLoop = "asyncio"
    """This process's event loop."""


LOOP_ENV = "CHEQUERED_LOAD_LOOP"
"""Event loop of the processes the load test starts: ``asyncio`` (default) or ``uvloop``."""


def default_client_loop() -> EventLoop:
    """The load generator's own loop: uvloop where it is installed (its clients share the
    machine with what they measure, and spend less per frame on it), else asyncio."""
    try:
        import uvloop  # noqa: F401
    except ModuleNotFoundError:
        return "asyncio"
    return "uvloop"


def run_child(main: Coroutine[Any, Any, None], loop: EventLoop | None = None) -> None:
    """``asyncio.run(main)`` on ``loop``, else on the loop the load test was told to use
    (``LOOP_ENV``)."""
    if (loop or os.environ.get(LOOP_ENV)) == "uvloop":
        import uvloop

        # One event loop per process: the per-wake-up cost of a socket is what the
        # loop saves, and every stage pays it per message or per frame.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
        return
    asyncio.run(main)


# -- one client -----------------------------------------------------------------


@dataclass(slots=True)
class ClientState:
    """Counters of one connection; read by the worker for its ticks."""

    assignment: Assignment
    chain: SeqChain = field(default_factory=SeqChain)
    connected: bool = False
    failed: bool = False
    messages: int = 0
    snapshots: int = 0
    errors: int = 0
    error: str = ""
    resubscribes: int = 0
    last_at: float = 0.0
    resubscribe: Callable[[], None] | None = None
    """Sends the subscribe request again (set by the connection once open)."""

    def result(self) -> ClientResult:
        c = self.chain
        return ClientResult(
            client=self.assignment.client,
            race=self.assignment.race,
            connected=self.connected or self.messages > 0,
            messages=self.messages,
            snapshots=self.snapshots,
            last_seq=c.last or 0,
            gaps=c.gaps,
            missed_seqs=c.missed_seqs,
            duplicates=c.duplicates,
            overlaps=c.overlaps,
            resyncs=c.resyncs,
            early=c.early,
            errors=self.errors,
            error=self.error,
            last_at=self.last_at,
        )


class Recorder:
    """Per-process counters shared by all of its clients, reset every tick."""

    def __init__(self) -> None:
        self.histogram = new_histogram()
        self.tally = LatencyTally()
        self.messages = 0
        self.received_bytes = 0
        self.deltas = 0
        self.delta_bytes = 0

    def on_message(self, state: ClientState, payload: bytes, now: float) -> None:
        self.messages += 1
        self.received_bytes += len(payload)
        state.messages += 1
        try:
            probe = _probe_decoder.decode(payload)
        except msgspec.DecodeError:
            state.errors += 1
            return
        kind = probe.type
        if kind == "delta":
            self.deltas += 1
            self.delta_bytes += len(payload)
            state.last_at = now
            if state.chain.delta(probe.seq, probe.prev_seq) and probe.wall > 0:
                self._latency(now - probe.wall)
        elif kind == "snapshot":
            state.last_at = now
            first = state.chain.last is None
            state.snapshots += 1
            # The first snapshot shows the race as it stood at subscription time: its
            # age is not a delivery latency. Later ones (coalescing) are.
            if state.chain.snapshot(probe.seq) and not first and probe.wall > 0:
                self._latency(now - probe.wall)
        elif kind == "error":
            if (
                probe.error == "unknown_race"
                and state.chain.last is None
                and state.resubscribe is not None
                and state.resubscribes < MAX_RESUBSCRIBES
            ):
                # The race's retained facts have not reached the gateway yet: ask again.
                state.resubscribes += 1
                asyncio.get_running_loop().call_later(RESUBSCRIBE_DELAY_S, state.resubscribe)
            else:
                state.errors += 1
                state.error = probe.error or "error frame"

    def _latency(self, seconds: float) -> None:
        self.tally.add(seconds)

    def take_histogram(self) -> HdrHistogram:
        """This interval's latencies as a histogram (the tally recorded into it)."""
        self.tally.record_into(self.histogram)
        return self.histogram


def _ws_parts(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    if parts.scheme != "ws" or not parts.hostname:
        raise ValueError(f"{url}: the load client needs a ws://host:port/path URL")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


class LeanProtocol(SessionProtocol):
    """A client connection as an asyncio ``Protocol``, addressed by host, port and path."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        on_message: OnMessage,
        *,
        compression: bool = False,
    ) -> None:
        super().__init__(f"ws://{host}:{port}{path}", on_message, compression=compression)


async def run_lean_client(
    state: ClientState,
    recorder: Recorder,
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    compression: bool = False,
    stop: asyncio.Event,
) -> None:
    """One client: websockets' sans-I/O protocol on an asyncio ``Protocol`` of its own."""
    host, port, path = _ws_parts(url)
    loop = asyncio.get_running_loop()
    on_message = functools.partial(recorder.on_message, state)
    async with asyncio.timeout(connect_timeout):
        _, conn = await loop.create_connection(
            lambda: LeanProtocol(host, port, path, on_message, compression=compression),
            host,
            port,
        )
        await conn.opened
    state.connected = True
    request = subscribe_message(state.assignment)
    state.resubscribe = lambda: conn.send_text(request)
    conn.send_text(request)
    try:
        stopping: asyncio.Future[object] = asyncio.ensure_future(stop.wait())
        closed: asyncio.Future[object] = conn.closed  # type: ignore[assignment]
        await asyncio.wait({stopping, closed}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set():
            state.error = "closed by the server"
    finally:
        conn.close()


async def run_websockets_client(
    state: ClientState,
    recorder: Recorder,
    url: str,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    compression: bool = False,
    stop: asyncio.Event,
) -> None:
    from websockets.asyncio.client import connect

    ws = await connect(
        url,
        open_timeout=connect_timeout,
        compression="deflate" if compression else None,
        max_size=MAX_FRAME_BYTES,
        max_queue=None,
    )
    state.connected = True
    request = subscribe_message(state.assignment).decode()

    sending: set[asyncio.Future[None]] = set()

    def resubscribe() -> None:
        task = asyncio.ensure_future(ws.send(request))
        sending.add(task)
        task.add_done_callback(sending.discard)

    state.resubscribe = resubscribe
    try:
        await ws.send(request)
        stopping = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            receiving = asyncio.ensure_future(ws.recv(decode=False))
            done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                break
            try:
                payload = receiving.result()
            except Exception:
                state.error = "closed by the server"
                break
            recorder.on_message(state, payload, time.time())
        stopping.cancel()
    finally:
        await ws.close()


def subscribe_message(assignment: Assignment) -> bytes:
    message: dict[str, str] = {"op": "subscribe", "race": assignment.race}
    if assignment.cls:
        message["class"] = assignment.cls
    return _json_encoder.encode(message)


# -- one client process -----------------------------------------------------------


class Worker:
    """The clients of one process and their periodic report."""

    def __init__(self, config: WorkerConfig, send: Callable[[bytes], None]) -> None:
        self.config = config
        self.send = send
        self.recorder = Recorder()
        self.states = [ClientState(a) for a in config.clients]
        self.stop = asyncio.Event()

    async def _client(self, state: ClientState, gate: asyncio.Semaphore) -> None:
        cfg = self.config
        last_error = ""
        for attempt in range(CONNECT_ATTEMPTS):
            try:
                async with gate:
                    if self.stop.is_set():
                        return
                    if cfg.impl == "websockets":
                        connecting = run_websockets_client(
                            state,
                            self.recorder,
                            cfg.url,
                            connect_timeout=cfg.connect_timeout_s,
                            compression=cfg.compression,
                            stop=self.stop,
                        )
                    else:
                        connecting = run_lean_client(
                            state,
                            self.recorder,
                            cfg.url,
                            connect_timeout=cfg.connect_timeout_s,
                            compression=cfg.compression,
                            stop=self.stop,
                        )
                    task = asyncio.ensure_future(connecting)
                    # Hold the gate only until this client is connected.
                    while not state.connected and not task.done():
                        await asyncio.wait({task}, timeout=0.05)
                await task
                return
            except (OSError, TimeoutError, ConnectionError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                if state.connected:
                    state.error = last_error
                    return
                if attempt + 1 < CONNECT_ATTEMPTS:
                    await asyncio.sleep(0.2 * (attempt + 1))  # back off before retrying
            except Exception as exc:  # any other fault is this client's, never the run's
                state.error = f"{type(exc).__name__}: {exc}"
                state.failed = not state.connected
                return
        state.failed = True
        state.error = last_error

    async def _arrive(self, state: ClientState, gate: asyncio.Semaphore, after_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), after_s)
        if not self.stop.is_set():
            await self._client(state, gate)

    def tick(self, *, final: bool = False) -> bytes:
        rec = self.recorder
        hist = rec.take_histogram()
        race_min: dict[str, int] = {}
        race_max: dict[str, int] = {}
        connected = failed = faults = 0
        for s in self.states:
            faults += s.chain.faults
            if s.failed:
                failed += 1
            if s.connected:
                connected += 1
                seq = s.chain.last or 0
                race = s.assignment.race
                race_min[race] = min(seq, race_min.get(race, seq))
                race_max[race] = max(seq, race_max.get(race, seq))
        tick = WorkerTick(
            worker=self.config.worker,
            wall=time.time(),
            connected=connected,
            failed=failed,
            messages=rec.messages,
            received_bytes=rec.received_bytes,
            deltas=rec.deltas,
            delta_bytes=rec.delta_bytes,
            negative=rec.tally.negative,
            histogram=hist.encode() if hist.get_total_count() else b"",
            latency_sum_s=rec.tally.sum_s,
            faults=faults,
            race_min_seq=race_min,
            race_max_seq=race_max,
            final=final,
            clients=[s.result() for s in self.states] if final else [],
        )
        rec.messages = rec.received_bytes = rec.tally.negative = 0
        rec.deltas = rec.delta_bytes = 0
        rec.tally.sum_s = 0.0
        hist.reset()
        encoded: bytes = tick_encoder.encode(tick)
        return encoded

    async def run(self, commands: asyncio.Queue[str]) -> None:
        rate = self.config.connect_rate
        if rate:
            # Open loop: arrivals keep their schedule, however slowly the server lets
            # them in, so no gate holds them back.
            gate = asyncio.Semaphore(max(1, len(self.states)))
            tasks = [
                asyncio.ensure_future(self._arrive(s, gate, i / rate))
                for i, s in enumerate(self.states)
            ]
        else:
            gate = asyncio.Semaphore(self.config.connect_concurrency)
            tasks = [asyncio.ensure_future(self._client(s, gate)) for s in self.states]
        next_tick = time.monotonic() + self.config.interval_s
        while True:
            try:
                command = await asyncio.wait_for(
                    commands.get(), timeout=max(0.0, next_tick - time.monotonic())
                )
            except TimeoutError:
                self.send(self.tick())
                next_tick += self.config.interval_s
                continue
            if command == "stop":
                break
        self.stop.set()
        await asyncio.wait(tasks, timeout=self.config.connect_timeout_s)
        for t in tasks:
            t.cancel()
        self.send(self.tick(final=True))


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a client process: run until the parent says ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    if config.nice:
        with contextlib.suppress(OSError):
            os.nice(config.nice)
    raise_fd_limit()
    heap.calm()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def readable() -> None:
            try:
                commands.put_nowait(conn.recv())
            except EOFError:
                loop.remove_reader(conn.fileno())
                commands.put_nowait("stop")

        loop.add_reader(conn.fileno(), readable)
        worker = Worker(config, conn.send_bytes)
        await worker.run(commands)
        loop.remove_reader(conn.fileno())

    run_child(main(), config.loop)
    conn.close()


def raise_fd_limit() -> None:
    """Lift this process's open-file limit to the hard limit: one socket per client."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
