"""The coalescing window: at most one delta per race per window, the chain unbroken.

Messages come every 5 ms of a fake clock and the shell's turns are played by
hand (flush after each message, the timer's ``due`` when a deadline passes).
A reader that applies every delta published ends on the exact board, with no
more deltas than windows, and a delta held for a race whose checkpoint is
behind waits for the flush that writes it.
"""

from __future__ import annotations

import msgspec

from broker import bus
from chequered.contract import board, topics
from chequered.contract.events import Batch, encode
from consumers.projector.core import Publish, WriteCheckpoint
from consumers.projector.service import Projector, ProjectorSettings
from consumers.standings.fold import snapshot
from tests.support.feed import tiny_race

RACE = "window"
STEP_S = 0.005
WINDOW_S = 0.025


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _reader_apply(view: board.Snapshot | None, out: list[Publish]) -> board.Snapshot | None:
    for p in out:
        if p.topic == topics.topic(RACE, topics.STANDINGS_DELTA):
            d = board.decode_delta(p.payload)
            assert view is not None and d.prev_seq == view.seq, "the chain broke"
            view = board.apply_delta(view, d)
        elif p.topic == topics.topic(RACE, topics.STANDINGS) and view is None:
            view = board.decode_snapshot(p.payload)
    return view


def test_one_delta_per_window_and_the_reader_ends_exact() -> None:
    clock = _Clock()
    projector = Projector(
        settings=ProjectorSettings(delta_window_s=WINDOW_S, snapshot_max_hz=1e-3), clock=clock
    )
    core = projector.core
    events = tiny_race(RACE, cars=6, laps=8)
    view: board.Snapshot | None = None
    deltas = 0

    def perform(actions: list[object]) -> list[Publish]:
        # What the shell does without a checkpoint folder: nothing is left unsaved.
        if any(isinstance(a, WriteCheckpoint) for a in actions):
            core.forget_unsaved()
        return [a for a in actions if isinstance(a, Publish)]

    for i in range(0, len(events), 2):
        chunk = events[i : i + 2]
        payload = encode(Batch(race=RACE, events=chunk)) if len(chunk) > 1 else encode(chunk[0])
        projector.handle(bus.Message(topics.topic(RACE, topics.EVENTS), payload))
        out = perform(list(core.flush()))
        clock.now += STEP_S
        due = core.next_deadline()
        if due is not None and due <= clock.now:
            out += core.due()
        deltas += sum(p.topic.endswith("/delta") for p in out)
        view = _reader_apply(view, out)
    # The last delta waits for its window; the timer's turn sends it.
    due = core.next_deadline()
    assert due is not None and due > clock.now - STEP_S
    clock.now = due
    view = _reader_apply(view, core.due())
    assert _no_busy_wakeup(core.next_deadline(), clock.now)
    state = projector.standings.races[RACE]
    assert view is not None and view.seq == state.seq == events[-1].seq
    assert msgspec.structs.replace(view, wall=0.0) == msgspec.structs.replace(
        snapshot(state), wall=0.0
    )
    elapsed = (len(events) / 2) * STEP_S
    assert 0 < deltas <= elapsed / WINDOW_S + 2, f"{deltas} deltas in {elapsed:.3f}s"


def _no_busy_wakeup(deadline: float | None, now: float) -> bool:
    return deadline is None or deadline > now


def test_a_held_delta_waits_for_its_checkpoint() -> None:
    clock = _Clock()
    projector = Projector(settings=ProjectorSettings(delta_window_s=WINDOW_S), clock=clock)
    core = projector.core
    events = iter(tiny_race(RACE, cars=3, laps=5))
    topic = topics.topic(RACE, topics.EVENTS)

    def fold_until_a_delta() -> None:
        # Past the window, one event at a time until one changes what a reader sees.
        for event in events:
            clock.now += WINDOW_S
            projector.handle(bus.Message(topic, encode(event)))
            out = [a for a in core.flush() if isinstance(a, Publish)]
            core.forget_unsaved()  # its checkpoint written
            if any(p.topic.endswith("/delta") for p in out):
                return
        raise AssertionError("no delta in the whole race")

    fold_until_a_delta()
    # Folded inside the window, after the flush: not yet in a checkpoint.
    projector.handle(bus.Message(topic, encode(next(events))))
    clock.now += WINDOW_S
    assert not any(p.topic.endswith("/delta") for p in core.due())
    # No busy wake-up for it: the flush, due after the message, takes it.
    assert _no_busy_wakeup(core.next_deadline(), clock.now)
    flushed = core.flush()
    kinds = [
        "checkpoint" if isinstance(a, WriteCheckpoint) else "delta"
        for a in flushed
        if isinstance(a, WriteCheckpoint) or (isinstance(a, Publish) and "/delta" in a.topic)
    ]
    assert kinds[:1] == ["checkpoint"] and "delta" in kinds


def test_stopping_sends_the_deltas_held_by_their_window() -> None:
    clock = _Clock()
    projector = Projector(settings=ProjectorSettings(delta_window_s=WINDOW_S), clock=clock)
    core = projector.core
    topic = topics.topic(RACE, topics.EVENTS)
    sent = 0
    for event in tiny_race(RACE, cars=3, laps=5):
        clock.now += 0.001  # well inside every window
        projector.handle(bus.Message(topic, encode(event)))
        out = [a for a in core.flush() if isinstance(a, Publish)]
        core.forget_unsaved()
        sent += sum(p.topic.endswith("/delta") for p in out)
    assert core.boards.windowed, "the last changes wait for their window"
    last = [p for p in core.due(stopping=True) if p.topic.endswith("/delta")]
    assert len(last) == 1
    assert board.decode_delta(last[0].payload).seq == projector.standings.races[RACE].seq
