"""The terminal timing screen's view model: gateway frames in, header and rows out.

Pure: no I/O and no terminal library. ``Board`` follows one race as the
websocket protocol describes it (a snapshot, then deltas chained by
``prev_seq``; anything else means a resubscribe); ``header`` and ``rows`` turn
what it holds into the strings and marks the screen draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

from chequered.contract.board import (
    CarRow,
    Delta,
    SeqMismatch,
    SessionView,
    Snapshot,
    apply_delta,
)

Outcome = Literal["snapshot", "applied", "stale", "gap", "status", "other"]
"""What a frame did: a new board, a delta applied, an old frame ignored, a gap
(resubscribe), the producer's status, or nothing for the board."""

Connection = Literal["connecting", "waiting", "live", "resync", "unknown", "reconnecting"]

FLAG_TEXT = {
    "green": "GREEN FLAG",
    "fcy": "FULL COURSE YELLOW",
    "red": "RED FLAG",
    "chequered": "CHEQUERED FLAG",
}

COLUMNS: tuple[tuple[str, str], ...] = (
    ("pos", "Pos"),
    ("pic", "PIC"),
    ("car", "No."),
    ("cls", "Class"),
    ("driver", "Driver"),
    ("team", "Team"),
    ("laps", "Laps"),
    ("gap", "Gap"),
    ("int", "Int"),
    ("last", "Last"),
    ("best", "Best"),
    ("pits", "Pits"),
    ("pit", "Pit"),
    ("status", "Status"),
)
"""Column keys and headings, left to right."""

Mark = Literal["overall", "class", "personal", ""]


class StatusFrame(msgspec.Struct, kw_only=True):
    """The gateway's ``status`` frame: the producer's state, as it retains it."""

    race: str
    state: str = "idle"
    speed: float | None = None
    t_ms: int = 0
    end_ms: int | None = None
    last_seq: int | None = None


class _Typed(msgspec.Struct):
    type: str = ""
    race: str | None = None


_typed = msgspec.json.Decoder(_Typed)
_snapshot = msgspec.json.Decoder(Snapshot)
_delta = msgspec.json.Decoder(Delta)
_status = msgspec.json.Decoder(StatusFrame)


@dataclass
class Board:
    """One race as the screen knows it: the board, the producer's status, the connection."""

    race: str | None = None
    snapshot: Snapshot | None = None
    status: StatusFrame | None = None
    connection: Connection = "connecting"
    resyncing: bool = False
    gaps: int = 0
    """How many times a delta did not chain and the screen subscribed again."""
    message: str = ""
    """One line for the screen: why it shows no board, or what went wrong."""
    spoiler_safe: bool = False
    """Hide a final board the viewer did not watch arrive (``--no-spoilers``)."""
    saw_running: bool = False
    """A board of this race not yet final was seen: its finish came while watched."""
    revealed: bool = False
    """The viewer asked to see the result anyway."""

    @property
    def covered(self) -> bool:
        """Spoiler-safe and the board tells the result, but it was not watched arrive."""
        snap = self.snapshot
        return (
            self.spoiler_safe
            and snap is not None
            and decided(snap.session)
            and not self.saw_running
            and not self.revealed
        )

    def on_frame(self, text: str | bytes) -> Outcome:
        """Take one frame from the gateway; ``gap`` asks the shell to subscribe again."""
        try:
            head = _typed.decode(text)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return "other"  # the gateway sends JSON objects only; nothing here to show
        if head.race is not None and self.race is not None and head.race != self.race:
            return "other"
        try:
            if head.type == "snapshot":
                return self._on_snapshot(_snapshot.decode(text))
            if head.type == "delta":
                return self._on_delta(_delta.decode(text))
            if head.type == "status":
                self.status = _status.decode(text)
                return "status"
        except msgspec.DecodeError as exc:
            self.message = f"unreadable {head.type} frame: {exc}"
            return "other"
        if head.type == "subscribed":
            self.connection = "waiting"
            self.message = "Waiting for the standings…"
        elif head.type == "error":
            error = msgspec.json.decode(text)
            code = error.get("error", "") if isinstance(error, dict) else ""
            if code == "unknown_race":
                self.connection = "unknown"
                self.message = f"Race “{self.race}” is not on air (yet)."
            else:
                detail = error.get("detail", "") if isinstance(error, dict) else ""
                self.message = f"{code}: {detail}"
        return "other"

    def _on_snapshot(self, snap: Snapshot) -> Outcome:
        # A snapshot replaces the board whatever its seq: the gateway sends a lower one
        # only when the race was started again.
        self.snapshot = snap
        self.saw_running = self.saw_running or not decided(snap.session)
        self.resyncing = False
        self.connection = "live"
        self.message = ""
        return "snapshot"

    def _on_delta(self, delta: Delta) -> Outcome:
        if self.resyncing:
            return "stale"  # a fresh snapshot is on its way
        if self.snapshot is None:
            return self._gap()
        if delta.seq <= self.snapshot.seq:
            return "stale"
        try:
            self.snapshot = apply_delta(self.snapshot, delta)
        except SeqMismatch:
            return self._gap()
        self.saw_running = self.saw_running or not decided(self.snapshot.session)
        return "applied"

    def _gap(self) -> Outcome:
        self.gaps += 1
        self.resyncing = True
        self.connection = "resync"
        return "gap"

    def disconnected(self) -> None:
        """The connection dropped: keep the board on screen, say it is not live."""
        self.connection = "reconnecting"
        self.resyncing = False

    def classes(self) -> list[str]:
        snap = self.snapshot
        if snap is None:
            return []
        names = list(snap.session.classes)
        for row in snap.cars:
            if row.cls not in names:
                names.append(row.cls)
        return names


