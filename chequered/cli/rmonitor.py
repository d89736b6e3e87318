"""``chequered import-rmonitor`` and ``chequered rmonitor``: RMonitor in and out.

``import-rmonitor`` turns a recorded RMonitor stream into a recording (the
shell around ``simulator.importers.rmonitor_session``); ``rmonitor`` serves a
live race as an RMonitor TCP stream (around ``consumers.rmonitor.server``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
from pathlib import Path
from typing import Any

from chequered import log
from chequered.cli.broker_options import broker_address, broker_options
from chequered.cli.files import refuse_overwrite
from chequered.cli.main import UserError
from chequered.cli.timing import parse_duration

_log = log.get(__name__)


def _date(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")
    return text


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is outside 0..65535")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "import-rmonitor",
        help="import a recorded RMonitor stream (Orbits, MyLaps) as a replay",
        description=(
            "Build a recording with lap-by-lap timing from a recorded RMonitor stream "
            "($A $COMP $B $C $E $F $G $H $I $J $L records, one a line). A capture may hold "
            "several sessions: the one with the timing is taken unless --session names "
            "another. Every record the import had to drop or decide on is reported in one "
            "line. See docs/TIMING.md."
        ),
    )
    p.add_argument("file", metavar="FILE", help="recorded stream (text, one record a line)")
    p.add_argument(
        "-o", "--output", metavar="FILE.json", help="where to write (default: replays/ID.json)"
    )
    p.add_argument("--force", action="store_true", help="replace the recording if it exists")
    p.add_argument("--session", help="$B run number or name of the session to import")
    p.add_argument(
        "--kind",
        choices=("race", "qualifying"),
        help="race (ordered by laps) or qualifying (practice, tests: ordered by best lap); "
        "default from the session's name",
    )
    p.add_argument("--id", help="recording id, e.g. alms-2009-sebring-test-4")
    p.add_argument("--event", help="event name")
    p.add_argument("--series", help="series name (the stream does not carry it)")
    p.add_argument("--season", type=int, help="year (default: the stream's $I or $L date)")
    p.add_argument("--date", type=_date, help="date of the session, YYYY-MM-DD")
    p.add_argument("--round", type=int, help="championship round")
    p.add_argument("--circuit", help="circuit name (default: $E TRACKNAME)")
    p.add_argument("--lap-km", type=float, help="lap length in km (default: $E TRACKLENGTH)")
    p.add_argument(
        "--track-unit",
        choices=("mi", "km"),
        default="mi",
        help="unit of $E TRACKLENGTH (default mi, as North American timing writes it)",
    )
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--duration", type=parse_duration, help="scheduled length: 2h40, 160m, 2:40:00"
    )
    group.add_argument("--laps", dest="scheduled_laps", type=int, help="scheduled lap count")
    p.set_defaults(handler=run_import)

    serve = subparsers.add_parser(
        "rmonitor",
        parents=[broker_options(required=True)],
        help="serve a live race as an RMonitor TCP stream (for scoreboards and timing tools)",
        description=(
            "Reads a race's events from the broker and serves them on a TCP port in the "
            "RMonitor line protocol: the session, classes, entries and track at connect and "
            "after a reset, $F every second, $J/$G/$H as cars cross the line, $L at the pit "
            "lane. Any number of clients; a client that stops reading is closed, never "
            "waited for."
        ),
    )
    serve.add_argument(
        "race", nargs="?", metavar="RACE", help="race id (default: the first race seen)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_port, default=50000, help="TCP port (default 50000)")
    serve.add_argument(
        "--client-buffer-kb",
        type=int,
        default=256,
        help="unsent KB a client may hold before it is closed (default 256)",
    )
    serve.set_defaults(handler=run_serve)


def run_import(args: argparse.Namespace) -> int:
    from simulator.importers.rmonitor import RMonitorError, decode
    from simulator.importers.rmonitor_session import Options, SessionError, import_session
    from simulator.recording import io as recording_io

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from exc
    options = Options(
        session=args.session,
        kind=args.kind,
        id=args.id,
        series=args.series,
        season=args.season,
        event=args.event,
        date=args.date,
        round=args.round,
        circuit=args.circuit,
        lap_km=args.lap_km,
        track_unit=args.track_unit,
        duration_s=args.duration,
        laps=args.scheduled_laps,
    )
    try:
        imported = import_session(decode(data, str(path)), options)
    except (RMonitorError, SessionError) as exc:
        _log.warning("import_rmonitor_rejected", error=str(exc))
        raise UserError(f"{exc}; nothing written") from exc
    rec = imported.recording
    output = (
        Path(args.output) if args.output else recording_io.replays_dir() / f"{rec.facts.id}.json"
    )
    refuse_overwrite([output], force=args.force)
    encoded = recording_io.dumps(rec)
    try:
        recording_io.loads(encoded, str(output))
    except recording_io.RecordingError as exc:
        raise UserError(f"{exc}; nothing written") from exc
    try:
        recording_io.save(rec, output)
    except OSError as exc:
        raise UserError(f"{output}: cannot write: {exc.strerror}") from exc
    for line in imported.report:
        print(f"{path}: {line}")
    facts = rec.facts
    print(
        f"{output}: {facts.event} ({facts.session}) at {facts.circuit.name}: "
        f"{len(rec.entries)} cars, {len(rec.laps)} laps"
    )
    _log.info("import_rmonitor_saved", path=str(output), cars=len(rec.entries), laps=len(rec.laps))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from consumers.rmonitor.server import RMonitorServer, RMonitorSettings

    address = broker_address(args)
    if args.client_buffer_kb < 1:
        raise UserError(f"--client-buffer-kb {args.client_buffer_kb}: must be 1 or more")
    settings = RMonitorSettings(
        host=args.host, port=args.port, client_buffer_bytes=args.client_buffer_kb * 1024
    )
    server = RMonitorServer(race=args.race, settings=settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await server.run(address, stop)

    try:
        asyncio.run(main())
    except OSError as exc:
        raise UserError(f"--port {args.port}: cannot listen: {exc.strerror}") from exc
    return 0
