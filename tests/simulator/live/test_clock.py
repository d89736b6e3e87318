"""The replay clock and the feed of one race: pure, with explicit wall times."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgspec.structs import replace

from chequered.contract import control
from chequered.contract import events as ev
from simulator.live.clock import ReplayClock, SpeedError, check_speed
from simulator.live.feed import CommandRejected, Feed, TimelineError, lap_starts
from tests.support.feed import reference_fold, timeline_fold, tiny_race

T0 = 1_700_000_000.0


# -- the clock ---------------------------------------------------------------------


def test_race_time_runs_at_speed_and_stands_still_when_paused() -> None:
    clock = ReplayClock.started(T0, speed=60)
    assert clock.race_ms(T0 + 2) == 120_000
    paused = clock.pause(T0 + 2)
    assert paused.race_ms(T0 + 100) == 120_000
    assert paused.wall_at(130_000) is None
    resumed = paused.resume(T0 + 10)
    assert resumed.race_ms(T0 + 11) == 180_000
    assert resumed.wall_at(240_000) == pytest.approx(T0 + 12)


def test_speed_change_mid_race_keeps_the_race_clock_continuous() -> None:
    clock = ReplayClock.started(T0, speed=10).with_speed(1000, T0 + 3)
    assert clock.race_ms(T0 + 3) == 30_000
    assert clock.race_ms(T0 + 4) == 1_030_000
    slower = clock.with_speed(0.1, T0 + 4)
    assert slower.race_ms(T0 + 14) == pytest.approx(1_031_000)


def test_as_fast_as_possible_has_no_horizon_and_follows_the_stream() -> None:
    clock = ReplayClock.started(T0, speed=None)
    assert clock.horizon_ms(T0) == math.inf
    assert clock.wall_at(10**9) == T0
    moved = clock.advanced(50_000)
    assert moved.race_ms(T0 + 1) == 50_000
    paused = moved.pause(T0 + 1)
    assert paused.horizon_ms(T0 + 5) == 50_000
    assert paused.with_speed(2, T0 + 5).resume(T0 + 5).race_ms(T0 + 6) == 52_000


def test_seek_keeps_speed_and_pause() -> None:
    clock = ReplayClock.started(T0, speed=4, paused=True).seek(90_000, T0 + 1)
    assert clock.paused and clock.speed == 4
    assert clock.race_ms(T0 + 50) == 90_000
    assert clock.resume(T0 + 2).race_ms(T0 + 3) == 94_000
    with pytest.raises(ValueError, match="negative"):
        clock.seek(-1, T0)


@pytest.mark.parametrize("speed", [0, -1, 0.05, 1000.5, 1e9, math.inf, math.nan])
def test_speeds_out_of_range_are_refused(speed: float) -> None:
    with pytest.raises(SpeedError):
        check_speed(speed)
    with pytest.raises(SpeedError):
        ReplayClock.started(T0, speed=1).with_speed(speed, T0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 100),
            st.sampled_from(["pause", "resume", "speed", "seek"]),
            st.floats(control.MIN_SPEED, control.MAX_SPEED),
        ),
        max_size=20,
    )
)
def test_race_clock_never_jumps_except_by_seek(steps: list[tuple[float, str, float]]) -> None:
    clock = ReplayClock.started(T0, speed=1)
    now = T0
    for gap, action, value in steps:
        before = clock.race_ms(now)
        now += gap
        assert clock.race_ms(now) >= before  # time never runs backwards
        reading = clock.race_ms(now)
        if action == "pause":
            clock = clock.pause(now)
        elif action == "resume":
            clock = clock.resume(now)
        elif action == "speed":
            clock = clock.with_speed(value, now)
        else:
            clock = clock.seek(value * 1000, now)
            assert clock.race_ms(now) == value * 1000
            continue
        assert clock.race_ms(now) == pytest.approx(reading)


# -- the feed ----------------------------------------------------------------------


def drain(feed: Feed, now: float, limit: int = 10_000) -> list[ev.Event]:
    return feed.take(now, limit)


def command(feed: Feed, payload: bytes, now: float) -> tuple[control.Reply, list[ev.Event]]:
    return feed.handle(payload, now)


def assert_stream(stream: list[ev.Event]) -> None:
    assert [e.seq for e in stream] == list(range(1, len(stream) + 1))
    since_reset = [0]
    for e in stream:
        if isinstance(e, ev.Reset):
            since_reset = [0]
            continue
        assert e.t_ms >= since_reset[-1], f"t_ms goes back at seq {e.seq}"
        since_reset.append(e.t_ms)


def test_start_opens_the_session_then_starts_the_clock() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny-a", timeline, now=T0, speed=60)
    first = feed.start(T0 + 5)
    assert [type(e) for e in first] == [ev.SessionOpened, ev.Clock]
    assert [e.seq for e in first] == [1, 2]
    assert all(e.race == "tiny-a" and e.wall == T0 + 5 for e in first)
    assert isinstance(first[1], ev.Clock) and first[1].action == "start"
    assert first[1].speed == 60
    # The clock starts at the start, not when the feed was made.
    assert feed.race_ms(T0 + 6) == 60_000


def test_events_fall_due_at_their_race_time() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=10)
    stream = feed.start(T0)
    stream += drain(feed, T0)
    assert [type(e) for e in stream[2:]] == [ev.Flag]
    nxt = feed.wake_at()
    assert nxt == pytest.approx(T0 + 2.0)  # first sector at 20 s of race time, at 10x
    assert drain(feed, T0 + 1.99) == []
    got = drain(feed, T0 + 2.0)
    assert [e.t_ms for e in got] == [20_000]
    assert got[0].wall == T0 + 2.0


def test_a_full_run_emits_the_timeline_once_in_order() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=None)
    stream = feed.start(T0) + drain(feed, T0, limit=7)
    while not feed.finished:
        stream += drain(feed, T0, limit=7)
    assert_stream(stream)
    body = [e for e in stream if not isinstance(e, ev.Clock)]
    assert [replace(e, seq=1, wall=0.0) for e in body] == [
        replace(e, seq=1, wall=0.0) for e in timeline
    ]
    assert all(e.wall == T0 for e in body)
    assert feed.state == "finished" and feed.wake_at() is None
    assert feed.status(T0).t_ms == timeline[-1].t_ms


def test_pause_resume_and_speed_emit_clock_events_without_jumps() -> None:
    feed = Feed.create("tiny", tiny_race(), now=T0, speed=10)
    stream = feed.start(T0) + drain(feed, T0 + 3)
    reply, out = command(feed, b'{"cmd":"pause","id":"a"}', T0 + 3)
    assert reply == control.Reply(cmd="pause", ok=True, id="a")
    assert [(e.action, e.paused, e.t_ms) for e in out if isinstance(e, ev.Clock)] == [
        ("pause", True, 30_000)
    ]
    stream += out + drain(feed, T0 + 100)
    assert feed.state == "paused" and feed.wake_at() is None
    assert feed.status(T0 + 100).t_ms == 30_000
    _, same = command(feed, b'{"cmd":"pause"}', T0 + 100)
    assert same == []  # pausing a paused clock changes nothing and says nothing
    _, out = command(feed, b'{"cmd":"speed","speed":100}', T0 + 100)
    _, out2 = command(feed, b'{"cmd":"resume"}', T0 + 200)
    stream += out + out2 + drain(feed, T0 + 200.5)
    assert feed.status(T0 + 200.5).t_ms == 80_000
    assert_stream(stream)


def test_a_command_first_sends_what_is_already_due() -> None:
    feed = Feed.create("tiny", tiny_race(), now=T0, speed=10)
    feed.start(T0)
    # 45 s of race have passed and nothing was taken: the crossings at 20 s and 40 s are due.
    out = feed.apply(control.Pause(), T0 + 4.5)
    assert len(out) > 2 and isinstance(out[-1], ev.Clock)
    assert all(e.t_ms <= 45_000 for e in out[:-1])
    assert out[-1].t_ms == 45_000  # the race clock itself
    resumed = feed.apply(control.Resume(), T0 + 100)
    assert [e.t_ms for e in resumed] == [45_000]


def test_seek_forward_catches_up_then_runs_at_pace() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=1)
    stream = feed.start(T0) + drain(feed, T0 + 1)
    reply, out = command(feed, b'{"cmd":"seek","t_ms":150000}', T0 + 1)
    assert reply.ok
    clock = out[-1]
    assert isinstance(clock, ev.Clock) and clock.action == "seek" and clock.target_ms == 150_000
    catch_up = drain(feed, T0 + 1)
    assert catch_up and max(e.t_ms for e in catch_up) <= 150_000
    stream += out + catch_up
    assert reference_fold(stream).key() == timeline_fold(timeline, 150_000).key()
    assert feed.wake_at() is not None and feed.wake_at() > T0 + 1  # type: ignore[operator]
    assert_stream(stream)


def test_seek_backward_resets_and_replays_from_the_start() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=1000)
    stream = feed.start(T0) + drain(feed, T0 + 0.25)  # 250 s of race
    before = len(stream)
    reply, out = command(feed, b'{"cmd":"seek","lap":2,"id":"back"}', T0 + 0.25)
    assert reply.ok and reply.id == "back"
    assert [type(e) for e in out] == [ev.Reset, ev.SessionOpened, ev.Clock]
    target = lap_starts(timeline)[2]
    assert target == 60_000  # the leader completes lap 1 after 60 s
    assert isinstance(out[0], ev.Reset) and out[0].target_ms == target
    stream += out + drain(feed, T0 + 0.25)
    assert reference_fold(stream).key() == timeline_fold(timeline, target).key()
    assert stream[before].seq == before + 1  # the wire seq runs on across the reset
    stream += drain(feed, T0 + 100)
    assert feed.finished
    assert reference_fold(stream).key() == timeline_fold(timeline, math.inf).key()
    assert_stream(stream)


def test_seek_while_paused_catches_up_and_stays_paused() -> None:
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=1, paused=True)
    stream = feed.start(T0) + drain(feed, T0 + 50)
    _, out = command(feed, b'{"cmd":"seek","t_ms":200000}', T0 + 50)
    stream += out + drain(feed, T0 + 60)
    assert feed.state == "paused"
    assert reference_fold(stream).key() == timeline_fold(timeline, 200_000).key()
    assert drain(feed, T0 + 10_000) == []


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json", "bad command: JSON is malformed"),
        (b'{"cmd":"fly"}', "bad command: Invalid value 'fly'"),
        (b'{"cmd":"speed","speed":0}', "bad command: Expected `float` >= 0.1 - at `$.speed`"),
        (b'{"cmd":"speed","speed":-5}', "bad command: Expected `float` >= 0.1"),
        (b'{"cmd":"speed","speed":1e9}', "bad command: Expected `float` <= 1000.0"),
        (b'{"cmd":"speed","speed":"fast"}', "bad command: Expected `float | null`, got `str`"),
        (b'{"cmd":"seek"}', "exactly one of `t_ms` or `lap`"),
        (b'{"cmd":"seek","t_ms":1,"lap":2}', "exactly one of `t_ms` or `lap`"),
        (b'{"cmd":"seek","t_ms":999999999}', "seek past the end: t_ms 999999999"),
        (b'{"cmd":"seek","lap":6}', "seek past the end: lap 6 never starts"),
        (b'{"cmd":"pause","extra":1}', "unknown field `extra`"),
        (b"[1,2]", "bad command: Expected `object`, got `array`"),
        (b"\xff\xfe", "bad command"),
    ],
)
def test_bad_commands_are_rejected_and_leave_the_clock_alone(payload: bytes, error: str) -> None:
    feed = Feed.create("tiny", tiny_race(), now=T0, speed=10)
    feed.start(T0)
    drain(feed, T0 + 3)
    clock, seq = feed.clock, feed.seq
    reply, out = command(feed, payload, T0 + 3)
    assert not reply.ok and out == []
    assert reply.error is not None and error in reply.error
    assert (feed.clock, feed.seq, feed.rejected) == (clock, seq, 1)
    assert feed.status(T0 + 3).rejected == 1


def test_a_rejected_command_is_answered_by_its_name_and_id() -> None:
    feed = Feed.create("tiny", tiny_race(), now=T0)
    reply, _ = command(feed, b'{"cmd":"speed","speed":0,"id":"x1"}', T0)
    assert (reply.cmd, reply.id, reply.ok) == ("speed", "x1", False)
    reply, _ = command(feed, b'{"cmd":"warp","id":"x2"}', T0)
    assert (reply.cmd, reply.id) == ("warp", "x2")


def test_a_repeated_command_id_is_answered_again_but_not_run_twice() -> None:
    feed = Feed.create("tiny", tiny_race(), now=T0, speed=1000)
    drain(feed, T0 + 0.25)
    assert feed.position_ms > 0

    def resets(out: list[ev.Event], now: float) -> int:
        return sum(isinstance(e, ev.Reset) for e in out + drain(feed, now))

    first, out = command(feed, b'{"cmd":"seek","t_ms":0,"id":"back-1"}', T0 + 0.25)
    assert first.ok and resets(out, T0 + 0.25) == 1
    again, out = command(feed, b'{"cmd":"seek","t_ms":0,"id":"back-1"}', T0 + 0.5)
    assert again == first and resets(out, T0 + 0.5) == 0
    assert feed.repeated == 1
    # A new id runs again.
    _, out = command(feed, b'{"cmd":"seek","t_ms":0,"id":"back-2"}', T0 + 0.75)
    assert resets(out, T0 + 0.75) == 1
    rejected, _ = command(feed, b'{"cmd":"speed","speed":0,"id":"bad"}', T0 + 0.28)
    assert command(feed, b'{"cmd":"speed","speed":0,"id":"bad"}', T0 + 0.28)[0] == rejected


def test_timelines_that_cannot_be_replayed_are_refused() -> None:
    timeline = tiny_race()
    with pytest.raises(TimelineError, match="must start with a session_open"):
        Feed.create("tiny", timeline[1:], now=T0)
    with pytest.raises(TimelineError, match="back in time"):
        Feed.create("tiny", [timeline[0], timeline[5], timeline[4]], now=T0)
    with pytest.raises(CommandRejected, match="outside"):
        Feed.create("tiny", timeline, now=T0).seek(10**9, T0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 30),
            st.sampled_from(["pause", "resume", "speed", "seek_t", "seek_lap", "take"]),
            st.floats(0, 1),
        ),
        max_size=25,
    ),
    st.integers(1, 50),
)
def test_any_sequence_of_commands_keeps_the_stream_sound(
    steps: list[tuple[float, str, float]], limit: int
) -> None:
    """Whatever the commands, seq is contiguous, t_ms never goes back between resets,
    and the fold of the stream equals the fold of the timeline up to where the feed is."""
    timeline = tiny_race()
    feed = Feed.create("tiny", timeline, now=T0, speed=5)
    now = T0
    stream = feed.start(now)
    for gap, action, x in steps:
        now += gap
        if action == "take":
            stream += feed.take(now, limit)
            continue
        payload = {
            "pause": b'{"cmd":"pause"}',
            "resume": b'{"cmd":"resume"}',
            "speed": b'{"cmd":"speed","speed":%d}' % (1 + int(x * 999)),
            "seek_t": b'{"cmd":"seek","t_ms":%d}' % int(x * timeline[-1].t_ms),
            "seek_lap": b'{"cmd":"seek","lap":%d}' % (1 + int(x * 4)),
        }[action]
        reply, out = feed.handle(payload, now)
        assert reply.ok, reply
        stream += out
    stream += feed.take(now, 10**6)
    assert_stream(stream)
    assert reference_fold(stream).key() == timeline_fold(timeline, feed.position_ms).key()
