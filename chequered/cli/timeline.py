"""Commands about timelines: ``timeline`` writes a session's event log, ``lapchart`` draws it.

A thin shell over ``simulator.timeline`` and ``simulator.lapchart``: it
finds and reads the recording, writes the output file, and turns what a
user can get wrong into one-line errors.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from chequered import log
from chequered.cli.main import UserError
from chequered.contract.events import Event, encode
from simulator.recording import io as recording_io
from simulator.timeline import build as timeline
from simulator.timeline import lapchart

_log = log.get(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "timeline",
        help="write a session's events as JSON Lines",
        description=(
            "Build the ordered event log of a recorded session: replayed from real timing "
            "when the recording has it, synthesised from the result otherwise (the same "
            "seed always gives the same events). One event per line."
        ),
    )
    p.add_argument("race", metavar="RACE", help="a recording: name in replays/ or a path")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed (default 0)")
    p.add_argument("-o", "--output", help="file to write (default: standard output)")
    p.set_defaults(handler=run_timeline)

    p = sub.add_parser(
        "lapchart",
        help="draw a lap chart (position by lap, one line per car) as SVG or PNG",
        description=(
            "Draw each car's running position lap by lap, coloured by class. "
            "The output's suffix picks the format: .svg or .png; both are drawn by "
            "matplotlib (pip install 'chequered[plot]')."
        ),
    )
    p.add_argument("race", metavar="RACE", help="a recording: name in replays/ or a path")
    p.add_argument("--seed", type=int, default=0, help="synthesis seed (default 0)")
    p.add_argument("-o", "--output", required=True, help="chart.svg or chart.png")
    p.set_defaults(handler=run_lapchart)


def build(race: str, seed: int) -> list[Event]:
    """The events of a recording named or given by path, with user errors as UserError."""
    try:
        path = recording_io.find(race)
        recording = recording_io.load(path)
    except recording_io.RecordingError as exc:
        raise UserError(str(exc)) from exc
    try:
        events = timeline.build(recording, seed=seed)
    except timeline.ERRORS as exc:
        raise UserError(f"{path}: {exc}") from exc
    _log.info("timeline_built", race=recording.facts.id, seed=seed, events=len(events))
    return events


def run_timeline(args: argparse.Namespace) -> int:
    events = build(args.race, args.seed)
    data = b"".join(encode(e) + b"\n" for e in events)
    if args.output:
        _write(Path(args.output), data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0


def run_lapchart(args: argparse.Namespace) -> int:
    out = Path(args.output)
    suffix = out.suffix.lower()
    if suffix not in (".svg", ".png"):
        raise UserError(f"{out}: a lap chart is written as .svg or .png")
    chart = lapchart.chart(build(args.race, args.seed))
    try:
        data = lapchart.render(chart, "svg" if suffix == ".svg" else "png")
    except lapchart.PlotUnavailable as exc:
        raise UserError(f"{out}: {exc}") from exc
    _write(out, data)
    return 0


def _write(path: Path, data: bytes) -> None:
    """Write atomically; a folder that cannot be written is the user's to fix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"{path}: cannot write: {exc.strerror}") from exc