def decided(session: SessionView) -> bool:
    """The board tells the result: the official classification, or the provisional one (the
    order at the flag, before post-race decisions), which tells it just as well."""
    return session.finished or session.provisional


# -- formatting ----------------------------------------------------------------------


def lap_time(ms: int | None) -> str:
    if ms is None:
        return ""
    minutes, rest = divmod(ms, 60_000)
    seconds = f"{rest / 1000:06.3f}"
    return f"{minutes}:{seconds}" if minutes else f"{ms / 1000:.3f}"


def gap_text(ms: int | None, laps: int) -> str:
    if laps:
        return f"+{laps} lap" if laps == 1 else f"+{laps} laps"
    if ms is None:
        return ""
    return f"+{lap_time(ms)}"


def clock(ms: int | None) -> str:
    if ms is None:
        return "--:--:--"
    total = max(0, ms // 1000)
    return f"{total // 3600}:{total // 60 % 60:02d}:{total % 60:02d}"


def speed_text(speed: float | None) -> str:
    return "max" if speed is None else f"{speed:g}x"


# -- header --------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    name: str
    connection: str
    flag: str
    """``green``, ``fcy``, ``red``, ``chequered``: for the banner's colour."""
    flag_text: str
    clock: str
    remaining: str
    lap: str
    replay: str
    partial: bool


def header(board: Board) -> Header:
    snap = board.snapshot
    status = board.status
    conn = {"live": "LIVE", "reconnecting": "RECONNECTING…", "resync": "RESYNC"}.get(
        board.connection, board.connection.upper()
    )
    if snap is None:
        return Header(
            board.race or "chequered", conn, "", "", clock(None), clock(None), "-", "-", False
        )
    session = snap.session
    if board.covered:
        # The laps run, the clock at the end and the flag would tell how the race ended.
        replay = speed_text(board.status.speed if board.status else session.speed)
        return Header(
            session.name or snap.race, conn, "", "SPOILER-SAFE", clock(None), clock(None),
            "-", replay, False,
        )  # fmt: skip
    flag = "chequered" if session.finished else session.flag
    if session.remaining_ms is not None:
        remaining = clock(session.remaining_ms)
    elif session.laps_total:
        remaining = f"{max(0, session.laps_total - session.leader_laps)} laps"
    else:
        remaining = clock(None)
    lap = (
        f"{session.leader_laps}/{session.laps_total}"
        if session.laps_total
        else str(session.leader_laps)
    )
    speed = status.speed if status is not None else session.speed
    state = status.state if status is not None else None
    replay = speed_text(speed)
    if session.paused or state == "paused":
        replay = f"paused ({replay})"
    elif state == "finished" or session.finished:
        replay = "finished"
    elif state == "offline":
        replay = "offline"
    return Header(
        name=session.name or snap.race,
        connection=conn,
        flag=flag,
        flag_text=FLAG_TEXT.get(flag, flag.upper())
        + (f" · {session.flag_reason}" if session.flag_reason and not session.finished else ""),
        clock=clock(session.t_ms),
        remaining=remaining,
        lap=lap,
        replay=replay,
        partial=session.gaps > 0,
    )


# -- rows ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the table: the text of each column, and how to mark it."""

    car: str
    cls: str
    cells: dict[str, str]
    last_mark: Mark = ""
    best_mark: Mark = ""
    pit: Literal["in", "out", ""] = ""
    retired: bool = False

    def values(self) -> list[str]:
        return [self.cells[key] for key, _ in COLUMNS]


def rows(board: Board, cls: str | None = None) -> list[Row]:
    """The table for the overall board, or one class's (gaps then to the class leader)."""
    snap = board.snapshot
    if snap is None or board.covered:
        return []
    fastest = snap.session.fastest
    overall = min(fastest.values(), key=lambda f: f.lap_ms, default=None)
    shown = [row for row in snap.cars if cls is None or row.cls == cls]
    out: list[Row] = []
    for row in shown:
        holder = fastest.get(row.cls)
        best_mark: Mark = (
            "overall"
            if overall is not None and overall.car == row.car
            else "class"
            if holder is not None and holder.car == row.car
            else ""
        )
        out.append(
            Row(
                car=row.car,
                cls=row.cls,
                cells=_cells(row, cls),
                last_mark=_last_mark(row),
                best_mark=best_mark,
                pit="in" if row.in_pit else "out" if row.out_lap else "",
                retired=row.status in ("retired", "dns"),
            )
        )
    return out


def _last_mark(row: CarRow) -> Mark:
    if row.last_is_overall_best:
        return "overall"
    if row.last_is_class_best:
        return "class"
    if row.last_is_personal_best:
        return "personal"
    return ""


def _cells(row: CarRow, cls: str | None) -> dict[str, str]:
    if cls is None:
        leader = row.position == 1
        gap = "Leader" if leader else gap_text(row.gap_ms, row.gap_laps)
        interval = "" if leader else gap_text(row.interval_ms, row.interval_laps)
    else:
        leader = row.class_position == 1
        gap = "Leader" if leader else gap_text(row.class_gap_ms, row.class_gap_laps)
        interval = "" if leader else gap_text(row.class_interval_ms, row.class_interval_laps)
    ends = row.status in ("retired", "finished", "dns")
    return {
        "pos": str(row.position),
        "pic": str(row.class_position),
        "car": row.car,
        "cls": row.cls,
        "driver": row.driver,
        "team": row.team,
        "laps": str(row.laps),
        "gap": gap,
        "int": interval,
        "last": lap_time(row.last_lap_ms),
        "best": lap_time(row.best_lap_ms),
        "pits": str(row.pit_stops),
        "pit": "IN PIT" if row.in_pit else "OUT" if row.out_lap else "",
        "status": row.status.upper() if ends else "",
    }


# -- race control --------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    """One race-control message as the feed shows it: newest first."""

    when: str
    """Race clock and the leader's lap: ``1:02:03 L12``."""
    category: str
    text: str


def messages(board: Board) -> list[Message]:
    """The race-control messages the board holds, newest first."""
    snap = board.snapshot
    if snap is None or board.covered:
        return []
    out = []
    for message in reversed(snap.messages):
        cars = f" (#{', #'.join(message.cars)})" if message.cars else ""
        out.append(
            Message(
                when=f"{clock(message.t_ms)} L{message.lap}",
                category=message.category.upper(),
                text=f"{message.text}{cars}",
            )
        )
    return out
