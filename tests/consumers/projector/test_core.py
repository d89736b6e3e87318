"""The projector's core with plain function calls: actions out in their order, coalesced.

No broker, no files, no clock of its own: every test hands the core a clock,
messages and acknowledgement tokens, and reads the actions it returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from msgspec.structs import replace

from chequered.contract import board, control, topics
from chequered.contract.events import Event, Reset, SessionOpened, encode
from chequered.contract.partition import Partition
from consumers.metrics import Registry
from consumers.projector import intake
from consumers.projector.core import (
    Acknowledge,
    Action,
    ProjectorCore,
    ProjectorSettings,
    Publish,
    WriteCheckpoint,
)
from consumers.projector.service import ProjectorMetrics
from tests.consumers.standings.test_fold import Script


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def core(
    settings: ProjectorSettings | None = None,
    clock: Clock | None = None,
    partition: Partition | None = None,
    registry: Registry | None = None,
) -> ProjectorCore:
    ids = iter(range(1, 1000))
    metrics = ProjectorMetrics(registry or Registry("t"))
    return ProjectorCore(
        {}, settings=settings or ProjectorSettings(), metrics=metrics,
        clock=clock or Clock(), wall=lambda: 1_700_000_000.0, new_id=lambda: f"id-{next(ids)}",
        partition=partition,
    )  # fmt: skip


def race(name: str = "core", laps: int = 3) -> list[Event]:
    s = Script(race=name)
    for lap in range(1, laps + 1):
        s.lap("1", lap, lap * 90_000, 90_000)
        s.lap("2", lap, lap * 90_000 + 2_000, 90_000)
    return s.events


def feed(c: ProjectorCore, events: list[Event], *, token: str = "m") -> None:
    for i, event in enumerate(events):
        c.handle(topics.topic(event.race, topics.EVENTS), encode(event), f"{token}{i}")


def kinds(actions: list[Action]) -> list[str]:
    out = []
    for action in actions:
        if isinstance(action, WriteCheckpoint):
            out.append("checkpoint")
        elif isinstance(action, Acknowledge):
            out.append("ack")
        else:
            assert isinstance(action, Publish)
            out.append(topics.leaf_of(action.topic) or action.topic)
    return out


def test_checkpoint_then_acknowledge_then_publish() -> None:
    c = core()
    feed(c, race())
    actions = c.flush()
    assert kinds(actions) == ["checkpoint", "ack", topics.STANDINGS]
    assert actions[1] == Acknowledge(tuple(f"m{i}" for i in range(len(race()))))
    assert c.pending_acks == []


def test_a_window_of_messages_is_one_checkpoint_and_one_board_per_race() -> None:
    c = core(ProjectorSettings(snapshot_max_hz=1e9))
    feed(c, race("a"))
    feed(c, race("b"))
    for action in c.flush():
        if isinstance(action, WriteCheckpoint):
            c.checkpoint_written(action)
    feed(c, race("a", laps=5)[len(race("a")) :])  # two more laps of a
    feed(c, race("b", laps=5)[len(race("b")) :])
    actions = c.flush()
    checkpoints = [a.race for a in actions if isinstance(a, WriteCheckpoint)]
    deltas = [a.topic for a in actions if isinstance(a, Publish) and a.topic.endswith("delta")]
    assert checkpoints == ["a", "b"]
    assert deltas == [topics.topic(r, topics.STANDINGS_DELTA) for r in ("a", "b")]
    # Only the cars that changed: the checkpoint record knows which.
    assert {a.cars for a in actions if isinstance(a, WriteCheckpoint)} == {frozenset({"1", "2"})}


def test_a_checkpoint_not_confirmed_is_asked_for_again() -> None:
    c = core()
    feed(c, race())
    first = [a for a in c.flush() if isinstance(a, WriteCheckpoint)]
    assert [a for a in c.flush() if isinstance(a, WriteCheckpoint)] == first  # not written yet
    c.checkpoint_written(first[0])
    assert [a for a in c.flush() if isinstance(a, WriteCheckpoint)] == []


def test_snapshots_are_held_back_to_their_rate_and_sent_when_due() -> None:
    clock = Clock()
    c = core(ProjectorSettings(snapshot_max_hz=2.0), clock)
    events = race(laps=4)
    feed(c, events[:4])
    assert kinds(c.flush())[-1] == topics.STANDINGS  # the first board is a snapshot
    feed(c, events[4:6])
    assert kinds(c.flush())[-1] == topics.STANDINGS_DELTA  # the snapshot is owed
    assert c.next_deadline() == pytest.approx(100.5)
    assert c.due() == []
    clock.now = 100.5
    (owed,) = c.due()
    assert owed.retain and board.decode_snapshot(owed.payload).seq == events[5].seq


def test_a_gap_asks_for_a_resend_once_per_interval() -> None:
    clock = Clock()
    c = core(ProjectorSettings(resend_interval_s=5.0), clock)
    events = race(laps=5)
    feed(c, events[:3])
    feed(c, events[4:6])  # seq 4 missing
    feed(c, events[7:])  # seq 7 missing, too soon to ask again
    resends = [a for a in c.flush() if isinstance(a, Publish) and a.topic.endswith("/control")]
    assert [control.decode_command(r.payload) for r in resends] == [
        control.Resend(id="id-1", from_seq=events[3].seq)
    ]
    assert c.next_deadline() == 105.0
    clock.now = 105.0
    # No reset has answered the first request (its producer may have been away):
    # asked again, from the first seq still missing.
    (again,) = c.due()
    assert control.decode_command(again.payload) == control.Resend(id="id-2", from_seq=4)


def test_a_resend_answered_by_a_reset_is_not_asked_again() -> None:
    clock = Clock()
    c = core(ProjectorSettings(resend_interval_s=5.0), clock)
    events = race(laps=5)
    feed(c, events[:3] + events[4:])  # seq 4 missing
    assert [a for a in c.flush() if isinstance(a, Publish) and a.topic.endswith("/control")]
    last = events[-1].seq
    reset = Reset(race=events[0].race, seq=last + 1, t_ms=events[-1].t_ms, wall=0.0,
                  target_ms=events[-1].t_ms)  # fmt: skip
    replay = [replace(e, seq=last + 1 + i) for i, e in enumerate(events, 1)]
    feed(c, [reset, *replay])
    c.flush()
    for now in (200.0, 300.0):
        clock.now = now
        assert [p for p in c.due() if p.topic.endswith("/control")] == []


def test_no_resend_when_it_is_off() -> None:
    c = core(ProjectorSettings(resend_on_gap=False))
    events = race()
    feed(c, events[:2] + events[3:])
    assert not [a for a in c.flush() if isinstance(a, Publish) and a.topic.endswith("/control")]


def test_a_bad_payload_is_a_dead_letter_after_the_checkpoint_and_the_ack() -> None:
    c = core(ProjectorSettings(max_payload_bytes=4096))
    feed(c, race()[:1])
    c.handle(topics.topic("core", topics.EVENTS), b"x" * 4097, "bad")
    assert kinds(c.flush()) == ["checkpoint", "ack", topics.DEAD_LETTER, topics.STANDINGS]
    (note,) = [n for n in c.take_notes() if n.event == "dead_letter"]
    assert "4097" in str(note.fields["reason"])


def test_events_before_their_meta_wait_until_the_deadline() -> None:
    clock = Clock()
    c = core(ProjectorSettings(join_wait_s=2.0, join_wait_events=2), clock)
    events = race()
    feed(c, events[3:6])  # no session_open: held, the oldest pushed out to a dead letter
    assert c.standings.races == {} and c.next_deadline() == 102.0
    assert kinds(c.flush()) == ["ack", topics.DEAD_LETTER]
    clock.now = 102.0
    assert c.expire()  # released: rejected as of an unknown race
    assert all(k == topics.DEAD_LETTER for k in kinds(c.flush()))


def test_everything_is_every_race_after_its_checkpoint() -> None:
    c = core()
    feed(c, race("a"))
    feed(c, race("b"))
    c.flush()
    actions = c.everything()
    assert kinds(actions) == ["checkpoint", "checkpoint", topics.STANDINGS, topics.STANDINGS]


def test_a_lost_connection_drops_its_acknowledgements() -> None:
    c = core()
    feed(c, race())
    c.connection_lost()
    assert "ack" not in kinds(c.flush())


def joined_short(clock: Clock, registry: Registry) -> tuple[ProjectorCore, list[Event]]:
    """A projector of a set that learns a race from its meta once its first 4 events
    have passed (it subscribes to the race's events only then)."""
    events = race("joined", laps=4)
    settings = ProjectorSettings(resend_interval_s=5.0)
    c = core(settings, clock, partition=Partition(0, 1), registry=registry)
    opened = events[0]
    assert isinstance(opened, SessionOpened)
    c.handle(topics.topic("joined", topics.META), encode(opened), "meta")
    assert c.events_wanted == [topics.topic("joined", topics.EVENTS)]
    feed(c, events[4:])
    return c, events


def control_and_letters(actions: list[Action] | list[Publish]) -> list[str]:
    return [k for k in kinds(list(actions)) if k in (topics.CONTROL, topics.DEAD_LETTER)]


def test_a_partition_joining_a_race_at_its_start_asks_a_resend_without_an_alarm() -> None:
    clock, registry = Clock(), Registry("t")
    c, events = joined_short(clock, registry)
    assert control_and_letters(c.flush()) == [topics.CONTROL]  # the resend, no dead letter
    values = registry.values()
    assert values["joins"] == 1 and values["resends"] == 1 and values["gaps"] == 0
    notes = c.take_notes()
    assert [n.level for n in notes if n.event == "race_joined"] == ["info"]
    assert not [n for n in notes if n.level == "warning"]
    # The producer answers: a reset, then the race from its start.
    last = events[-1].seq
    reset = Reset(race="joined", seq=last + 1, t_ms=0, wall=0.0, target_ms=0)
    feed(c, [reset, *(replace(e, seq=last + 1 + i) for i, e in enumerate(events, 1))], token="r")
    c.flush()
    clock.now += 60.0
    assert control_and_letters(c.due()) == []
    assert registry.values()["gaps"] == 0
    assert c.standings.races["joined"].gaps == 0


def test_a_partition_join_whose_resend_does_not_come_is_a_gap_then() -> None:
    clock, registry = Clock(), Registry("t")
    c, events = joined_short(clock, registry)
    c.flush()
    c.take_notes()
    assert c.next_deadline() == 105.0
    clock.now = 105.0
    due = c.due()
    # Asked again, and now the hole is reported as any gap is: counted, warned, lettered.
    assert control_and_letters(due) == [topics.CONTROL, topics.DEAD_LETTER]
    (letter,) = [p for p in due if topics.leaf_of(p.topic) == topics.DEAD_LETTER]
    missing = events[4].seq - events[0].seq - 1  # the meta is the race's session_open
    assert f"{missing} earlier seqs not folded" in intake.decode_dead_letter(letter.payload).reason
    assert registry.values()["gaps"] == missing
    (warning,) = [n for n in c.take_notes() if n.level == "warning"]
    assert warning.event == "race_joined" and "seek" in str(warning.fields["resync"])
    clock.now = 110.0
    assert control_and_letters(c.due()) == [topics.CONTROL]  # asked again; reported once
