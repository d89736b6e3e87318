"""The official classification of a recording, as the final standings must show it."""

from __future__ import annotations

from collections.abc import Sequence

from chequered.contract import board
from simulator.recording import io as recording_io
from tests.support.observe import Observer
from tests.support.ws import Watcher


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


def check_final_board(
    witness: Observer, browsers: Sequence[Watcher], race_file: str
) -> board.Snapshot:
    """The retained board at the end of a faulty run, checked against the truth.

    Every seq was on the wire; the board equals one uninterrupted fold of them,
    is finished with nothing missing, shows the official classification, and
    every browser shows it (its own class only).
    """
    assert witness.missing_seqs() == []
    final = witness.retained
    assert final is not None
    assert final == witness.reference()
    assert final.session.finished and final.session.gaps == 0
    check_against_classification(final, race_file)
    for browser in browsers:
        assert browser.view is not None
        cars = [row for row in final.cars if browser.cls in (None, row.cls)]
        assert (browser.view.cars, browser.view.session) == (cars, final.session)
    return final
