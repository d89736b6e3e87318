"""Every recording in replays/ survives load, save, load unchanged, and matches the schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema  # type: ignore[import-untyped]
import pytest

from chequered.cli.recordings import SCHEMA_PATH
from simulator.recording import io as recording_io
from tests.conftest import REPLAYS, REPO

RECORDINGS = sorted(REPLAYS.glob("*.json"))
OURS = [p for p in RECORDINGS if p.name.startswith("alms-2013-")]


def test_the_alms_recordings_are_there() -> None:
    assert [p.name for p in OURS] == [
        "alms-2013-baltimore-qualifying.json",
        "alms-2013-baltimore-race.json",
        "alms-2013-monterey-qualifying.json",
        "alms-2013-monterey-race.json",
    ]


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_load_save_load_gives_the_same_recording(path: Path, tmp_path: Path) -> None:
    first = recording_io.load(path)
    copy = tmp_path / path.name
    recording_io.save(first, copy)
    second = recording_io.load(copy)
    assert second == first
    # Saving is stable: the same recording always gives the same bytes.
    assert recording_io.dumps(second) == copy.read_bytes()


@pytest.mark.parametrize("path", OURS, ids=lambda p: p.name)
def test_committed_file_is_in_canonical_form(path: Path) -> None:
    assert recording_io.dumps(recording_io.load(path)) == path.read_bytes()


@pytest.mark.parametrize("path", RECORDINGS, ids=lambda p: p.name)
def test_recording_matches_the_published_schema(path: Path) -> None:
    schema = json.loads((REPO / SCHEMA_PATH).read_text(encoding="utf-8"))
    jsonschema.validate(json.loads(path.read_text(encoding="utf-8")), schema)


def test_load_names_the_file_and_the_fault(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"facts": 3, "classes": [], "entries": []}')
    with pytest.raises(recording_io.RecordingError, match=r"bad\.json: not a valid recording"):
        recording_io.load(bad)
