"""Checkpoint files of the projector: one per race, records appended, replaced atomically.

A checkpoint only saves time: the projector acknowledges events to the broker
after the checkpoint that holds them is on disk, so that a restart resumes
from it and the broker redelivers the rest (reasoning in STANDINGS.md). The
records themselves are ``consumers.standings.checkpoint``'s.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from chequered import log
from consumers.standings.checkpoint import CheckpointError, read_records, record
from consumers.standings.fold import RaceState

_log = log.get(__name__)

SUFFIX = ".ckpt"
BAD_SUFFIX = ".bad"
FSYNC = False
"""fsync each checkpoint. Off by default: a record appended (or a file renamed into
place) survives a killed process; fsync adds survival of a power cut, at a cost in ms."""
COMPACT_BYTES = 1024 * 1024
"""A file that would grow past this is rewritten holding its newest record only."""
MAX_CHECKPOINT_BYTES = 64 * 1024 * 1024
"""A checkpoint file larger than this is not read (a race's state is a few kB)."""


def path_for(directory: Path, race: str) -> Path:
    # Race ids match [a-z0-9][a-z0-9_-]*: safe as file names as they are.
    return directory / f"{race}{SUFFIX}"


def save(
    directory: Path,
    state: RaceState,
    *,
    fsync: bool = FSYNC,
    cars: Collection[str] | None = None,
) -> Path:
    """Append the race's state to its checkpoint file (rewritten when it grows large).

    ``cars``: the only cars changed since the record saved before (None: any may
    have); a patch of them is appended. A new or rewritten file gets the whole state.
    """
    files = Files(directory, fsync=fsync)
    try:
        return files.save(state, cars)
    finally:
        files.close()


class Files:
    """One projector's checkpoint files, each kept open once written (at most ``max_open``,
    the least recently saved closed first): at the target's load each race is saved
    about ten times a second, and opening and closing a file costs more than the record's
    write. A file removed or renamed meanwhile (no link left) is written again whole."""

    def __init__(self, directory: Path, *, fsync: bool = FSYNC, max_open: int = 256) -> None:
        self.directory = directory
        self.fsync = fsync
        self.max_open = max_open
        self._open: dict[str, int] = {}
        """Race to the descriptor of its file, least recently saved first."""

    def save(self, state: RaceState, cars: Collection[str] | None = None) -> Path:
        """``save``, through the file kept open for the race."""
        data = record(state, cars)
        target = path_for(self.directory, state.race)
        fd = self._open.pop(state.race, None)
        if fd is None:
            try:
                fd = os.open(target, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                fd = -1
        if fd >= 0:
            try:
                st = os.fstat(fd)
                if st.st_nlink and st.st_size + len(data) <= COMPACT_BYTES:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if self.fsync:
                        os.fsync(fd)
                    self._keep(state.race, fd)
                    fd = -1
                    return target
            finally:
                if fd >= 0:
                    os.close(fd)
        # A new file, one that lost its name, or one about to grow too large: the whole state.
        _replace(self.directory, target, record(state) if cars is not None else data,
                 fsync=self.fsync)  # fmt: skip
        return target

    @property
    def kept(self) -> list[str]:
        """The races whose file is open, least recently saved first."""
        return list(self._open)

    def _keep(self, race: str, fd: int) -> None:
        self._open[race] = fd
        while len(self._open) > self.max_open:
            oldest = next(iter(self._open))
            os.close(self._open.pop(oldest))

    def close(self) -> None:
        """Close every file kept open."""
        while self._open:
            _, fd = self._open.popitem()
            os.close(fd)


def _replace(directory: Path, target: Path, data: bytes, *, fsync: bool) -> Path:
    """A new file holding ``data`` only, put in place atomically (temporary file, rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, target)
    if fsync:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return target


def load(path: Path) -> RaceState:
    """The newest state in one checkpoint file; ``CheckpointError`` naming the file."""
    state, _ = _load(path)
    return state


def _load(path: Path) -> tuple[RaceState, bool]:
    try:
        size = path.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, more than {MAX_CHECKPOINT_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    state, count, torn = read_records(data, name=str(path))
    if path.name != f"{state.race}{SUFFIX}":
        raise CheckpointError(f"{path}: holds race {state.race!r}, not the one its name says")
    return state, torn or count > 1


def load_all(directory: Path, *, compact: bool = True) -> dict[str, RaceState]:
    """Every race checkpointed in ``directory``, each file rewritten to its newest record.

    Rewriting on start means records are only ever appended to a clean file,
    never after a record cut short by a kill. An unusable file is logged and
    renamed to ``*.bad`` (kept for a look); its race starts from nothing.
    """
    states: dict[str, RaceState] = {}
    if not directory.exists():
        return states
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        try:
            state, untidy = _load(path)
        except CheckpointError as exc:
            _log.error("checkpoint_unusable", file=str(path), reason=str(exc))
            with contextlib.suppress(OSError):
                path.replace(path.with_name(path.name + BAD_SUFFIX))
            continue
        if compact and untidy:
            _replace(directory, path, record(state), fsync=FSYNC)
        states[state.race] = state
    return states
