"""Reading and writing recording files, with errors that name the file and the fault."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import msgspec

from simulator.recording.format import Recording


class RecordingError(ValueError):
    """A recording file that cannot be used; the message names the file and what to fix."""


_decoder = msgspec.json.Decoder(Recording)
_encoder = msgspec.json.Encoder(order="deterministic")


def loads(data: bytes, source: str = "<bytes>") -> Recording:
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise RecordingError(f"{source}: not a valid recording: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise RecordingError(f"{source}: not JSON: {exc}") from exc


def load(path: str | os.PathLike[str]) -> Recording:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read: {exc.strerror}") from exc
    return loads(data, str(path))


def dumps(recording: Recording) -> bytes:
    """Pretty, stable JSON: the same recording always gives the same bytes."""
    return msgspec.json.format(_encoder.encode(recording), indent=1) + b"\n"


def save(recording: Recording, path: str | os.PathLike[str]) -> None:
    """Write atomically: a failed save never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dumps(recording)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        # mkstemp makes the file owner-only; a recording is meant to be shared.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replays_dir() -> Path:
    """The replays folder: ``$CHEQUERED_REPLAYS``, else ``./replays`` or the repository's."""
    env = os.environ.get("CHEQUERED_REPLAYS")
    if env:
        return Path(env)
    here = Path.cwd() / "replays"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / "replays"


def find(name_or_path: str) -> Path:
    """Resolve a race given as a path or as a recording name in the replays folder."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        return path
    candidate = replays_dir() / f"{name_or_path}.json"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in replays_dir().glob("*.json"))
    raise RecordingError(
        f"{name_or_path}: no such recording; known races: {', '.join(known) or 'none'}"
    )
