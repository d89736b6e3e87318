"""The feed's answer to ``resend``: a reset and the race again up to where it was, exact."""

from __future__ import annotations

from chequered.contract import control
from chequered.contract import events as ev
from chequered.contract.control import Resend, Seek
from simulator.live.feed import Feed
from tests.support.feed import reference_fold, timeline_fold, tiny_race

T0 = 1_000.0


def _resend(from_seq: int, cid: str = "r1") -> bytes:
    return control.encode(Resend(id=cid, from_seq=from_seq))


def _all(feed: Feed, now: float) -> list[ev.Event]:
    return feed.take(now, 100_000)


def test_resend_of_a_running_race_replays_it_up_to_its_clock() -> None:
    timeline = tiny_race("rs", laps=5, lap_ms=10_000)
    feed = Feed.create("rs", timeline, now=T0, speed=1.0)
    stream = feed.start(T0) + _all(feed, T0 + 20.0)  # 20 s of racing
    reply, events = feed.handle(_resend(from_seq=5), T0 + 20.0)
    assert reply.ok and reply.cmd == "resend" and reply.id == "r1"
    reset = events[0]
    assert isinstance(reset, ev.Reset) and reset.target_ms == 20_000
    stream += events + _all(feed, T0 + 20.0)
    # Contiguous seqs on the wire, and the fold (afresh from the reset) is the race at 20 s.
    assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
    assert reference_fold(stream).key() == timeline_fold(timeline, 20_000).key()
    assert feed.state == "running"


def test_resend_of_a_finished_race_sends_it_all_again() -> None:
    timeline = tiny_race("rf", laps=3)
    feed = Feed.create("rf", timeline, now=T0, speed=None)
    stream = feed.start(T0) + _all(feed, T0)
    assert feed.state == "finished"
    reply, events = feed.handle(_resend(from_seq=2), T0 + 1)
    assert reply.ok
    stream += events + _all(feed, T0 + 1)
    assert feed.state == "finished"
    assert isinstance(events[0], ev.Reset) and events[0].target_ms == feed.end_ms
    assert reference_fold(stream).key() == timeline_fold(timeline, feed.end_ms).key()
    assert reference_fold(stream).closed


def test_resend_from_a_seq_never_sent_is_refused_and_changes_nothing() -> None:
    feed = Feed.create("rn", tiny_race("rn"), now=T0, speed=1.0)
    feed.start(T0)
    seq = feed.seq
    reply, events = feed.handle(_resend(from_seq=seq + 1), T0)
    assert not reply.ok and reply.error == f"resend from seq {seq + 1}: the last seq sent is {seq}"
    assert events == [] and feed.seq == seq


def test_a_repeated_resend_id_is_answered_not_replayed_twice() -> None:
    feed = Feed.create("rr", tiny_race("rr"), now=T0, speed=None)
    feed.start(T0)
    _all(feed, T0)
    first, events = feed.handle(_resend(from_seq=3, cid="same"), T0)
    again, more = feed.handle(_resend(from_seq=3, cid="same"), T0)
    assert first == again and events and more == []


def test_a_backward_seek_is_unchanged_by_the_replay_option() -> None:
    feed = Feed.create("rb", tiny_race("rb", laps=5, lap_ms=10_000), now=T0, speed=1.0)
    feed.start(T0)
    _all(feed, T0 + 30.0)
    reply, events = feed.handle(control.encode(Seek(t_ms=40_000)), T0 + 30.0)
    assert reply.ok and not any(isinstance(e, ev.Reset) for e in events)  # forward: no reset
