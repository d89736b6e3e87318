"""Commands about recordings: ``import`` an article, list the ``races``, ``validate`` files.

A thin shell: it reads and writes files and prints; the reading of articles,
merging of report facts, reconstruction and validation are pure modules.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from chequered import log
from chequered.cli.files import refuse_overwrite
from chequered.cli.main import UserError
from simulator.importers.article import (
    MAX_INPUT_BYTES,
    NO_RACE_RESULT,
    UNKNOWN_SERIES,
    ImportResult,
    Problem,
    import_article,
)
from simulator.recording import io as recording_io
from simulator.recording.format import Recording, SessionKind, json_schema

SCHEMA_PATH = Path("docs") / "schema" / "recording.schema.json"

_log = log.get(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "import",
        help="turn a race article into recordings (one file per session)",
        description=(
            "Read a plain-text race article and write its race and qualifying recordings. "
            "-o names the race file; the qualifying file is its '-qualifying' sibling "
            "(alms-2013-monterey-race.json -> alms-2013-monterey-qualifying.json). "
            "With --session qualifying, -o names the qualifying file."
        ),
    )
    p.add_argument("article", help="article text file")
    p.add_argument("-o", "--output", required=True, help="recording to write (race file)")
    p.add_argument("--force", action="store_true", help="replace recordings that exist already")
    p.add_argument("--session", choices=("race", "qualifying", "both"), default="both")
    p.add_argument(
        "--merge",
        metavar="CSV",
        help="classification facts from reports (pos,class,no,engine,laps,gap,status,"
        "confidence,note), merged with provenance",
    )
    p.add_argument(
        "--facts",
        metavar="TOML",
        help="race facts from reports (length, interruptions, notes, non-starters, "
        "reconstruction hints)",
    )
    p.add_argument(
        "--partial",
        action="store_true",
        help="write what could be read even when a table is garbled",
    )
    p.set_defaults(handler=run_import)

    p = sub.add_parser("races", help="list the recordings in the replays folder")
    p.add_argument("--dir", help="folder of recordings (default: the replays folder)")
    p.add_argument(
        "--no-spoilers",
        action="store_true",
        help="leave out what tells how a race went (DATA, YELLOW), to replay one not yet seen",
    )
    p.set_defaults(handler=run_races)

    p = sub.add_parser("validate", help="check recordings and explain every problem")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(handler=run_validate)

    p = sub.add_parser("recording-schema", help="write the JSON Schema of the recording format")
    p.add_argument("-o", "--output", help=f"file to write (default: print); e.g. {SCHEMA_PATH}")
    p.set_defaults(handler=run_schema)


# -- import -------------------------------------------------------------------


def output_paths(output: str, session: str) -> dict[SessionKind, Path]:
    """Where each session's recording goes: -o names the race file unless only qualifying."""
    out = Path(output)
    if out.suffix != ".json":
        raise UserError(f"{output}: a recording file name ends in .json")
    if session == "qualifying":
        return {"qualifying": out}
    stem = out.stem
    base = stem[: -len("-race")] if stem.endswith("-race") else stem
    paths: dict[SessionKind, Path] = {"race": out}
    if session == "both":
        paths["qualifying"] = out.with_name(f"{base}-qualifying.json")
    return paths


