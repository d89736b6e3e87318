"""The load test: many races through the real pipeline to many websocket clients, measured.

Starts (unless given a broker) a private Mosquitto, then the projector, the
gateway and the producer, each in its own process so that CPU and memory are
measured per component, and spreads the websocket clients
over a few client processes. Races start paused and are resumed together over
the control topic; the run lasts ``duration_s`` (or until every race ends),
then drains and writes a JSON report and an HTML plot.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar
from urllib.parse import urlsplit

import msgspec
import psutil

from chequered import heap, log
from chequered.contract import control, topics
from loadtest import plot as loadplot
from loadtest.client import (
    LOOP_ENV,
    Assignment,
    ClientImpl,
    EventLoop,
    WorkerConfig,
    default_client_loop,
    raise_fd_limit,
    run_child,
    worker_main,
)
from loadtest.probe import ProbeConfig, probe_main
from loadtest.stats import (
    Aggregate,
    client_rows,
    histogram_buckets,
    loss_summary,
    tick_decoder,
)
from simulator.live.faults import FaultRates

_log = log.get(__name__)

DEFAULT_RECORDING = "alms-2013-monterey-race"
RACE_PREFIX = "load-"
CLIENTS_PER_WORKER = 500
"""Clients one client process takes before another is started."""
MAX_CLIENT_WORKERS = 4
"""Client processes at most, whatever the client count: they share the machine with
what they measure, so they stay few (and each is an asyncio loop of many clients)."""
READY_TIMEOUT_S = 60.0
"""Time allowed for one component to start (the producer also builds its timelines)."""
BUILD_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 120.0
"""Time allowed for every client to connect and subscribe."""
DRAIN_TIMEOUT_S = 20.0
"""After the producer stops: time allowed for the projector and clients to catch up."""
QUIET_S = 2.0
"""The drain also ends when nothing has moved for this long."""
SNAPSHOT_SETTLE_S = 1.2
"""Wait before reading the retained snapshots: the projector may hold the last one
back for 1/snapshot_max_hz (1 s by default)."""
STOP_TIMEOUT_S = 10.0
SAMPLE_INTERVAL_S = 0.5
"""How often CPU and memory of the components are sampled."""
REPORT_INTERVAL_S = 0.25
"""How often the component processes report their counters to the load test."""
PROGRESS_INTERVAL_S = 0.5
PROGRESS_WINDOW = 5
"""Intervals the progress line's rates are averaged over."""
PROGRESS_LINE_S = 10.0
"""When stderr is not a terminal, a progress line is printed this often instead."""


_T = TypeVar("_T")


class LoadTestError(RuntimeError):
    """The load test could not run (a component failed to start, a bad argument)."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    races: int = 10
    speed: float | None = 60.0
    """Race seconds per wall second; None runs as fast as possible."""
    clients: int = 100
    duration_s: float = 60.0
    broker: str | None = None
    """An existing broker's URL; None starts a private Mosquitto."""
    recording: str = DEFAULT_RECORDING
    out: Path = Path("loadtest-out")
    seed: int = 0
    race_prefix: str = RACE_PREFIX
    cls: str | None = None
    """Subscribe every client to this class only (default: the whole field)."""
    client_workers: int | None = None
    """Client processes; None picks ``ceil(clients / CLIENTS_PER_WORKER)``, capped."""
    client_impl: ClientImpl = "lean"
    compression: bool = False
    client_nice: int = 0
    checkpoint: bool = True
    """Give the projector a checkpoint folder (in the output folder), as in production."""
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    interval_s: float = 1.0
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 0
    """0 picks a free port; give one (and a host other machines reach) for Locust clients."""
    progress: TextIO | None = None
    target: str | None = None
    """A websocket service of someone else's that speaks the documented protocol
    (``ws://host:port/path``): the clients go there, and no projector or gateway of
    ours is started. It must read the feed from ``broker``."""
    target_mqtt: bool = False
    """Publish only, to ``broker``: an MQTT consumer of someone else's folds the feed,
    and a probe reads what it publishes (no projector, gateway or websocket clients)."""
    probe: str | None = None
    """With ``target_mqtt``: the topic the consumer publishes per race, ``{race}`` in it;
    None reads the documented standings and standings/delta topics."""
    connect_rate: float | None = None
    """Open loop: clients connect at this many per second over the run, from its start;
    None connects them all before the races start."""
    ramp_s: float = 0.0
    """Races are started one after another, evenly over this many seconds (a ramp of
    offered load); 0 starts them all at once."""
    faults: FaultRates | None = None
    """A hostile feed: the producer injects these faults, and the report holds the record."""
    projectors: int = 1
    """Projector processes, each owning a stable-hash partition of the races."""
    gateways: int = 1
    """Gateway processes sharing the one port (SO_REUSEPORT)."""
    projector_settings: tuple[tuple[str, str], ...] = ()
    """``ProjectorSettings`` fields to change, as (name, value) text: to measure one
    setting (a coalescing window, an acknowledgement window) against another."""
    event_loop: EventLoop = "asyncio"
    """Event loop of the processes under test (producer, projector, gateway), and of the
    clients too when it is uvloop."""
    client_loop: EventLoop | None = None
    """Event loop of the load generator's client processes; None: uvloop where it is
    installed (``default_client_loop``), else ``event_loop``."""

    @property
    def clients_loop(self) -> EventLoop:
        if self.client_loop is not None:
            return self.client_loop
        return "uvloop" if self.event_loop == "uvloop" else default_client_loop()

    @property
    def mode(self) -> str:
        """``own`` (our projector and gateway), ``target`` (a websocket service) or
        ``target-mqtt`` (an MQTT consumer)."""
        if self.target is not None:
            return "target"
        return "target-mqtt" if self.target_mqtt else "own"

    def workers(self) -> int:
        if self.client_workers is not None:
            return max(1, min(self.client_workers, self.clients or 1))
        wanted = math.ceil(self.clients / CLIENTS_PER_WORKER) if self.clients else 0
        return max(1, min(wanted, MAX_CLIENT_WORKERS, os.cpu_count() or 1))

    def race_ids(self) -> list[str]:
        return [race_id(self.race_prefix, i) for i in range(1, self.races + 1)]


def race_id(prefix: str, index: int) -> str:
    return f"{prefix}{index:04d}"


def assignments(
    races: list[str], clients: int, workers: int, cls: str | None
) -> list[list[Assignment]]:
    """Clients round-robin over races, and clients round-robin over worker processes."""
    out: list[list[Assignment]] = [[] for _ in range(workers)]
    for i in range(clients):
        out[i % workers].append(Assignment(i, races[i % len(races)], cls))
    return out


# -- the component processes -----------------------------------------------------


