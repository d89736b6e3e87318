"""The official classification of a recording, as the final standings must show it."""

from __future__ import annotations

from chequered.contract import board
from simulator.recording import io as recording_io


def check_against_classification(final: board.Snapshot, race_file: str) -> None:
    """Order, laps and class positions are those of the official classification."""
    recording = recording_io.load(recording_io.find(race_file))
    official = sorted(recording.classification, key=lambda row: row.position)
    listed = [row for row in official if row.number is not None]
    shown = {row.car: row for row in final.cars}
    assert [row.car for row in final.cars][: len(listed)] == [row.number for row in listed]
    in_class: dict[str, int] = {}
    for row in listed:
        assert row.number is not None
        car = shown[row.number]
        if row.laps is not None:
            assert car.laps == row.laps, f"car {row.number}: {car.laps} laps, officially {row.laps}"
        cls = row.cls or car.cls
        in_class[cls] = in_class.get(cls, 0) + 1
        assert car.class_position == in_class[cls], f"car {row.number} in {cls}"
