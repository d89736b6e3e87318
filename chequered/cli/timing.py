"""``chequered import-timing``: turn an Al Kamel lap export and its results into a replay.

The thin shell around ``simulator.alkamel``: reads the two files, passes the
facts given as flags, checks the recording and saves it atomically.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from chequered import log
from chequered.cli.files import refuse_overwrite
from chequered.cli.main import UserError
from simulator.importers.alkamel import Imported, Options, TimingError, decode, import_timing
from simulator.recording import io as recording_io

_log = log.get(__name__)

_DURATION = re.compile(r"^(?:(?P<h>\d+)\s*h)?\s*(?:(?P<m>\d+)\s*(?:m|min)?)?$", re.IGNORECASE)


def parse_duration(text: str) -> int:
    """Seconds of ``2h40``, ``2h40m``, ``160m``, ``2:40`` (h:mm), ``2:40:00`` or ``9600s``."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+s", text):
        seconds = int(text[:-1])
    elif re.fullmatch(r"\d+:\d{2}(:\d{2})?", text):
        parts = [int(p) for p in text.split(":")]
        seconds = parts[0] * 3600 + parts[1] * 60 + (parts[2] if len(parts) == 3 else 0)
    elif re.fullmatch(r"\d+", text):
        seconds = int(text)
    else:
        m = _DURATION.match(text)
        if not m or not (m.group("h") or m.group("m")) or ("h" not in text and "m" not in text):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (try 2h40, 160m, 2:40:00 or 9600s)"
            )
        seconds = int(m.group("h") or 0) * 3600 + int(m.group("m") or 0) * 60
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration must be longer than zero")
    return seconds


def _date(text: str) -> str:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD")
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import-timing",
        help="import an Al Kamel lap and results export (IMSA, WEC, ELMS) as a replay",
        description=(
            "Build a recording with lap-by-lap timing from an official Al Kamel export: "
            "the lap file (one row per car per lap) and the results file of the same "
            "session. Facts the files do not hold are derived where possible (see "
            "docs/TIMING.md) or given with the flags below."
        ),
    )
    p.add_argument("laps", metavar="LAPS.csv", help="lap-by-lap export (*-laps.csv, Analysis)")
    p.add_argument("--results", required=True, metavar="RESULTS.csv", help="results export")
    p.add_argument(
        "-o", "--output", metavar="FILE.json", help="where to write (default: replays/ID.json)"
    )
    p.add_argument("--force", action="store_true", help="replace the recording if it exists")
    p.add_argument("--id", help="recording id, e.g. imsa-2022-laguna-seca-race")
    p.add_argument("--event", help="event name, e.g. 'Northeast Grand Prix'")
    p.add_argument("--series", help="series name (default: from file names, columns, classes)")
    p.add_argument("--season", type=int, help="year (default: from the file name)")
    p.add_argument("--date", type=_date, help="date of the session, YYYY-MM-DD")
    p.add_argument("--round", type=int, help="championship round")
    p.add_argument(
        "--session",
        choices=("race", "qualifying"),
        help="session kind (default: race when the results have TOTAL_TIME)",
    )
    p.add_argument("--circuit", help="circuit name (default: known circuit in the file name)")
    p.add_argument("--lap-km", type=float, help="lap length in km (default: table or speeds)")
    p.add_argument("--turns", type=int, help="number of turns")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--duration",
        type=parse_duration,
        help="scheduled length: 2h40, 160m, 2:40:00 (default: from the leader's laps)",
    )
    group.add_argument("--laps", dest="scheduled_laps", type=int, help="scheduled lap count")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    laps_path = Path(args.laps)
    results_path = Path(args.results)
    options = Options(
        id=args.id,
        series=args.series,
        season=args.season,
        event=args.event,
        session=args.session,
        date=args.date,
        round=args.round,
        circuit=args.circuit,
        lap_km=args.lap_km,
        turns=args.turns,
        duration_s=args.duration,
        laps=args.scheduled_laps,
    )
    try:
        imported = import_timing(
            decode(_read(laps_path)),
            decode(_read(results_path)),
            laps_name=str(laps_path),
            results_name=str(results_path),
            options=options,
        )
    except TimingError as exc:
        _log.warning("import_timing_rejected", error=str(exc))
        raise UserError(str(exc)) from exc
    output = (
        Path(args.output)
        if args.output
        else recording_io.replays_dir() / (f"{imported.recording.facts.id}.json")
    )
    refuse_overwrite([output], force=args.force)
    save_imported(imported, output)
    for warning in imported.warnings:
        _log.warning("import_timing_warning", message=warning)
    rec = imported.recording
    facts = rec.facts
    length = (
        f"{facts.length.duration_s // 3600}h{facts.length.duration_s // 60 % 60:02d}"
        if facts.length.duration_s
        else f"{facts.length.laps} laps"
    )
    print(
        f"{output}: {facts.series} {facts.season}, {facts.event} ({facts.session}, {length}) "
        f"at {facts.circuit.name}: {len(rec.entries)} cars, {len(rec.laps)} laps"
    )
    _log.info("import_timing_saved", path=str(output), cars=len(rec.entries), laps=len(rec.laps))
    return 0


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from exc


def save_imported(imported: Imported, output: Path) -> None:
    data = recording_io.dumps(imported.recording)
    try:
        # The types check shapes on decode only: decode what we made before writing it.
        recording_io.loads(data, str(output))
    except recording_io.RecordingError as exc:
        _log.warning("import_timing_rejected", error=str(exc))
        raise UserError(f"{exc}; nothing written") from exc
    try:
        recording_io.save(imported.recording, output)
    except OSError as exc:
        raise UserError(f"{output}: cannot write: {exc.strerror}") from exc