def _quiet_child() -> None:
    # Ctrl-C goes to the whole process group; the parent stops the children in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    heap.calm()
    level = os.environ.get("CHEQUERED_LOAD_LOG", "warning")
    log.configure(level)
    _quiet_mqtt(level)


def _quiet_mqtt(level: str) -> None:
    # aiomqtt warns about publishes waiting for acknowledgements: under load that
    # is the normal state, and the warning would bury the progress line.
    for name in ("mqtt", "aiomqtt"):
        logging.getLogger(name).setLevel(logging.ERROR if level != "debug" else logging.DEBUG)


def _send(conn: Connection, message: object) -> None:
    """Tell the load test something; it may have gone already (then nobody is listening)."""
    with contextlib.suppress(OSError):
        conn.send(message)


def _stop_on_sigterm(stop: asyncio.Event) -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)


def _build_encoded(recording: str, seed: int, race: str) -> bytes:
    from simulator.recording import io as recording_io
    from simulator.timeline import build as timeline

    rec = recording_io.load(recording_io.find(recording))
    return msgspec.msgpack.encode(timeline.build(rec, seed=seed, race=race))


def build_timelines(recording: str, races: list[str], seed: int) -> dict[str, list[Any]]:
    """Each race's events (seed, seed+1, ...), built on every core: a synthesised
    4-hour race takes about a second, and a hundred of them would keep the load
    test waiting."""
    from concurrent.futures import ProcessPoolExecutor

    from chequered.contract.events import Event

    decoder = msgspec.msgpack.Decoder(list[Event])
    workers = max(1, min(len(races), os.cpu_count() or 1))
    if workers == 1:
        return {
            race: decoder.decode(_build_encoded(recording, seed + i, race))
            for i, race in enumerate(races)
        }
    with ProcessPoolExecutor(workers, mp_context=_ctx()) as pool:
        encoded = pool.map(
            _build_encoded, [recording] * len(races), [seed + i for i in range(len(races))], races
        )
        return {race: decoder.decode(data) for race, data in zip(races, encoded, strict=True)}


def _producer_child(
    conn: Connection,
    url: str,
    recording: str,
    races: list[str],
    speed: float | None,
    seed: int,
    faults: FaultRates | None = None,
) -> None:
    _quiet_child()
    from simulator.live.faults import Injector
    from simulator.live.producer import ReplaySpec, run_producer

    timelines = build_timelines(recording, races, seed)
    specs = [
        ReplaySpec(race=race, events=events, speed=speed, paused=True,
                   faults=Injector(race, faults) if faults is not None else None)
        for race, events in timelines.items()
    ]  # fmt: skip
    heap.settle()  # the timelines stay to the end: out of the collector's way
    _send(conn, ("built", {s.race: len(s.events) for s in specs}))

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_sigterm(stop)
        states: dict[str, tuple[str, int]] = {}

        def on_status(status: control.Status) -> None:
            states[status.race] = (status.state, status.last_seq or 0)

        async def report() -> None:
            while True:
                _send(conn, ("status", dict(states)))
                await asyncio.sleep(REPORT_INTERVAL_S)

        reporter = asyncio.create_task(report())
        try:
            await run_producer(
                url, specs, stop=stop, client_id="loadtest-producer", on_status=on_status
            )
        finally:
            reporter.cancel()
            injected = {s.race: s.faults.summary() for s in specs if s.faults is not None}
            if injected:
                _send(conn, ("injected", injected))
            _send(conn, ("final", dict(states)))

    run_child(main())


def _report_every(conn: Connection, kind: str, read: Callable[[], object]) -> asyncio.Task[None]:
    async def loop() -> None:
        while True:
            _send(conn, (kind, read()))
            await asyncio.sleep(REPORT_INTERVAL_S)

    return asyncio.create_task(loop())


def _projector_child(
    conn: Connection,
    url: str,
    checkpoint_dir: str | None,
    client_id: str = "loadtest-projector",
    partition: tuple[int, int] | None = None,
    changes: tuple[tuple[str, str], ...] = (),
) -> None:
    _quiet_child()
    from chequered.contract.partition import Partition
    from consumers.metrics import Registry
    from consumers.projector.service import ProjectorSettings, run_projector

    settings = projector_settings(ProjectorSettings, changes)
    if checkpoint_dir:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_sigterm(stop)
        ready = asyncio.Event()
        registry = Registry("chequered_projector")
        task = asyncio.create_task(
            run_projector(
                url,
                checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir else None,
                client_id=client_id,
                stop=stop,
                ready=ready,
                registry=registry,
                partition=Partition(*partition) if partition else None,
                settings=settings,
            )
        )
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            _send(conn, ("ready", None))
        reporter = _report_every(conn, "metrics", registry.values)
        try:
            await task
        finally:
            reporter.cancel()
            _send(conn, ("metrics", registry.values()))

    run_child(main())


def _gateway_child(
    conn: Connection, url: str, host: str, port: int = 0, reuse_port: bool = False
) -> None:
    _quiet_child()
    from consumers.gateway.server import Gateway, GatewaySettings

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_sigterm(stop)
        # Every client comes from this machine: the per-address and total limits would
        # refuse all but the first few dozen.
        gateway = Gateway(url, GatewaySettings(max_connections_per_address=None, max_clients=None))
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            gateway.run(host=host, port=port, stop=stop, ready=ready, reuse_port=reuse_port)
        )
        _send(conn, ("ready", await ready))

        def read() -> dict[str, object]:
            metrics = gateway.metrics
            values: dict[str, object] = dict(metrics.values())
            values["clients"] = len(gateway.clients)
            # The seq alone: reading ``cache.snapshot`` would apply the deltas the gateway
            # keeps unapplied, four times a second, a cost no gateway pays outside a test.
            values["seqs"] = {
                race: seq for race, cache in gateway.races.items() if (seq := cache.seq) is not None
            }
            return values

        reporter = _report_every(conn, "metrics", read)
        try:
            await task
        finally:
            reporter.cancel()
            _send(conn, ("metrics", read()))

    run_child(main())


async def retained_seqs(
    url: str, races: list[str], wait_s: float = READY_TIMEOUT_S
) -> dict[str, int]:
    """The seq of each race's retained snapshot: what the projector last published."""
    from broker.bus import connect

    wanted = set(races)
    seqs: dict[str, int] = {}
    async with connect(url, client_id=f"loadtest-reader-{os.getpid()}") as bus:
        await bus.subscribe(topics.all_races(topics.STANDINGS))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_s):
                async for message in bus.messages():
                    race = topics.race_of(message.topic)
                    if race in wanted and topics.leaf_of(message.topic) == topics.STANDINGS:
                        with contextlib.suppress(msgspec.DecodeError):
                            seqs[race] = _seq_decoder.decode(message.payload).seq
                    if len(seqs) == len(wanted):
                        break
    return seqs


