"""``chequered replay``, ``chequered control`` and ``chequered demo``: the live feed's commands.

``replay`` runs the producer alone; ``control`` sends one command to a running
producer and prints its reply; ``demo`` runs a broker (or the in-process bus),
the producer, the projector and the gateway in one process with a progress bar.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import re
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgspec

from broker import mosquitto
from broker.bus import BrokerAddress, BusError, connect
from chequered import heap
from chequered.cli.broker_options import broker_address, broker_options
from chequered.cli.main import UserError
from chequered.contract import control, topics
from chequered.contract.control import Command, Pause, Resume, Seek, SetSpeed, Status
from chequered.contract.events import Event
from simulator.live.clock import SpeedError, check_speed
from simulator.live.faults import FaultError, FaultRates, Injector
from simulator.live.feed import TimelineError
from simulator.live.producer import ReplaySpec, run_producer

DEFAULT_DEMO_RACE = "alms-2013-monterey-race"
DEFAULT_DEMO_SPEED = 60.0
REPLY_TIMEOUT_S = 5.0
"""How long ``chequered control`` waits for the producer's reply."""


def register(subparsers: Any) -> None:
    broker = broker_options()
    waiting = argparse.ArgumentParser(add_help=False)
    waiting.add_argument(
        "--timeout",
        type=float,
        default=REPLY_TIMEOUT_S,
        help=f"seconds to wait for the reply (default {REPLY_TIMEOUT_S:g})",
    )

    replay = subparsers.add_parser(
        "replay",
        parents=[broker],
        help="replay recorded races on an MQTT broker at a chosen speed",
        description="Publish each race's events on chequered/v2/<race>/events at the clock's "
        "pace, retain its facts (meta) and the producer's status, and obey commands on "
        "chequered/v2/<race>/control until interrupted.",
    )
    replay.add_argument("races", nargs="+", metavar="RACE", help="recording name or path")
    _add_speed_and_seed(replay, default_speed=1.0)
    replay.add_argument("--paused", action="store_true", help="start with the clock paused")
    replay.add_argument(
        "--copies", type=_positive, default=1, help="run each race N times as RACE-1..RACE-N"
    )
    replay.add_argument("--client-id", help="MQTT client id prefix (one connection per race)")
    replay.add_argument(
        "--exit-at-end", action="store_true", help="stop when every race has finished"
    )
    add_fault_options(replay)
    replay.set_defaults(handler=_replay)

    ctl = subparsers.add_parser(
        "control",
        help="pause, resume, change speed or seek a running replay",
        description="Publish one command on chequered/v2/RACE/control and print the "
        "producer's reply from chequered/v2/RACE/status. Exit status 1 if it was rejected.",
    )
    ctl.add_argument("race", metavar="RACE", type=_race_id, help="race id on the wire")
    actions = ctl.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("pause", parents=[broker, waiting], help="pause the race clock")
    actions.add_parser("resume", parents=[broker, waiting], help="resume the race clock")
    speed = actions.add_parser("speed", parents=[broker, waiting], help="change speed")
    speed.add_argument("speed", type=_speed, help="0.1 to 1000, or max (as fast as possible)")
    seek = actions.add_parser(
        "seek", parents=[broker, waiting], help="jump to a lap or a race time"
    )
    where = seek.add_mutually_exclusive_group(required=True)
    where.add_argument("--lap", type=_positive, help="the moment the leader starts lap N")
    where.add_argument("--time", type=_race_time, help="race time: H:MM:SS, M:SS or seconds")
    ctl.set_defaults(handler=_control)

    status = subparsers.add_parser(
        "status",
        parents=[broker, waiting],
        help="print a race's retained producer status",
        description="Read chequered/v2/RACE/status. Exit status 0 while a producer serves "
        "the race (running, paused, finished), 1 when it is offline, 2 when there is none.",
    )
    status.add_argument("race", metavar="RACE", type=_race_id, help="race id on the wire")
    status.set_defaults(handler=_status)

    demo = subparsers.add_parser(
        "demo",
        help="replay a race in one process and serve the live leaderboard",
        description="Run a broker (a private Mosquitto where installed, else the in-process "
        "bus), the producer, the projector and the gateway; print the widget's URL and show "
        "progress until the race ends, then keep serving until Ctrl-C.",
    )
    demo.add_argument("race", metavar="RACE", nargs="?", default=DEFAULT_DEMO_RACE)
    _add_speed_and_seed(demo, default_speed=DEFAULT_DEMO_SPEED)
    demo.add_argument("--broker", help="use this broker instead of a private one")
    demo.add_argument("--host", default="127.0.0.1", help="gateway address (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=0, help="gateway port (default: a free one)")
    demo.add_argument("--exit-at-end", action="store_true", help="exit when the race ends")
    demo.add_argument(
        "--no-spoilers",
        action="store_true",
        help="spoiler-safe: the widget hides a result not watched arrive, and the progress "
        "lines show no race length, result or winner",
    )
    demo.set_defaults(handler=_demo)


# -- argument types ----------------------------------------------------------------


def _add_speed_and_seed(parser: argparse.ArgumentParser, *, default_speed: float) -> None:
    parser.add_argument(
        "--speed",
        type=_speed,
        default=default_speed,
        help=f"race seconds per second, 0.1 to 1000, or max (default {default_speed:g})",
    )
    parser.add_argument("--seed", type=int, default=1, help="timeline seed (default 1)")


def _speed(text: str) -> float | None:
    if text.lower() in ("max", "afap", "none"):
        return None
    try:
        return check_speed(float(text.rstrip("xX")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc) if isinstance(exc, SpeedError) else
                                         f"{text!r} is not a speed") from None  # fmt: skip


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


_TIME = re.compile(r"^(?:(?:(\d+):)?(\d{1,2}):)?(\d+(?:\.\d+)?)$")


def _race_id(text: str) -> str:
    try:
        return topics.check_race_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _race_time(text: str) -> int:
    """``1:02:03.5``, ``62:03`` or ``3723.5`` (seconds) as milliseconds."""
    match = _TIME.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a race time (H:MM:SS, M:SS or seconds)")
    hours, minutes, seconds = match.groups()
    return round((int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)) * 1000)


