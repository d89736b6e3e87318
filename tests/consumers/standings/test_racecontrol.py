"""Race-control messages on the board: the snapshot keeps the latest, deltas add new ones.

Also the flag's reason and the count of laps run under a yellow, which the
board carries for the widget's banner and its yellow share.
"""

from __future__ import annotations

import msgspec

from chequered.contract.board import MESSAGES_KEPT, Snapshot, apply_delta
from chequered.contract.events import Flag, RaceControl, Reset, SessionOpened
from consumers.standings import checkpoint
from consumers.standings.fold import Board, RaceState, apply, delta, new_race, snapshot
from tests.consumers.standings.test_fold import R, Script


def fold(script: Script) -> RaceState:
    state = new_race(R)
    for event in script.events:
        apply(state, event)
    return state


def say(script: Script, t: int, text: str, *cars: str, category: str = "incident") -> None:
    script.add(
        RaceControl,
        t_ms=t,
        lap=0,
        category=category,
        text=text,
        cars=list(cars),
        provenance="report",
    )


def test_a_message_reaches_the_snapshot_with_its_cars_and_provenance() -> None:
    script = Script()
    say(script, 5_000, "#2 hit the tyre barrier", "2", "3")
    snap = snapshot(fold(script))
    [message] = snap.messages
    assert (message.seq, message.t_ms, message.text) == (2, 5_000, "#2 hit the tyre barrier")
    assert message.cars == ["2", "3"]
    assert message.category == "incident"
    assert message.provenance == "report"
    assert snap.session.messages == 1


def test_the_snapshot_keeps_only_the_latest_messages_oldest_first() -> None:
    script = Script()
    for i in range(MESSAGES_KEPT + 7):
        say(script, 1_000 * (i + 1), f"message {i}")
    state = fold(script)
    snap = snapshot(state)
    assert [m.text for m in snap.messages] == [f"message {i}" for i in range(7, MESSAGES_KEPT + 7)]
    assert snap.session.messages == MESSAGES_KEPT + 7
    # The kept board of the projector says the same.
    assert Board().snapshot(state, None) == snap


def test_a_delta_carries_only_the_new_messages_and_rebuilds_the_snapshot() -> None:
    script = Script()
    say(script, 1_000, "first")
    state = fold(script)
    before = snapshot(state)
    say(script, 2_000, "second", "1")
    say(script, 3_000, "third", "2")
    for event in script.events[-2:]:
        apply(state, event)
    after = snapshot(state)
    change = delta(before, after)
    assert change is not None
    assert [m.text for m in change.messages] == ["second", "third"]
    # A message changes the session view too, so a delta goes out for it.
    assert change.session is not None
    assert apply_delta(before, change) == after
    # Applied twice (a duplicate delta), nothing is added twice.
    again = msgspec.structs.replace(change, seq=change.seq + 1, prev_seq=after.seq, cars=[])
    assert [m.text for m in apply_delta(after, again).messages] == ["first", "second", "third"]


def test_after_a_reset_the_feed_starts_again_and_only_a_snapshot_says_so() -> None:
    script = Script()
    say(script, 1_000, "before the seek")
    state = fold(script)
    before = snapshot(state)
    first = script.events[0]
    script.add(Reset, t_ms=1_000, target_ms=0)
    script.events.append(msgspec.structs.replace(first, seq=len(script.events) + 1))
    for event in script.events[-2:]:
        apply(state, event)
    after = snapshot(state)
    assert after.messages == []
    assert delta(before, after) is None


def test_the_flag_reason_and_the_laps_under_yellow() -> None:
    script = Script()
    script.lap("1", 1, 90_000)
    script.add(Flag, t_ms=95_000, flag="fcy", reason="#2 in the tyre barrier")
    # A lap counts as neutralised by the flag it carries (the flag at the line).
    for car, lap, t in (("1", 2, 250_000), ("2", 1, 251_000)):
        crossing = script.lap(car, lap, t)
        script.events[-1] = msgspec.structs.replace(crossing, flag="fcy")
    script.add(Flag, t_ms=300_000, flag="green", reason="restart")
    script.lap("1", 3, 390_000)
    session = snapshot(fold(script)).session
    assert session.flag == "green"
    assert session.flag_reason == "restart"
    assert (session.laps_run, session.laps_neutralised) == (4, 2)
    script.add(Flag, t_ms=400_000, flag="red", reason="barrier repairs")
    assert snapshot(fold(script)).session.flag_reason == "barrier repairs"


def test_messages_survive_a_checkpoint() -> None:
    script = Script()
    say(script, 1_000, "kept", "1")
    state = fold(script)
    back = checkpoint.decode(checkpoint.encode(state))
    assert snapshot(back) == snapshot(state)
    assert isinstance(snapshot(back), Snapshot)


def test_a_synthesised_race_says_so_on_the_board() -> None:
    script = Script()
    assert snapshot(fold(script)).session.synthesised is False
    opened = script.events[0]
    assert isinstance(opened, SessionOpened)
    session = msgspec.structs.replace(opened.session, synthesised=True)
    script.events[0] = msgspec.structs.replace(opened, session=session)
    assert snapshot(fold(script)).session.synthesised is True