class _SeqOnly(msgspec.Struct):
    seq: int = 0


_seq_decoder = msgspec.json.Decoder(_SeqOnly)


# -- measuring processes -----------------------------------------------------------


@dataclass
class ProcessWatch:
    """CPU and memory of one process over the measured window."""

    name: str
    pids: list[int]
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    peak_rss: int = 0
    last_cpu: float = 0.0
    system_start: float = 0.0
    last_system: float = 0.0
    """System time (in the kernel on the process's behalf) within the CPU time."""
    _procs: list[psutil.Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                self._procs.append(psutil.Process(pid))

    def _times(self) -> tuple[float, float]:
        """(CPU, of which system) seconds of the processes so far."""
        total = system = 0.0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system
                system += t.system
        return total, system

    def _cpu(self) -> float:
        return self._times()[0]

    def start(self) -> None:
        self.cpu_start, self.system_start = self._times()
        self.last_cpu, self.last_system = self.cpu_start, self.system_start

    def sample(self) -> None:
        rss = 0
        for proc in self._procs:
            with contextlib.suppress(psutil.Error):
                rss += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        cpu, system = self._times()
        if cpu:
            self.last_cpu, self.last_system = cpu, system

    def end(self) -> None:
        self.sample()
        self.cpu_end = self.last_cpu

    def summary(self, window_s: float) -> dict[str, float | int | list[int]]:
        cpu = max(0.0, self.cpu_end - self.cpu_start)
        return {
            "pids": self.pids,
            "cpu_s": round(cpu, 3),
            "cpu_system_s": round(max(0.0, self.last_system - self.system_start), 3),
            "cpu_percent": round(100 * cpu / window_s, 1) if window_s > 0 else 0.0,
            "peak_rss_mb": round(self.peak_rss / 2**20, 1),
        }


class _Child:
    """A component process and what it said, read by a thread of its own.

    The thread keeps the pipe empty at all times: a child whose pipe is full
    blocks in ``send``, and a blocked gateway or projector would be a fault of
    the load test, not of the component.
    """

    def __init__(self, name: str, process: SpawnProcess, conn: Connection, *, raw: bool) -> None:
        self.name = name
        self.process = process
        self.conn = conn
        self.raw = raw
        self._lock = threading.Lock()
        self._inbox: list[Any] = []
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        receive = self.conn.recv_bytes if self.raw else self.conn.recv
        while True:
            try:
                message = receive()
            except (EOFError, OSError, ValueError):  # closed, or cut short by a kill
                return
            with self._lock:
                self._inbox.append(message)

    def drain(self) -> list[Any]:
        """Everything said since the last drain, in order."""
        with self._lock:
            out, self._inbox = self._inbox, []
        return out

    def take(self, kind: str, default: Any = None) -> Any:
        """The first ``(kind, value)`` message's value, removed; ``default`` if none yet."""
        with self._lock:
            for i, (k, value) in enumerate(self._inbox):
                if k == kind:
                    del self._inbox[i]
                    return value
        return default

    def latest(self, kind: str) -> Any:
        """The last ``(kind, value)`` message's value; every one of that kind is removed."""
        with self._lock:
            found = None
            kept = []
            for k, value in self._inbox:
                if k == kind:
                    found = value
                else:
                    kept.append((k, value))
            self._inbox = kept
        return found

    def join_reader(self, timeout: float) -> None:
        self._reader.join(timeout)


def _ctx() -> multiprocessing.context.SpawnContext:
    return multiprocessing.get_context("spawn")


def _spawn(name: str, target: Callable[..., None], *args: object, daemon: bool = True) -> _Child:
    parent, child = _ctx().Pipe()
    proc = _ctx().Process(
        target=target, args=(child, *args), name=f"loadtest-{name}", daemon=daemon
    )
    proc.start()
    child.close()
    return _Child(name, proc, parent, raw=False)


_MISSING = object()


async def _wait_for(child: _Child, kind: str, wait_s: float) -> Any:
    deadline = time.monotonic() + wait_s
    while True:
        value = child.take(kind, _MISSING)
        if value is not _MISSING:
            return value
        if not child.process.is_alive():
            value = child.take(kind, _MISSING)
            if value is not _MISSING:
                return value
            raise LoadTestError(
                f"the {child.name} process exited (status {child.process.exitcode}) "
                f"before it was {kind}; run with CHEQUERED_LOAD_LOG=info to see why"
            )
        if time.monotonic() > deadline:
            raise LoadTestError(f"the {child.name} process was not {kind} after {wait_s:.0f}s")
        await asyncio.sleep(0.05)


async def announced(producer: _Child, races: list[str]) -> dict[str, tuple[str, int]]:
    """Wait until the producer serves every race (status retained, control subscribed).

    From then on the gateway knows the races and a resume command is heard.
    """
    states: dict[str, tuple[str, int]] = {}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(states) < len(races):
        states.update(producer.latest("status") or {})
        if time.monotonic() > deadline or not producer.process.is_alive():
            raise LoadTestError(f"the producer announced {len(states)} of {len(races)} races")
        await asyncio.sleep(0.05)
    return states


def _terminate(child: _Child, timeout: float = STOP_TIMEOUT_S) -> None:
    proc = child.process
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
    child.join_reader(timeout)


# -- the machine ---------------------------------------------------------------------


def machine_info() -> dict[str, object]:
    """CPU model, cores, memory, Python and Mosquitto version, for the report."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mosquitto_version = None
    from broker.mosquitto import binary

    exe = binary()
    if exe is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=5)
            first = (out.stdout or out.stderr).splitlines()
            mosquitto_version = first[0].strip() if first else None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "mosquitto": mosquitto_version,
    }


# -- the run ------------------------------------------------------------------------------


class _Progress:
    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.tty = bool(stream is not None and stream.isatty())
        self.last_line = 0.0
        self.width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        if self.stream is None:
            return
        if self.tty:
            pad = max(0, self.width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self.width = len(text)
            self.stream.flush()
        elif force or time.monotonic() - self.last_line >= PROGRESS_LINE_S:
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = time.monotonic()

    def note(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty and self.width:
            self.stream.write("\n")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.stream is not None and self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


OURS = (topics.META, topics.STATUS)
"""What the load test's producer retains on a broker."""


async def clear_retained(
    url: str, races: list[str], *, sessions: list[str], leaves: tuple[str, ...] | None = None
) -> None:
    """Leave a shared broker as it was: no retained facts, status or standings of ours
    (``leaves``; all three by default), and no persistent session (connecting with a
    clean session discards it)."""
    from broker.bus import connect

    async with connect(url, client_id=f"loadtest-cleanup-{os.getpid()}") as bus:
        for race in races:
            for leaf in leaves or (topics.META, topics.STATUS, topics.STANDINGS):
                await bus.publish(topics.topic(race, leaf), b"", qos=1, retain=True)
    for session in sessions:
        async with connect(url, client_id=session, clean_session=True):
            pass


async def _resume_over(
    url: str, races: list[str], t0: float, ramp_s: float, resumed: list[int]
) -> None:
    """Resume the races one after another, evenly over ``ramp_s`` from ``t0``;
    ``resumed[0]`` counts those resumed so far."""
    from broker.bus import connect

    payload = msgspec.json.encode({"cmd": "resume", "id": "loadtest"})
    step = ramp_s / len(races)
    async with connect(url, client_id=f"loadtest-ramp-{os.getpid()}") as bus:
        for i, race in enumerate(races):
            delay = t0 + i * step - time.time()
            if delay > 0:
                await asyncio.sleep(delay)  # the ramp's own schedule
            await bus.publish(topics.topic(race, topics.CONTROL), payload, qos=1)
            resumed[0] = i + 1


async def _publish_resume(url: str, races: list[str]) -> float:
    from broker.bus import connect

    payload = msgspec.json.encode({"cmd": "resume", "id": "loadtest"})
    async with connect(url, client_id="loadtest-control") as bus:
        started = time.time()
        for race in races:
            await bus.publish(topics.topic(race, topics.CONTROL), payload, qos=1)
    return started


def check_target(config: LoadConfig) -> None:
    """A load test of someone else's service needs the broker it reads, and one target."""
    if config.target is not None and config.target_mqtt:
        raise LoadTestError("--target and --target-mqtt: give one service to test")
    if config.mode != "own" and config.broker is None:
        flag = "--target" if config.target is not None else "--target-mqtt"
        raise LoadTestError(f"{flag} needs --broker: the broker your service reads the feed from")
    if config.target is not None:
        scheme = urlsplit(config.target).scheme
        if scheme not in ("ws", "wss") or not urlsplit(config.target).hostname:
            raise LoadTestError(f"--target {config.target}: give a ws://host:port/path URL")
        if scheme == "wss" and config.client_impl != "websockets":
            raise LoadTestError(f"--target {config.target}: wss:// needs --client-impl websockets")
    if config.probe is not None and not config.target_mqtt:
        raise LoadTestError("--probe is for --target-mqtt")
    if config.probe is not None and "{race}" not in config.probe:
        raise LoadTestError(f"--probe {config.probe}: put {{race}} where the race id goes")
    if config.connect_rate is not None and config.connect_rate <= 0:
        raise LoadTestError(f"--connect-rate {config.connect_rate:g}: give clients per second")
    if config.ramp_s < 0:
        raise LoadTestError(f"--ramp {config.ramp_s:g}: must not be negative")


def run(config: LoadConfig) -> dict[str, Any]:
    """Run one load test; returns the report (also written to ``config.out``)."""
    if config.races < 1:
        raise LoadTestError("--races must be at least 1")
    if config.clients < 0:
        raise LoadTestError("--clients must not be negative")
    if config.duration_s <= 0:
        raise LoadTestError("--duration must be positive")
    check_target(config)
    if config.projector_settings:
        from consumers.projector.service import ProjectorSettings

        projector_settings(ProjectorSettings, config.projector_settings)  # one line, not a crash
    if config.target_mqtt:
        config = dataclasses.replace(config, clients=0)  # the probe reads; nobody connects
    _quiet_mqtt(os.environ.get("CHEQUERED_LOAD_LOG", "warning"))
    if "uvloop" in (config.event_loop, config.client_loop):
        try:
            import uvloop  # noqa: F401
        except ModuleNotFoundError:
            raise LoadTestError("--loop/--client-loop uvloop: pip install uvloop") from None
    # Spawned processes inherit the environment: each reads its loop from it.
    previous = os.environ.get(LOOP_ENV)
    os.environ[LOOP_ENV] = config.event_loop
    try:
        return asyncio.run(_run(config))
    finally:
        if previous is None:
            os.environ.pop(LOOP_ENV, None)
        else:
            os.environ[LOOP_ENV] = previous


async def _run(config: LoadConfig) -> dict[str, Any]:
    from broker.mosquitto import Mosquitto

    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(config.progress)
    races = config.race_ids()
    workers = config.workers() if config.clients else 0
    broker: Mosquitto | None = None
    children: list[_Child] = []
    client_children: list[_Child] = []
    scratch = Path(tempfile.mkdtemp(prefix="chequered-loadtest-"))
    projector_id = ""
    projector_ids: list[str] = []
    projectors: list[_Child] = []
    gateways: list[_Child] = []
    reserved: socket.socket | None = None
    ramp: asyncio.Task[None] | None = None
    url = config.broker or ""
    try:
        if config.broker is None:
            broker = Mosquitto(workdir=scratch / "mosquitto").start()
            url = broker.url
        else:
            url = config.broker
        progress.note(f"broker {url}; building {config.races} race timelines")
        checkpoint_dir = str(scratch / "checkpoints") if config.checkpoint else None
        # A persistent session of its own per run: an old one on a shared broker would
        # hand this projector the last run's queued events.
        own = config.mode == "own"
        if own:
            projector_id = f"loadtest-projector-{os.getpid()}-{int(time.time())}"
            n = config.projectors
            for i in range(n):
                # One projector: as ever. Several: partition I of N each, with a client id
                # and a checkpoint folder of its own, as ``chequered project --processes``.
                tag = f"{i + 1}of{n}"
                cid = projector_id if n == 1 else f"{projector_id}-{tag}"
                folder = checkpoint_dir
                if n > 1 and checkpoint_dir:
                    folder = f"{checkpoint_dir}/{tag}"
                part = (i, n) if n > 1 else None
                projectors.append(
                    _spawn(
                        f"projector-{tag}",
                        _projector_child,
                        url,
                        folder,
                        cid,
                        part,
                        config.projector_settings,
                    )
                )
                projector_ids.append(cid)
            shared_port = config.gateway_port
            if config.gateways > 1 and shared_port == 0:
                # Every gateway listens on one port: hold a free one (bound, not listening,
                # so the kernel hands it no connection) until the run ends.
                reserved = _reserve_port(config.gateway_host)
                shared_port = reserved.getsockname()[1]
            for i in range(config.gateways):
                gateways.append(
                    _spawn(
                        f"gateway-{i + 1}",
                        _gateway_child,
                        url,
                        config.gateway_host,
                        shared_port,
                        config.gateways > 1,
                    )
                )
            children += projectors + gateways
            # The projectors subscribe before the producer starts: a race's session_open
            # published before a projector's session exists never reaches it (it would
            # join the race midway, from the retained meta, with seqs missing).
            for child in projectors:
                await _wait_for(child, "ready", READY_TIMEOUT_S)
        # Not a daemon: it builds the timelines in a pool of processes of its own.
        producer = _spawn(
            "producer",
            _producer_child,
            url,
            config.recording,
            races,
            config.speed,
            config.seed,
            config.faults,
            daemon=False,
        )
        children.append(producer)
        if own:
            for child in gateways:
                port = await _wait_for(child, "ready", READY_TIMEOUT_S)
        timeline_sizes: dict[str, int] = await _wait_for(producer, "built", BUILD_TIMEOUT_S)
        states = await announced(producer, races)

        if own:
            local = config.gateway_host in ("0.0.0.0", "")
            client_host = "127.0.0.1" if local else config.gateway_host
            ws_url = f"ws://{client_host}:{port}/ws"
            progress.note(f"gateway {config.gateway_host}:{port}, websocket path /ws")
        else:
            ws_url = config.target or ""
            progress.note(f"service under test: {config.target or 'an MQTT consumer'}")
        if config.target_mqtt:
            probe = ProbeConfig(url, tuple(races), config.probe, config.interval_s)
            client_children.append(_spawn_probe(probe))
        plan = assignments(races, config.clients, workers, config.cls) if workers else []
        for w, mine in enumerate(plan):
            cfg = WorkerConfig(
                worker=w,
                url=ws_url,
                clients=tuple(mine),
                impl=config.client_impl,
                compression=config.compression,
                interval_s=config.interval_s,
                nice=config.client_nice,
                connect_rate=config.connect_rate / workers if config.connect_rate else None,
                loop=config.clients_loop,
            )
            client_children.append(_spawn_workers(w, cfg))

        agg = Aggregate(started=time.time(), interval_s=config.interval_s)

        def pump_clients() -> None:
            for c in client_children:
                for data in c.drain():
                    agg.add(tick_decoder.decode(data))

        deadline = time.monotonic() + config.connect_timeout_s
        # Open loop: the clients arrive during the run, so nothing is waited for; the
        # probe of an MQTT consumer is one subscriber per race.
        waiting = len(races) if config.target_mqtt else 0 if config.connect_rate else config.clients
        while waiting:
            pump_clients()
            progress.show(f"connecting clients {agg.clients_connected}/{waiting}")
            # Connected means subscribed too: the first snapshot (or the gateway's
            # "waiting" reply) has no bearing here, the chain starts at any seq.
            if agg.clients_connected + agg.clients_failed >= waiting:
                break
            if time.monotonic() > deadline:
                progress.note(
                    f"only {agg.clients_connected} of {waiting} clients connected after "
                    f"{config.connect_timeout_s:.0f}s; going on"
                )
                break
            await asyncio.sleep(0.1)
        progress.done()
        connect_s = time.time() - agg.started

        watches = {
            "producer": ProcessWatch("producer", [_pid(producer)]),
            "clients": ProcessWatch("clients", [_pid(c) for c in client_children]),
            "loadtest": ProcessWatch("loadtest", [os.getpid()]),
        }
        if own:
            watches["projector"] = ProcessWatch("projector", [_pid(c) for c in projectors])
            watches["gateway"] = ProcessWatch("gateway", [_pid(c) for c in gateways])
        if broker is not None and broker.proc is not None:
            watches["mosquitto"] = ProcessWatch("mosquitto", [broker.proc.pid])
        for watch in watches.values():
            watch.start()
            watch.sample()

        load_start = _load()
        # Go: every race resumes at once, and the clock of the report starts.
        latest: dict[str, dict[str, Any]] = {}
        """Per component process, its last metrics."""

        def component(children_of: list[_Child]) -> dict[str, Any]:
            for child in children_of:
                update = child.latest("metrics")
                if update:
                    latest[child.name] = update
            return sum_metrics([latest[c.name] for c in children_of if c.name in latest])

        baseline = component(projectors) if own else {}
        applied_before = int(baseline.get("applied", 0))
        produced_before = sum(seq for _, seq in states.values())
        resumed = [0]
        if config.ramp_s > 0:
            t0 = time.time()
            ramp = asyncio.create_task(_resume_over(url, races, t0, config.ramp_s, resumed))
        else:
            t0 = await _publish_resume(url, races)
            resumed[0] = len(races)
        agg.started = t0
        agg.intervals.clear()
        counters: dict[str, Any] = {
            "produced": produced_before,
            "applied": applied_before,
            "produced_at": t0,
            "applied_at": t0,
            "projector": baseline,
            "gateway": {},
        }
        next_sample = next_progress = time.monotonic()

        def pump_components() -> None:
            now = time.time()
            for kind in ("status", "final"):
                update = producer.latest(kind)
                if update:
                    states.update(update)
            produced = sum(seq for _, seq in states.values())
            metrics = component(projectors) if own else None
            if metrics:
                counters["projector"] = metrics
            applied = int(counters["projector"].get("applied", 0))
            if own:
                counters["gateway"] = component(gateways) or counters["gateway"]
            agg.running(now, resumed[0])
            if produced > counters["produced"]:
                counters["produced_at"] = now
            if applied > counters["applied"]:
                counters["applied_at"] = now
            agg.wire(
                now,
                produced=produced - counters["produced"],
                folded=applied - counters["applied"],
            )
            counters["produced"], counters["applied"] = produced, applied

        def line(elapsed: float, phase: str) -> str:
            # Rates over the last few whole intervals: the producer reports each race's
            # seq about once a second, so one interval alone would read 0 or double.
            rates = agg.rates(PROGRESS_WINDOW, now=time.time())
            return (
                f"[{elapsed:6.1f}s/{config.duration_s:.0f}s{phase}] "
                f"events {rates['produced']:>8,.0f}/s  "
                f"folded {rates['folded']:>8,.0f}/s  "
                f"ws msgs {rates['messages']:>9,.0f}/s  "
                f"clients {agg.clients_connected}/{config.clients}  "
                f"p99 {agg.summary()['p99']:,.1f} ms  faults {agg.fault_count}"
            )

        def housekeeping(phase: str = "") -> None:
            nonlocal next_sample, next_progress
            pump_clients()
            pump_components()
            mono = time.monotonic()
            if mono >= next_sample:
                for watch in watches.values():
                    watch.sample()
                next_sample = mono + SAMPLE_INTERVAL_S
            if mono >= next_progress:
                progress.show(line(time.time() - t0, phase))
                next_progress = mono + PROGRESS_INTERVAL_S

        # The measured run.
        while True:
            housekeeping()
            finished = all(state == "finished" for state, _ in states.values())
            if time.time() - t0 >= config.duration_s or finished:
                break
            dead = [c.name for c in children if not c.process.is_alive()]
            if dead:
                raise LoadTestError(f"the {', '.join(dead)} process exited during the run")
            await asyncio.sleep(0.1)
        run_s = time.time() - t0
        races_finished = sum(1 for state, _ in states.values() if state == "finished")

        # Stop the producer; what it published must reach the projector, then every client.
        if ramp is not None:
            ramp.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ramp
        _terminate(producer)
        housekeeping(" draining")
        produced_seqs = {race: seq for race, (_, seq) in states.items()}
        drain_deadline = time.monotonic() + config.drain_timeout_s
        expected: dict[str, int] = {}
        if not own:
            # Someone else's service: what it published last is unknown, so the drain
            # waits until no client (or the probe) moves any more; the furthest any of
            # a race's clients got is what each of them should have reached.
            moved_at, last_seen = time.monotonic(), (agg.min_seq(), agg.max_seq())
            while time.monotonic() < drain_deadline:
                housekeeping(" draining")
                seen_now = (agg.min_seq(), agg.max_seq())
                if seen_now != last_seen:
                    moved_at, last_seen = time.monotonic(), seen_now
                if time.monotonic() - moved_at > QUIET_S + config.interval_s:
                    break
                await asyncio.sleep(0.05)
            expected = agg.max_seq()
        moved_at, last_applied = time.monotonic(), counters["applied"]
        while own and time.monotonic() < drain_deadline:
            housekeeping(" draining")
            if counters["applied"] != last_applied:
                moved_at, last_applied = time.monotonic(), counters["applied"]
            if counters["applied"] >= counters["produced"]:
                break
            if time.monotonic() - moved_at > QUIET_S:
                break
            await asyncio.sleep(0.05)
        # The projector holds a race's retained snapshot back for up to 1/snapshot_max_hz
        # after its last delta; read the retained seqs until two reads agree, each time
        # waiting for the clients to reach them.
        while own:
            await asyncio.sleep(SNAPSHOT_SETTLE_S)
            seen = await retained_seqs(url, races, wait_s=min(10.0, config.drain_timeout_s))
            if seen == expected or time.monotonic() >= drain_deadline:
                expected = seen
                break
            expected = seen
            moved_at, last_view = time.monotonic(), agg.min_seq()
            while time.monotonic() < drain_deadline:
                housekeeping(" draining")
                view = agg.min_seq()
                if view != last_view:
                    moved_at, last_view = time.monotonic(), view
                if all(seq >= expected.get(race, 0) for race, seq in view.items()):
                    break
                if time.monotonic() - moved_at > QUIET_S + config.interval_s:
                    break
                await asyncio.sleep(0.05)
        drained_s = time.time() - t0
        for watch in watches.values():
            watch.end()

        for c in client_children:
            with contextlib.suppress(OSError):
                c.conn.send("stop")
        stop_deadline = time.monotonic() + STOP_TIMEOUT_S + CONNECT_TIMEOUT_S
        while len(agg.finals) < len(client_children) and time.monotonic() < stop_deadline:
            pump_clients()
            if not any(c.process.is_alive() for c in client_children):
                pump_clients()
                break
            await asyncio.sleep(0.05)
        progress.done()

        report = build_report(
            config=config,
            agg=agg,
            races=races,
            timeline_sizes=timeline_sizes,
            produced_seqs=produced_seqs,
            expected=expected,
            produced=counters["produced"],
            folded=counters["applied"],
            produced_in_run=counters["produced"] - produced_before,
            folded_in_run=counters["applied"] - applied_before,
            run_s=run_s,
            drained_s=drained_s,
            produced_span_s=counters["produced_at"] - t0,
            folded_span_s=counters["applied_at"] - t0,
            connect_s=connect_s,
            races_finished=races_finished,
            processes={name: w.summary(drained_s) for name, w in watches.items()},
            load_average={"start": load_start, "end": _load()},
            component_metrics={
                "projector": counters["projector"],
                "gateway": {k: v for k, v in counters["gateway"].items() if k != "seqs"},
            },
            workers=workers,
            url=url if config.broker else "private mosquitto",
        )
        report["mode"] = report["config"]["mode"] = config.mode
        if config.faults is not None:
            # The truth the clients' loss figures are to be read against.
            report["injected"] = producer.latest("injected") or {}
        report["load_curve"] = agg.load_curve(stepped=config.ramp_s > 0, until_s=run_s)
        report["verdict"] = verdict(report)
        if not own:
            # Nothing of ours folded the events: the projector's figures are unknown.
            report["events"]["folded"] = report["events"]["folded_per_s"] = None
            report["component_metrics"] = {}
        write_report(report, out)
        return report
    finally:
        if ramp is not None:
            ramp.cancel()
        for c in client_children:
            _terminate(c)
        for c in reversed(children):
            _terminate(c)
        if reserved is not None:
            reserved.close()
        if broker is not None:
            broker.stop()
        elif projector_id or config.mode != "own":
            with contextlib.suppress(Exception):  # the broker may be what failed
                async with asyncio.timeout(READY_TIMEOUT_S):
                    # The standings of a service under test are its own: left alone.
                    sessions = projector_ids
                    leaves = None if projector_id else OURS
                    await clear_retained(url, races, sessions=sessions, leaves=leaves)
        shutil.rmtree(scratch, ignore_errors=True)


def projector_settings(cls: type[_T], changes: tuple[tuple[str, str], ...]) -> _T:
    """``cls()`` with the named fields set from text, each read as its default's type;
    ``LoadTestError`` naming a field that is unknown or a value that does not read."""
    base = cls()
    values: dict[str, Any] = {}
    for name, text in changes:
        if not dataclasses.is_dataclass(base) or name not in {f.name for f in fields(base)}:
            raise LoadTestError(f"--projector-setting {name}: no such projector setting")
        kind = type(getattr(base, name))
        try:
            if kind is bool:
                values[name] = {"true": True, "false": False}[text.lower()]
            elif kind in (int, float):
                values[name] = kind(text)
            else:
                raise ValueError
        except (KeyError, ValueError):
            wanted = {bool: "true or false", int: "whole number"}.get(kind, "number")
            raise LoadTestError(f"--projector-setting {name}={text}: not a {wanted}") from None
    return dataclasses.replace(base, **values) if values else base  # type: ignore[type-var]


def _reserve_port(host: str) -> socket.socket:
    """A socket bound to a free port with SO_REUSEPORT, not listening: the gateways share
    its port, and nothing else takes it while the socket is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host or "0.0.0.0", 0))
    return sock


def sum_metrics(values: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The metrics of several processes of one component as one: counts added up."""
    out: dict[str, Any] = {}
    for one in values:
        for key, value in one.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            elif isinstance(value, dict) and isinstance(out.get(key, {}), dict):
                out[key] = {**out.get(key, {}), **value}
            else:
                out.setdefault(key, value)
    return out


def _spawn_workers(index: int, cfg: WorkerConfig) -> _Child:
    parent, child = _ctx().Pipe()
    proc = _ctx().Process(
        target=worker_main, args=(cfg, child), name=f"loadtest-clients-{index}", daemon=True
    )
    proc.start()
    child.close()
    return _Child(f"clients-{index}", proc, parent, raw=True)


def _spawn_probe(cfg: ProbeConfig) -> _Child:
    parent, child = _ctx().Pipe()
    proc = _ctx().Process(target=probe_main, args=(cfg, child), name="loadtest-probe", daemon=True)
    proc.start()
    child.close()
    return _Child("probe", proc, parent, raw=True)


def _load() -> list[float]:
    """The machine's load average (1, 5, 15 min): how much else wanted the CPU."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _pid(child: _Child) -> int:
    pid = child.process.pid
    assert pid is not None
    return pid


def _compressed_frame_bytes(component_metrics: Mapping[str, object]) -> float | None:
    """Mean bytes of the gateway's compressed frames on the wire (``--compression``), or None."""
    gateway = component_metrics.get("gateway")
    if not isinstance(gateway, Mapping):
        return None
    frames = float(gateway.get("deflated", 0)) + float(gateway.get("deflate_shared", 0))
    if not frames:
        return None
    return round(float(gateway.get("deflate_out_bytes", 0)) / frames, 1)


def build_report(
    *,
    config: LoadConfig,
    agg: Aggregate,
    races: list[str],
    timeline_sizes: Mapping[str, int],
    produced_seqs: Mapping[str, int],
    expected: Mapping[str, int],
    produced: int,
    folded: int,
    produced_in_run: int,
    folded_in_run: int,
    run_s: float,
    drained_s: float,
    produced_span_s: float,
    folded_span_s: float,
    connect_s: float,
    races_finished: int,
    processes: Mapping[str, object],
    load_average: Mapping[str, list[float]],
    component_metrics: Mapping[str, object],
    workers: int,
    url: str,
) -> dict[str, Any]:
    """The report: configuration, machine, throughput, latency, loss, processes, series.

    ``produced`` and ``folded`` count every event (the opening ones, published
    before the races were resumed, too); the rates count only those of the
    measured run. ``expected`` is each race's last published standings seq.
    """
    config_view = {
        f.name: _plain(v)
        for f in fields(config)
        if f.name != "progress" and not callable(v := getattr(config, f.name))
    }
    config_view["client_workers"] = workers
    config_view["client_loop"] = config.clients_loop
    config_view["broker"] = url

    def rate(count: float, span: float) -> float:
        return round(count / span, 1) if span > 0 else 0.0

    return {
        "version": 1,
        "started": datetime.datetime.fromtimestamp(agg.started, datetime.UTC).isoformat(),
        "config": config_view,
        "machine": {**machine_info(), "load_average": load_average},
        "timing": {
            "connect_s": round(connect_s, 3),
            "run_s": round(run_s, 3),
            "drained_s": round(drained_s, 3),
            "races_finished": races_finished,
        },
        "events": {
            "timeline_events": sum(timeline_sizes.values()),
            "produced": produced,
            "folded": folded,
            "produced_per_s": rate(produced_in_run, produced_span_s),
            "folded_per_s": rate(folded_in_run, folded_span_s),
            "produced_span_s": round(produced_span_s, 3),
            "folded_span_s": round(folded_span_s, 3),
            "per_race": {
                r: {"produced_seq": produced_seqs.get(r, 0), "standings_seq": expected.get(r, 0)}
                for r in races
            },
        },
        "websocket": {
            "clients": config.clients,
            "connected": agg.clients_connected,
            "failed": agg.clients_failed,
            "messages": agg.messages,
            "bytes": agg.received_bytes,
            "messages_per_s": rate(agg.messages, drained_s),
            "megabytes_per_s": round(agg.received_bytes / drained_s / 1e6, 3)
            if drained_s > 0
            else 0.0,
            "deltas": agg.deltas,
            "mean_delta_bytes": round(agg.delta_bytes / agg.deltas, 1) if agg.deltas else 0.0,
            "mean_compressed_frame_bytes": _compressed_frame_bytes(component_metrics),
        },
        "latency_ms": agg.summary(),
        "latency_negative": agg.negative,
        "latency_histogram": histogram_buckets(agg.total),
        "loss": loss_summary(agg.clients, expected),
        "processes": processes,
        "cpu_cores_used": round(
            sum(float(p["cpu_s"]) for p in processes.values() if isinstance(p, dict)) / drained_s,
            2,
        )
        if drained_s > 0
        else 0.0,
        "cpu_share": cpu_share(processes),
        "unit_cost_us": unit_costs(
            processes, produced=produced_in_run, folded=folded_in_run, frames=agg.messages
        ),
        "unit_cost_system_us": unit_costs(
            processes,
            produced=produced_in_run,
            folded=folded_in_run,
            frames=agg.messages,
            column="cpu_system_s",
        ),
        "component_metrics": component_metrics,
        "timeseries": agg.series(),
        "per_client": client_rows(agg.clients),
    }


STAGES = {
    "producer": "producer",
    "projector": "projector",
    "gateway": "gateway",
    "mosquitto": "broker",
    "clients": "load generator (clients)",
    "loadtest": "load generator (harness)",
}
"""Process group name to the stage it is, as the report names it."""

TARGET: Final = {"races": 100, "speed": 60.0, "clients": 2000, "duration_s": 60.0}
"""The load the project is to carry on two cores (``PERFORMANCE.md``)."""
TARGET_P99_MS: Final = 100.0


def cpu_share(processes: Mapping[str, Any]) -> dict[str, float]:
    """Each stage's share (%) of the CPU time the whole test used, the load generator's in."""
    cpu = {
        STAGES.get(name, name): float(p["cpu_s"])
        for name, p in processes.items()
        if isinstance(p, Mapping)
    }
    total = sum(cpu.values())
    return {name: round(100 * v / total, 1) if total else 0.0 for name, v in cpu.items()}


def unit_costs(
    processes: Mapping[str, Any],
    *,
    produced: int,
    folded: int,
    frames: int,
    column: str = "cpu_s",
) -> dict[str, float | None]:
    """CPU time (µs) per unit of each stage's work in this run: per event produced, per
    event folded, per websocket frame sent, per frame received, per event through the broker.

    The window is the same for all (from just before the resume to the end of the drain),
    so the figures add up to what the run cost; a stage that did nothing gets None.
    ``column="cpu_system_s"``: the share of it spent in the kernel (system calls, and on
    loopback the receiving side's TCP work, charged to the sender).
    """

    def per(name: str, count: int) -> float | None:
        p = processes.get(name)
        if not isinstance(p, Mapping) or count <= 0 or column not in p:
            return None
        return round(1e6 * float(p[column]) / count, 2)

    return {
        "producer_per_event": per("producer", produced),
        "projector_per_event": per("projector", folded),
        "gateway_per_frame": per("gateway", frames),
        "clients_per_frame": per("clients", frames),
        "broker_per_event": per("mosquitto", produced),
    }


def verdict(report: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the run met the target, and one line that says so and why not."""
    cfg = report["config"]
    loss = report["loss"]
    p99 = float(report["latency_ms"]["p99"])
    shape = (
        cfg["races"] >= TARGET["races"]
        and (cfg["speed"] or 0) >= TARGET["speed"]
        and cfg["clients"] >= TARGET["clients"]
        and cfg["duration_s"] >= TARGET["duration_s"]
    )
    misses = []
    if loss["gaps"] or loss["duplicates"]:
        misses.append(f"{loss['gaps']} gaps, {loss['duplicates']} duplicates")
    if loss["clients_behind"]:
        misses.append(f"{loss['clients_behind']} clients behind at the end")
    if report["websocket"]["connected"] < cfg["clients"]:
        misses.append(f"{report['websocket']['connected']}/{cfg['clients']} clients connected")
    if p99 >= TARGET_P99_MS:
        misses.append(f"p99 {p99:,.1f} ms")
    met = shape and not misses
    load = (
        f"{TARGET['races']} races at {TARGET['speed']:g}x, {TARGET['clients']:,} clients, "
        f"{TARGET['duration_s']:g} s"
    )
    if met:
        line = f"TARGET MET ({load}: lossless, no client behind, p99 {p99:,.1f} ms < 100 ms)"
    elif shape:
        line = f"TARGET NOT MET ({load}): " + "; ".join(misses)
    else:
        ran = (
            f"{cfg['races']} races at {cfg['speed'] or 0:g}x, {cfg['clients']:,} clients, "
            f"{cfg['duration_s']:g} s"
        )
        rest = "; ".join(misses) if misses else "lossless, p99 under 100 ms"
        line = f"not the target load ({ran}, not {load}): {rest}"
    return {"met": met, "target_shape": shape, "line": line}


def _plain(value: object) -> object:
    """A setting as JSON has it."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, FaultRates):
        return dataclasses.asdict(value)
    return value


def write_report(report: Mapping[str, Any], out: Path) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out``; returns both paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    html_path = out / "report.html"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    html_path.write_text(loadplot.render(report))
    return json_path, html_path


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A few lines for the terminal at the end of a run."""
    ev = report["events"]
    ws = report["websocket"]
    lat = report["latency_ms"]
    loss = report["loss"]
    procs = report["processes"]
    folded = (
        f"folded {ev['folded']:,} ({ev['folded_per_s']:,.0f}/s)"
        if ev.get("folded") is not None
        else f"to the service under test ({report.get('mode')})"
    )
    lines = [
        f"events    produced {ev['produced']:,} ({ev['produced_per_s']:,.0f}/s), {folded}",
        f"probe     {ws['messages']:,} messages from the consumer "
        f"({ws['messages_per_s']:,.0f}/s, {ws['megabytes_per_s']:.1f} MB/s)"
        if report.get("mode") == "target-mqtt"
        else f"websocket {ws['connected']}/{ws['clients']} clients, {ws['messages']:,} messages "
        f"({ws['messages_per_s']:,.0f}/s, {ws['megabytes_per_s']:.1f} MB/s)",
        "latency   "
        + "  ".join(f"{k} {lat[k]:,.1f}" for k in ("p50", "p90", "p99", "p99.9", "max"))
        + " ms",
        f"loss      gaps {loss['gaps']}, duplicates {loss['duplicates']}, "
        f"resyncs {loss['resyncs']}, clients behind {loss['clients_behind']}"
        + ("  (lossless)" if loss["lossless"] else ""),
    ]
    if ws.get("mean_delta_bytes"):
        size = f"frames    mean delta {ws['mean_delta_bytes']:,.0f} bytes"
        if ws.get("mean_compressed_frame_bytes"):
            size += f", {ws['mean_compressed_frame_bytes']:,.0f} bytes a frame compressed"
        lines.append(size)
    share = report.get("cpu_share", {})
    for name in ("producer", "projector", "gateway", "mosquitto", "clients", "loadtest"):
        p = procs.get(name)
        if p:
            lines.append(
                f"{name:<9} cpu {p['cpu_percent']:5.1f}%  peak rss {p['peak_rss_mb']:7.1f} MB  "
                f"share of the test's CPU {share.get(STAGES[name], 0.0):4.1f}%"
            )
    cost = report.get("unit_cost_us", {})
    if cost:
        shown = "  ".join(f"{k} {v:g}" for k, v in cost.items() if v is not None)
        lines.append(f"cpu/unit  {shown} (µs)")
        system = report.get("unit_cost_system_us", {})
        kernel = "  ".join(f"{k} {v:g}" for k, v in system.items() if v is not None)
        if kernel:
            lines.append(f"  kernel  {kernel} (µs of system time within those)")
    for race, truth in report.get("injected", {}).items():
        done = ", ".join(f"{k} {v}" for k, v in truth["injected"].items()) or "nothing"
        e = truth["expected"]
        lines.append(
            f"injected  {race}: {done}; a seq-keeping consumer counts {e['gaps']} missing "
            f"seqs, {e['duplicates']} duplicates, {e['malformed']} malformed"
        )
    curve = report.get("load_curve", [])
    if report.get("config", {}).get("ramp_s") and curve:
        knee = " ".join(
            f"{p['races']}:{p['messages_per_s']:,.0f}/s@{p['p99_ms']:,.1f}ms" for p in curve
        )
        lines.append(f"ramp      races: ws msgs/s @ p99  {knee}")
    load = report["machine"].get("load_average", {})
    lines.append(
        f"machine   {report['cpu_cores_used']:.2f} cores used by the test of "
        f"{report['machine']['cores']}; load average {load.get('start')} -> {load.get('end')}"
    )
    if "verdict" in report:
        lines.append(report["verdict"]["line"])
    return lines
