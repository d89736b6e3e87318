"""``chequered loadtest``: many races at once through the real pipeline to many websocket clients,
or through a service of someone else's (``--target``, ``--target-mqtt``).

Prints progress on stderr while it runs, a summary at the end, and writes
``report.json`` and ``report.html`` to the output folder (docs/LOADTEST.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from chequered.cli.live import add_fault_options, fault_rates
from chequered.cli.main import UserError

MAX_PROCESSES = 64
"""Most projector or gateway processes one load test starts."""


def _speed(text: str) -> float | None:
    if text.lower() in ("max", "asap", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a speed: give race seconds per wall second (0.1 to 1000) or 'max'"
        ) from None
    if not 0.1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"speed {value} is outside 0.1..1000 (or 'max')")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "loadtest",
        help="run many races through producer, broker, projector and gateway to many clients",
        description=(
            "Replays N copies of a recorded race (race ids load-0001.., one seed each) through "
            "the real producer, projector and gateway, each in its own process, to M websocket "
            "clients; reports throughput, latency percentiles, loss, and CPU and memory per "
            "component. Without --broker a private Mosquitto is started."
        ),
    )
    parser.add_argument("--races", type=int, default=10, help="races at once (default 10)")
    parser.add_argument(
        "--speed", type=_speed, default=60.0, help="replay speed, 0.1..1000 or 'max' (default 60)"
    )
    parser.add_argument("--clients", type=int, default=100, help="websocket clients (default 100)")
    parser.add_argument(
        "--duration", type=_positive, default=60.0, help="seconds to run (default 60)"
    )
    parser.add_argument("--broker", help="broker URL; default: start a private Mosquitto")
    parser.add_argument(
        "--recording", default=None, help="recording name or path (default the 2013 Monterey race)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("loadtest-out"),
        help="report folder (default loadtest-out)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the first race (default 0)")
    parser.add_argument(
        "--race-prefix",
        default="load-",
        help="race ids are PREFIX0001.. (default load-); a fresh one per run keeps a "
        "long-running service from taking a new run for a replay of the last",
    )
    parser.add_argument("--class", dest="cls", help="subscribe clients to one class only")
    parser.add_argument(
        "--client-workers", type=int, help="client processes (default: one per 500 clients, max 4)"
    )
    parser.add_argument(
        "--client-impl",
        choices=("lean", "websockets"),
        default="lean",
        help="websocket client: built-in lean RFC 6455 client (default) or the websockets library",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="offer permessage-deflate, as browsers do (either client; the gateway agrees to it"
        " unless served with --no-compression)",
    )
    parser.add_argument(
        "--client-nice", type=int, default=0, help="niceness of the client processes (default 0)"
    )
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="run the projector without checkpoints"
    )
    parser.add_argument(
        "--gateway-host",
        default="127.0.0.1",
        help="address the gateway listens on (default 127.0.0.1; 0.0.0.0 for remote clients)",
    )
    parser.add_argument(
        "--gateway-port", type=int, default=0, help="gateway port (default: a free one)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    other = parser.add_argument_group(
        "a service of yours",
        "Measure someone else's consumer instead of our projector and gateway: the load "
        "test publishes the races on --broker and measures what the service gives back "
        "(docs/LOADTEST.md).",
    )
    other.add_argument(
        "--target",
        metavar="URL",
        help="websocket endpoint speaking the documented protocol, ws://host:port/path",
    )
    other.add_argument(
        "--target-mqtt",
        action="store_true",
        help="publish only; measure the MQTT consumer by the standings it publishes",
    )
    other.add_argument(
        "--probe",
        metavar="TOPIC",
        help="with --target-mqtt: the topic your consumer publishes per race, {race} in it "
        "(default: chequered/v2/{race}/standings and standings/delta)",
    )
    scale = parser.add_argument_group("every core")
    scale.add_argument(
        "--projectors",
        type=int,
        default=1,
        metavar="N",
        help="projector processes, each owning a stable-hash partition of the races "
        "(as chequered project --processes N; default 1)",
    )
    scale.add_argument(
        "--gateways",
        type=int,
        default=1,
        metavar="M",
        help="gateway processes on one port, SO_REUSEPORT (as chequered serve --workers M; "
        "default 1)",
    )
    scale.add_argument(
        "--projector-setting",
        action="append",
        metavar="NAME=VALUE",
        help="change one ProjectorSettings field for the run (repeatable), e.g. "
        "flush_delay_s=0.025: to measure one setting against another",
    )
    scale.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default="asyncio",
        help="event loop of the processes under test, and of the clients too when uvloop "
        "(default asyncio; uvloop needs pip install uvloop)",
    )
    scale.add_argument(
        "--client-loop",
        choices=["asyncio", "uvloop"],
        default=None,
        help="event loop of the load generator's client processes (default uvloop where "
        "installed, else asyncio: the clients share the machine with what they measure)",
    )
    load = parser.add_argument_group("offered load over time")
    load.add_argument(
        "--connect-rate",
        type=_positive,
        metavar="R",
        help="open loop: clients connect at R per second during the run (default: all first)",
    )
    load.add_argument(
        "--ramp",
        type=_positive,
        metavar="S",
        help="start the races one after another over S seconds (default: all at once)",
    )
    add_fault_options(parser, record_file=False)
    parser.set_defaults(handler=_run)


def _setting(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name or not value:
        raise UserError(f"--projector-setting {text}: give NAME=VALUE")
    return name.strip(), value.strip()


def _run(args: argparse.Namespace) -> int:
    try:
        from loadtest import run as loadtest
    except ModuleNotFoundError as exc:
        raise UserError(f"the load test needs {exc.name}: pip install 'chequered[load]'") from None
    if args.races < 1:
        raise UserError(f"--races {args.races}: give at least 1")
    if args.clients < 0:
        raise UserError(f"--clients {args.clients}: must not be negative")
    if args.client_workers is not None and args.client_workers < 1:
        raise UserError(f"--client-workers {args.client_workers}: give at least 1")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,50}", args.race_prefix):
        raise UserError(f"--race-prefix {args.race_prefix}: lower-case letters, digits, - and _")
    for flag, count in (("--projectors", args.projectors), ("--gateways", args.gateways)):
        if not 1 <= count <= MAX_PROCESSES:
            raise UserError(f"{flag} {count}: give 1 to {MAX_PROCESSES}")
    recording = args.recording or loadtest.DEFAULT_RECORDING
    try:
        from simulator.recording import io as recording_io

        recording_io.find(recording)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    config = loadtest.LoadConfig(
        races=args.races,
        speed=args.speed,
        clients=args.clients,
        duration_s=args.duration,
        broker=args.broker,
        recording=recording,
        out=args.out,
        seed=args.seed,
        race_prefix=args.race_prefix,
        cls=args.cls,
        client_workers=args.client_workers,
        client_impl=args.client_impl,
        compression=args.compression,
        client_nice=args.client_nice,
        checkpoint=not args.no_checkpoint,
        gateway_host=args.gateway_host,
        gateway_port=args.gateway_port,
        progress=None if args.quiet else sys.stderr,
        target=args.target,
        target_mqtt=args.target_mqtt,
        probe=args.probe,
        connect_rate=args.connect_rate,
        ramp_s=args.ramp or 0.0,
        faults=fault_rates(args),
        projectors=args.projectors,
        gateways=args.gateways,
        projector_settings=tuple(_setting(text) for text in args.projector_setting or ()),
        event_loop=args.loop,
        client_loop=args.client_loop,
    )
    try:
        report = loadtest.run(config)
    except loadtest.LoadTestError as exc:
        raise UserError(str(exc)) from None
    for line in loadtest.summary_lines(report):
        print(line)
    print(f"report    {args.out / 'report.json'}, plot {args.out / 'report.html'}")
    return 0 if report["loss"]["lossless"] else 1