def format_ms(t_ms: float) -> str:
    seconds = int(t_ms // 1000)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# -- loading races -------------------------------------------------------------------


def load_timeline(name: str, *, seed: int, race: str | None = None) -> tuple[str, list[Event]]:
    """The race id and the events of a recording (real timing as recorded, else synthesised)."""
    from simulator.recording import io as recording_io
    from simulator.timeline import timing_replay

    try:
        recording = recording_io.load(recording_io.find(name))
    except recording_io.RecordingError as exc:
        raise UserError(str(exc)) from None
    race = race or recording.facts.id
    if recording.laps:
        return race, timing_replay.replay(recording, race=race)
    try:  # imported by name: the timeline builder is optional for real-timing replays
        timeline = importlib.import_module("simulator.timeline.build")
    except ModuleNotFoundError:
        raise UserError(f"{name}: has no lap timing and this installation cannot "
                        "synthesise a timeline") from None  # fmt: skip
    events: list[Event] = timeline.build(recording, seed=seed, race=race)
    return race, events


def _specs(args: argparse.Namespace) -> list[ReplaySpec]:
    specs: list[ReplaySpec] = []
    rates = fault_rates(args)
    for name in args.races:
        race, events = load_timeline(name, seed=args.seed)
        ids = [race] if args.copies == 1 else [f"{race}-{i}" for i in range(1, args.copies + 1)]
        specs += [ReplaySpec(r, events, speed=args.speed, paused=args.paused,
                             faults=Injector(r, rates) if rates else None)
                  for r in ids]  # fmt: skip
    races = [spec.race for spec in specs]
    for race in races:
        if races.count(race) > 1:
            raise UserError(f"{race}: named twice; use --copies N to run a race several times")
    return specs


def _run(make: Callable[[asyncio.Event], Coroutine[Any, Any, int]]) -> int:
    """Run ``make(stop)``; SIGINT and SIGTERM set ``stop`` for a clean shutdown."""

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await make(stop)

    return asyncio.run(main())


# -- replay --------------------------------------------------------------------------


def _replay(args: argparse.Namespace) -> int:
    address = broker_address(args)
    specs = _specs(args)
    heap.settle()  # the timelines stay to the end: out of the collector's way
    finished: set[str] = set()

    async def main(stop: asyncio.Event) -> int:
        def on_status(status: Status) -> None:
            if status.state == "finished":
                finished.add(status.race)
                if args.exit_at_end and len(finished) == len(specs):
                    stop.set()

        try:
            await run_producer(address, specs, stop=stop, client_id=args.client_id,
                               on_status=on_status)  # fmt: skip
        except* TimelineError as group:
            raise UserError(str(group.exceptions[0])) from None
        finally:
            _report_faults(specs, args.injected_out)
        return 0

    return _run(main)


# -- the hostile feed ----------------------------------------------------------------


def add_fault_options(parser: argparse.ArgumentParser, *, record_file: bool = True) -> None:
    """The hostile feed's options (``fault_rates`` reads them); ``chequered loadtest`` has
    them too, its report holding the record instead of ``--injected-out``."""
    group = parser.add_argument_group(
        "hostile feed",
        "Inject the faults real feeds and brokers cause, each a probability per events "
        "message, reproducible by --fault-seed. Each fault is labelled on "
        "chequered/v2/<race>/injected and counted in the status; a summary is printed at "
        "the end (docs/PROTOCOL.md, docs/LOADTEST.md).",
    )
    rates = (
        ("--duplicate", "publish a message twice"),
        ("--drop", "do not publish a message (a seq gap)"),
        ("--reorder", "publish a message behind later ones"),
        ("--burst", "hold the feed --burst-s, then release what piled up at once"),
        ("--stall", "silence the race (events and status) for --stall-s, then resume"),
        ("--seek-back", "seek the race back to an earlier race time"),
        ("--malformed", "publish a malformed payload beside a message"),
    )
    for flag, what in rates:
        group.add_argument(flag, type=_rate, default=0.0, metavar="P", help=what)
    d = FaultRates()
    settings: tuple[tuple[str, type, object, str], ...] = (
        ("--fault-seed", int, d.seed, "seed of the faults"),
        ("--reorder-window", int, d.reorder_window, "a reordered message goes behind 1 to N"),
        ("--burst-s", float, d.burst_s, "seconds a burst holds the feed"),
        ("--stall-s", float, d.stall_s, "seconds a stall lasts"),
        ("--max-seeks", int, d.max_seeks, "backward seeks per race at most"),
        ("--max-faults", int, d.max_faults, "faults per race at most, then an honest feed"),
    )
    for flag, kind, default, what in settings:
        shown = "no limit" if default is None else default
        group.add_argument(flag, type=kind, default=default, help=f"{what} (default {shown})")
    if not record_file:
        return
    group.add_argument(
        "--injected-out", type=Path, metavar="FILE",
        help="write every race's record of faults (JSON) here at the end",
    )  # fmt: skip


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a rate from 0 to 1")
    return value


def fault_rates(args: argparse.Namespace) -> FaultRates | None:
    """The faults asked for, or None for an honest feed."""
    try:
        rates = FaultRates(
            seed=args.fault_seed, duplicate=args.duplicate, drop=args.drop,
            reorder=args.reorder, reorder_window=args.reorder_window, burst=args.burst,
            burst_s=args.burst_s, stall=args.stall, stall_s=args.stall_s,
            seek_back=args.seek_back, max_seeks=args.max_seeks, malformed=args.malformed,
            max_faults=args.max_faults,
        )  # fmt: skip
    except FaultError as exc:
        raise UserError(str(exc)) from None
    return rates if rates.active else None


def _report_faults(specs: list[ReplaySpec], out: Path | None) -> None:
    """Print what was injected into each race; write the whole record to ``out``."""
    injectors = [spec.faults for spec in specs if spec.faults is not None]
    if not injectors:
        return
    for injector in injectors:
        injected = ", ".join(f"{k} {v}" for k, v in injector.counts.items() if v) or "nothing"
        e = injector.expected
        print(f"{injector.race}: injected {injected}; a consumer keeping the highest seq counts "
              f"{e.gaps} missing seqs ({e.gap_events} gaps), {e.duplicates} duplicates, "
              f"{e.malformed} malformed, {e.resets} resets", file=sys.stderr)  # fmt: skip
    if out is not None:
        records = [{**i.summary(), "record": msgspec.to_builtins(i.record)} for i in injectors]
        try:
            out.write_text(json.dumps(records, indent=1) + "\n")
        except OSError as exc:
            print(f"--injected-out {out}: {exc.strerror}", file=sys.stderr)


# -- control -------------------------------------------------------------------------


def _command(args: argparse.Namespace, cid: str) -> Command:
    if args.action == "pause":
        return Pause(id=cid)
    if args.action == "resume":
        return Resume(id=cid)
    if args.action == "speed":
        return SetSpeed(id=cid, speed=args.speed)
    return Seek(id=cid, lap=args.lap, t_ms=args.time)


async def send_command(
    address: BrokerAddress | str, race: str, command: Command, within_s: float = REPLY_TIMEOUT_S
) -> Status:
    """Publish ``command`` (which must carry an id) and return the status that answers it.

    Commands are not retained, so one published before the producer subscribes is lost. The
    producer subscribes to its control topic before it publishes a status, so the command goes
    out only once a live (not ``offline``) status has been seen.
    """
    last: Status | None = None

    async def exchange() -> Status:
        nonlocal last
        sent = False
        async with connect(address, client_id=f"chequered-control-{command.id}") as bus:
            await bus.subscribe(topics.topic(race, topics.STATUS), qos=1)
            async for message in bus.messages():
                try:
                    status = control.decode_status(message.payload)
                except ValueError:
                    continue
                last = status
                if status.reply is not None and status.reply.id == command.id:
                    return status
                if not sent and status.state != "offline":
                    payload = control.encode(command)
                    await bus.publish(topics.topic(race, topics.CONTROL), payload, qos=1)
                    sent = True
        raise UserError(f"{race}: the broker closed the connection before a reply")

    try:
        return await asyncio.wait_for(exchange(), within_s)
    except TimeoutError:
        state = f"its status says {last.state}" if last else "it has no status"
        raise UserError(
            f"{race}: no reply within {within_s:g} s ({state}); is a producer replaying it?"
        ) from None


def describe(status: Status) -> str:
    speed = "max" if status.speed is None else f"{status.speed:g}x"
    end = f" / {format_ms(status.end_ms)}" if status.end_ms is not None else ""
    return f"{status.state} at {format_ms(status.t_ms)}{end}, speed {speed}, seq {status.last_seq}"


def _control(args: argparse.Namespace) -> int:
    address = broker_address(args)
    command = _command(args, uuid.uuid4().hex[:12])
    try:
        status = asyncio.run(send_command(address, args.race, command, args.timeout))
    except (OSError, BusError) as exc:
        raise UserError(f"--broker {address.url()}: {exc}") from None
    reply = status.reply
    assert reply is not None
    if reply.ok:
        print(f"{args.race}: {reply.cmd}: ok; {describe(status)}")
        return 0
    print(f"{args.race}: {reply.cmd}: rejected: {reply.error}", file=sys.stderr)
    return 1


async def read_status(address: BrokerAddress | str, race: str, within_s: float) -> Status:
    """The race's retained status; UserError if none comes within ``within_s``."""

    async def first() -> Status:
        async with connect(address, client_id=f"chequered-status-{uuid.uuid4().hex[:12]}") as bus:
            await bus.subscribe(topics.topic(race, topics.STATUS), qos=1)
            async for message in bus.messages():
                return control.decode_status(message.payload)
        raise UserError(f"{race}: the broker closed the connection")

    try:
        return await asyncio.wait_for(first(), within_s)
    except TimeoutError:
        raise UserError(f"{race}: no status within {within_s:g} s; nothing replays it") from None


def _status(args: argparse.Namespace) -> int:
    address = broker_address(args)
    try:
        status = asyncio.run(read_status(address, args.race, args.timeout))
    except (OSError, BusError) as exc:
        raise UserError(f"--broker {address.url()}: {exc}") from None
    except ValueError as exc:
        raise UserError(f"{args.race}: the retained status is not readable: {exc}") from None
    print(f"{args.race}: {describe(status)}")
    return 1 if status.state == "offline" else 0


# -- demo ----------------------------------------------------------------------------


def _demo(args: argparse.Namespace) -> int:
    from chequered.cli.demo import Demo

    race, events = load_timeline(args.race, seed=args.seed)
    address = broker_address(args, args.broker) if args.broker else None
    demo = Demo(race=race, events=events, speed=args.speed, address=address, url=args.broker,
                host=args.host, port=args.port, exit_at_end=args.exit_at_end,
                spoilers=not args.no_spoilers)  # fmt: skip
    try:
        return _run(demo.run)
    except* mosquitto.MosquittoError as group:
        raise UserError(str(group.exceptions[0])) from None
    except* BusError as group:
        shown = address.url() if address is not None else "the private broker"
        raise UserError(f"--broker {shown}: {group.exceptions[0]}") from None
    except* OSError as group:
        raise UserError(f"--host {args.host} --port {args.port}: {group.exceptions[0]}") from None