def _read_text(path: str) -> str:
    """The text of an input file, refused unread when larger than ``MAX_INPUT_BYTES``."""
    limit = MAX_INPUT_BYTES
    try:
        with Path(path).open("rb") as f:
            # Checked before reading, and the read itself is bounded: a pipe or a
            # device reports no size.
            size = os.fstat(f.fileno()).st_size
            data = f.read(limit + 1) if size <= limit else b""
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from exc
    if size > limit or len(data) > limit:
        _log.info("import_input_too_large", path=path, bytes=max(size, len(data)), limit=limit)
        shown = f"{size} bytes" if size > limit else f"more than {limit} bytes"
        raise UserError(
            f"{path}: {shown} is too large for an input ({limit} bytes at most, "
            "simulator.importers.article.MAX_INPUT_BYTES); is this the right file?"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def run_import(args: argparse.Namespace) -> int:
    text = _read_text(args.article)
    paths = output_paths(args.output, args.session)
    refuse_overwrite(paths.values(), force=args.force)
    sessions: tuple[SessionKind, ...] = tuple(paths)
    race_id = paths["race"].stem if "race" in paths else ""
    qualifying_id = paths["qualifying"].stem if "qualifying" in paths else ""
    _check_id(race_id or qualifying_id)
    result = import_article(
        text,
        race_id=race_id or "race",
        qualifying_id=qualifying_id or "qualifying",
        sessions=sessions,
    )
    problems: list[tuple[str, Problem]] = [(args.article, p) for p in result.problems]
    if result.race is not None and (args.merge or args.facts):
        from simulator.importers import merge

        csv_text = _read_text(args.merge) if args.merge else None
        facts_text = _read_text(args.facts) if args.facts else None
        merged = merge.merge_reports(
            result.race,
            result.article,
            csv_text=csv_text,
            csv_source=args.merge or "",
            facts_text=facts_text,
            facts_source=args.facts or "",
        )
        result.race = merged.recording
        # Facts that complete the garbled table settle the article's complaint about it.
        if merged.completes_classification:
            problems = [
                (s, p)
                for s, p in problems
                if not (
                    p.severity == "error"
                    and p.session == "race"
                    and ("garbled" in p.message or p.message.startswith(NO_RACE_RESULT))
                )
            ]
            problems.append(
                (
                    args.article,
                    Problem(
                        None,
                        f"race classification completed from the merged facts ({merged.summary})",
                        "warning",
                    ),
                )
            )
        problems.extend(merged.problems)
        length = result.race.facts.length
        if length.duration_s or length.laps:
            problems = [(s, p) for s, p in problems if "states no race length" not in p.message]
        if result.race.facts.series != UNKNOWN_SERIES:
            problems = [(s, p) for s, p in problems if "names no series" not in p.message]
        if result.qualifying is not None and merged.qualifying_notes:
            result.qualifying.notes.extend(merged.qualifying_notes)
    return _write_import(result, paths, problems, partial=args.partial)


def _check_id(race_id: str) -> None:
    import re

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", race_id) or len(race_id) > 64:
        raise UserError(
            f"{race_id}: a race id (the output file's name) is lower-case letters, digits, "
            "'-' and '_', e.g. alms-2013-monterey-race.json"
        )


def _write_import(
    result: ImportResult,
    paths: dict[SessionKind, Path],
    problems: list[tuple[str, Problem]],
    *,
    partial: bool,
) -> int:
    errors = [(s, p) for s, p in problems if p.severity == "error"]
    for source, problem in problems:
        print(problem.render(source), file=sys.stderr)
    if errors and not partial:
        print(
            f"chequered import: {len(errors)} problem(s); nothing written "
            "(use --partial to write what could be read)",
            file=sys.stderr,
        )
        return 2
    from simulator.recording.validate import validate

    written = 0
    for session, path in paths.items():
        recording = result.race if session == "race" else result.qualifying
        if recording is None:
            continue
        for issue in validate(recording):
            print(f"{path}: {issue.where}: warning: {issue.message}", file=sys.stderr)
        try:
            # What is written must load again: the types' limits are checked on decode.
            recording_io.loads(recording_io.dumps(recording), str(path))
        except recording_io.RecordingError as exc:
            print(f"{exc}; not written", file=sys.stderr)
            return 2
        recording_io.save(recording, path)
        print(f"wrote {path} ({_describe(recording)})")
        written += 1
    return 0 if written else 2


def _describe(recording: Recording) -> str:
    rows = recording.classification
    return f"{len(recording.entries)} entries, {len(rows)} classification rows"


# -- races --------------------------------------------------------------------


def completeness(recording: Recording) -> str:
    """How complete a recording is: classification rows by provenance, and timing."""
    counts: dict[str, int] = {}
    for row in recording.classification:
        counts[row.provenance] = counts.get(row.provenance, 0) + 1
    parts = [
        f"{k} {counts[k]}"
        for k in ("article", "report", "timing", "inferred", "unknown")
        if k in counts
    ]
    rows = ", ".join(parts) if parts else "no results"
    timing = f"laps {len(recording.laps)}" if recording.laps else "no lap timing"
    return f"{rows}; {timing}"


def _length(recording: Recording) -> str:
    length = recording.facts.length
    if length.duration_s:
        h, rem = divmod(length.duration_s, 3600)
        m = rem // 60
        if not h:
            return f"{m}min"
        return f"{h}h{m:02d}" if m else f"{h}h"
    if length.laps:
        return f"{length.laps} laps"
    return "-"


def run_races(args: argparse.Namespace) -> int:
    folder = Path(args.dir) if args.dir else recording_io.replays_dir()
    files = sorted(folder.glob("*.json"))
    if not files:
        print(f"no recordings in {folder}")
        return 0
    rows: list[list[str]] = []
    bad: list[str] = []
    for path in files:
        try:
            rec = recording_io.load(path)
        except recording_io.RecordingError as exc:
            bad.append(str(exc))
            continue
        f = rec.facts
        started = len(rec.grid) if rec.grid else len(rec.entries)
        row = [
            path.stem,
            f.session,
            f.date or "-",
            f"{f.circuit.name} {f.circuit.length_km:.3f} km",
            _length(rec),
            " ".join(rec.classes),
            f"{len(rec.entries)}/{started}",
        ]
        # The laps recorded and the share under yellow tell how the race went.
        rows.append(row if args.no_spoilers else [*row, completeness(rec), _yellow(rec)])
    header = ["NAME", "SESSION", "DATE", "CIRCUIT", "LENGTH", "CLASSES", "CARS"]
    if not args.no_spoilers:
        header += ["DATA", "YELLOW"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.no_spoilers:
        print("CARS: entered/started (qualifying: took part). Results, laps and yellows hidden"
              " (--no-spoilers).")  # fmt: skip
    else:
        print("CARS: entered/started (qualifying: took part). DATA: classification rows by source.")
        print(
            "YELLOW: share of laps under yellow or red; synthesised races (seed 0) run as much"
            " as their result needs (docs/TIMELINE.md)."
        )
    for message in bad:
        print(f"skipped {message}", file=sys.stderr)
    return 2 if bad else 0


def _yellow(rec: Recording) -> str:
    """Share of the race's laps run under yellow: as recorded, or as synthesised (seed 0)."""
    from simulator.timeline import build as timeline

    if rec.facts.session != "race" or not rec.classification:
        return "-"
    try:
        share = timeline.yellow_share(timeline.build(rec, seed=0))
    except timeline.ERRORS:
        return "-"
    if share is None:
        return "-"
    return f"{share:.0%}" + ("" if rec.laps else " synth")


# -- validate -----------------------------------------------------------------


def run_validate(args: argparse.Namespace) -> int:
    from simulator.recording.validate import Issue, validate, validate_bytes

    failed = 0
    for name in args.files:
        try:
            data = Path(name).read_bytes()
        except OSError as exc:
            issues = [Issue("file", f"cannot read: {exc.strerror}")]
        else:
            recording, issues = validate_bytes(data)
            if recording is not None:
                issues = validate(recording)
        for issue in issues:
            tag = "warning: " if issue.severity == "warning" else ""
            print(f"{name}: {issue.where}: {tag}{issue.message}", file=sys.stderr)
        if any(i.severity == "error" for i in issues):
            failed += 1
        else:
            print(f"{name}: ok" + (f" ({len(issues)} warning(s))" if issues else ""))
    if failed:
        print(
            f"chequered validate: {failed} of {len(args.files)} file(s) have problems",
            file=sys.stderr,
        )
        return 2
    return 0


# -- schema -------------------------------------------------------------------


def schema_text() -> str:
    """The committed ``docs/schema/recording.schema.json``, generated from the types."""
    schema: dict[str, Any] = json_schema()
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def run_schema(args: argparse.Namespace) -> int:
    text = schema_text()
    if args.output:
        path = Path(args.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    else:
        sys.stdout.write(text)
    return 0
