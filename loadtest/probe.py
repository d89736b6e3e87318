"""The load test's probe of an MQTT consumer: reads what the consumer publishes per race.

For ``chequered loadtest --target-mqtt``: the load test only publishes, and
a consumer of someone else's folds the feed and publishes its own standings.
The probe subscribes to those (by default the documented ``standings`` and
``standings/delta`` topics of every race; ``--probe`` names another topic with
``{race}`` in it), and measures them as the websocket clients measure the
gateway's messages: latency from the ``wall`` a payload carries, loss by its
``seq`` and ``prev_seq``. It reports in the same ticks as a client process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import msgspec

from chequered.contract import topics
from loadtest.client import Assignment, ClientState, Worker, WorkerConfig


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    broker: str
    races: tuple[str, ...]
    pattern: str | None = None
    """A topic with ``{race}`` in it; None reads the standings and their deltas."""
    interval_s: float = 1.0


class _Probe(msgspec.Struct):
    type: str = ""
    seq: int = 0
    prev_seq: int = 0
    wall: float = 0.0


_decoder = msgspec.json.Decoder(_Probe)


def subscriptions(config: ProbeConfig) -> list[str]:
    """The topic filters of the probe: one per race for a named topic, else two wildcards."""
    if config.pattern is None:
        return [topics.all_races(topics.STANDINGS), topics.all_races(topics.STANDINGS_DELTA)]
    return [config.pattern.replace("{race}", race) for race in config.races]


def race_of(config: ProbeConfig, topic: str) -> str | None:
    if config.pattern is None:
        return topics.race_of(topic)
    head, _, tail = config.pattern.partition("{race}")
    if not (topic.startswith(head) and topic.endswith(tail)):
        return None
    return topic[len(head) : len(topic) - len(tail)] if tail else topic[len(head) :]


def observe(state: ClientState, worker: Worker, payload: bytes, retained: bool, now: float) -> None:
    """One payload of the consumer under test: a delta chains on ``prev_seq``; anything
    else (a snapshot, a payload of the user's own) is a whole view at ``seq``."""
    rec = worker.recorder
    rec.messages += 1
    rec.received_bytes += len(payload)
    state.messages += 1
    if not payload:
        return  # a retained message cleared
    try:
        probe = _decoder.decode(payload)
    except msgspec.DecodeError:
        state.errors += 1
        state.error = "payload without a seq: not JSON, or seq/wall of the wrong type"
        return
    if probe.seq <= 0:
        state.errors += 1
        state.error = "payload without a seq"
        return
    state.last_at = now
    if probe.type == "delta":
        if state.chain.delta(probe.seq, probe.prev_seq) and probe.wall > 0:
            rec.tally.add(now - probe.wall)
        return
    first = state.chain.last is None
    if probe.type == "snapshot" and not first and probe.seq <= (state.chain.last or 0):
        # The documented standings trail their deltas (a snapshot is held back a moment
        # after the delta that made it): an older view is no fault of the service.
        return
    state.snapshots += 1
    # A retained one shows the consumer as it stood before the probe came: its age is
    # not a delivery latency.
    if state.chain.snapshot(probe.seq) and not (first and retained) and probe.wall > 0:
        rec.tally.add(now - probe.wall)


def probe_main(config: ProbeConfig, conn: Connection) -> None:
    """Entry point of the probe process: run until the parent says ``stop``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_run(config, conn))
    conn.close()


async def _run(config: ProbeConfig, conn: Connection) -> None:
    from broker.bus import connect

    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def readable() -> None:
        try:
            if conn.recv() == "stop":
                stopped.set()
        except EOFError:
            loop.remove_reader(conn.fileno())
            stopped.set()

    loop.add_reader(conn.fileno(), readable)
    assignments = tuple(Assignment(i, race) for i, race in enumerate(config.races))
    worker = Worker(WorkerConfig(worker=0, url="", clients=assignments), conn.send_bytes)
    states = {state.assignment.race: state for state in worker.states}

    async def read() -> None:
        try:
            async with connect(config.broker, client_id=f"loadtest-probe-{id(config)}") as bus:
                for pattern in subscriptions(config):
                    await bus.subscribe(pattern, qos=1)
                for state in states.values():
                    state.connected = True
                async for message in bus.messages():
                    race = race_of(config, message.topic)
                    seen = states.get(race) if race is not None else None
                    if seen is not None:
                        observe(seen, worker, message.payload, message.retain, time.time())
        except Exception as exc:  # the probe's fault is reported, never the run's crash
            for state in states.values():
                state.failed = not state.connected
                state.error = f"{type(exc).__name__}: {exc}"

    reader = asyncio.create_task(read())
    while not stopped.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), config.interval_s)
        conn.send_bytes(worker.tick(final=stopped.is_set()))
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    loop.remove_reader(conn.fileno())
