"""Checkpoints of the standings fold: exact round trip, records appended, torn records
skipped, unusable files set aside."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from consumers.projector import checkpoints
from consumers.standings import checkpoint
from consumers.standings.fold import RaceState, new_race, snapshot
from tests.consumers.standings.test_fold import Script, fold


def _state(race: str = "ckpt") -> RaceState:
    s = Script([("1", "P"), ("2", "G")], lines=2, race=race)
    s.cross("1", 1, 30_000)
    s.cross("2", 1, 31_000)
    s.lap("1", 1, 61_000, 61_000)
    return fold(s.events)


def _framed(payload: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">4sII", checkpoint.MAGIC, len(payload), zlib.crc32(payload)) + payload


def test_a_state_round_trips_exactly() -> None:
    state = _state()
    again = checkpoint.decode(checkpoint.encode(state))
    assert again == state
    assert snapshot(again) == snapshot(state)
    assert checkpoint.encode(again) == checkpoint.encode(state)


def test_saves_append_and_the_newest_record_is_loaded(tmp_path: Path) -> None:
    first = _state("race-a")
    checkpoints.save(tmp_path, first)
    checkpoints.save(tmp_path, _state("race-b"))
    first.seq += 1
    checkpoints.save(tmp_path, first, fsync=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["race-a.ckpt", "race-b.ckpt"]  # no temporary file left behind
    size = (tmp_path / "race-a.ckpt").stat().st_size
    assert size == 2 * len(checkpoint.record(first))
    assert checkpoints.load(tmp_path / "race-a.ckpt") == first
    states = checkpoints.load_all(tmp_path)
    assert sorted(states) == ["race-a", "race-b"]
    assert states["race-a"] == first
    # Loading on start rewrites each file to its newest record.
    assert (tmp_path / "race-a.ckpt").stat().st_size == len(checkpoint.record(first))


def test_a_record_cut_short_by_a_kill_falls_back_to_the_one_before(tmp_path: Path) -> None:
    state = _state("torn")
    checkpoints.save(tmp_path, state)
    newer = msgspec.structs.replace(state, seq=state.seq + 5)
    path = tmp_path / "torn.ckpt"
    with open(path, "ab") as fh:
        fh.write(checkpoint.record(newer)[:-7])
    assert checkpoints.load(path) == state
    assert checkpoints.load_all(tmp_path) == {"torn": state}
    # The file was made clean again, so the next record is readable after it.
    checkpoints.save(tmp_path, newer)
    assert checkpoints.load(path) == newer


def test_a_file_growing_past_the_limit_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = _state("big")
    size = len(checkpoint.record(state))
    monkeypatch.setattr(checkpoints, "COMPACT_BYTES", 3 * size)
    for seq in range(10):
        state.seq = seq + 100
        checkpoints.save(tmp_path, state)
        assert (tmp_path / "big.ckpt").stat().st_size <= 3 * size
        assert checkpoints.load(tmp_path / "big.ckpt").seq == seq + 100


def test_files_kept_open_append_patches_and_close_the_least_recent(tmp_path: Path) -> None:
    files = checkpoints.Files(tmp_path, max_open=2)
    states = {race: _state(race) for race in ("kept-a", "kept-b", "kept-c")}
    for state in states.values():
        files.save(state)  # a new file: written whole, then renamed into place
    assert files.kept == []
    for state in states.values():
        state.seq += 1
        files.save(state)
    assert files.kept == ["kept-b", "kept-c"]  # kept-a, saved first, was closed
    for state in states.values():
        state.seq += 1
        car = next(iter(state.cars))
        files.save(state, [car])
    for race, state in states.items():
        path = checkpoints.path_for(tmp_path, race)
        assert checkpoints.load(path) == state
        assert path.read_bytes().count(checkpoint.PATCH_MAGIC) == 1
    files.close()
    assert files.kept == []


def test_a_file_removed_while_kept_open_is_written_again_whole(tmp_path: Path) -> None:
    files = checkpoints.Files(tmp_path)
    state = _state("removed")
    path = checkpoints.path_for(tmp_path, "removed")
    files.save(state)
    state.seq += 1
    files.save(state)
    assert files.kept == ["removed"]
    path.unlink()
    state.seq += 1
    files.save(state, [next(iter(state.cars))])  # a patch would have gone to no file
    assert checkpoints.load(path) == state
    assert checkpoint.PATCH_MAGIC not in path.read_bytes()
    files.close()


def test_a_missing_folder_holds_no_races(tmp_path: Path) -> None:
    assert checkpoints.load_all(tmp_path / "nothing-here") == {}


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("junk.ckpt", b"\x00not a checkpoint at all", "no complete checkpoint record"),
        ("notpack.ckpt", _framed(b"\xc1\xc1"), "not a standings checkpoint"),
        (
            "old.ckpt",
            _framed(msgspec.msgpack.encode(msgspec.structs.replace(new_race("old"), version=0))),
            "version 0",
        ),
        ("named-wrong.ckpt", checkpoint.record(new_race("another")), "holds race 'another'"),
    ],
)
def test_an_unusable_checkpoint_is_named_and_set_aside(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=reason) as info:
        checkpoints.load(path)
    assert str(path) in str(info.value)
    checkpoints.save(tmp_path, _state("good"))
    assert sorted(checkpoints.load_all(tmp_path)) == ["good"]
    assert (tmp_path / f"{name}.bad").exists() and not path.exists()
