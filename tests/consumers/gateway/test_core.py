"""The gateway's sans-I/O core with plain function calls: no socket, no event loop, no broker.

A fake port stands in for the connection (how much room its socket has, what
was flushed, closes asked for) and fake timers for the event loop; the clock
is a number the test moves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest

from chequered.contract import board, control, topics
from consumers.gateway.core.admission import Admission
from consumers.gateway.core.cache import UNAPPLIED_MAX, Races
from consumers.gateway.core.requests import Requests, parse_request
from consumers.gateway.core.session import (
    Counts,
    Frame,
    Session,
    clip,
    close_label,
)
from consumers.gateway.core.settings import GatewaySettings
from tests.support.standings import Ticker


@dataclass
class FakePort:
    """A connection whose socket takes ``room`` more bytes (None: any amount)."""

    room_bytes: int | None = None
    closed: tuple[int, str] | None = None
    flushes: int = 0
    wakes: int = 0

    def gone(self) -> bool:
        return self.closed is not None

    def room(self, pending: int) -> bool:
        return not self.gone() and (self.room_bytes is None or pending < self.room_bytes)

    def flush_later(self) -> None:
        self.flushes += 1

    def wake(self) -> None:
        self.wakes += 1

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


@dataclass
class FakeTimers:
    calls: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    resyncs: int = 0

    def later(self, delay_s: float, callback: Callable[[], None]) -> Any:
        entry = (delay_s, callback)
        self.calls.append(entry)
        timers = self

        class Handle:
            def cancel(self) -> None:
                if entry in timers.calls:
                    timers.calls.remove(entry)

        return Handle()

    def resync(self) -> None:
        self.resyncs += 1

    def fire(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()


class Core:
    """A gateway core: cache, requests, counts; sessions on fake ports."""

    def __init__(self, **settings: Any) -> None:
        self.settings = GatewaySettings(**settings)
        self.counts = Counts()
        self.timers = FakeTimers()
        self.races = Races(self.settings, self.counts, self.timers)
        self.requests = Requests(self.races)
        self.now = 1000.0

    def session(self, port: FakePort | None = None) -> tuple[Session, FakePort]:
        port = port or FakePort()
        return self.requests.session("192.0.2.1", port, self.now), port

    def ask(self, session: Session, request: object) -> list[dict[str, Any]]:
        """Send one request; the frames the session has due afterwards, decoded."""
        raw = request if isinstance(request, str | bytes) else json.dumps(request)
        self.requests.receive(session, raw, now=self.now, wall=self.now)
        return frames(session)

    def publish(self, ticker: Ticker, *, step: bool = False, retained: bool = True) -> None:
        if step:
            delta = ticker.step()
            topic, payload = topics.topic(ticker.race, topics.STANDINGS_DELTA), board.encode(delta)
            retained = False
        else:
            topic, payload = (
                topics.topic(ticker.race, topics.STANDINGS),
                board.encode(ticker.snapshot()),
            )
        self.races.on_message(topic, payload, retained=retained, now=self.now)


def frames(session: Session) -> list[dict[str, Any]]:
    due, _ = session.take()
    return [json.loads(frame.data) for frame in due]


# -- requests ------------------------------------------------------------------


def test_json_nested_past_the_decoder_is_invalid_json_like_any_other() -> None:
    core = Core()
    session, port = core.session()
    reply = core.ask(session, "[" * 2000 + "]" * 2000)
    assert [(r["type"], r["error"]) for r in reply] == [("error", "invalid_json")]
    assert port.closed is None
    assert core.ask(session, {"op": "ping", "id": 1})[0]["type"] == "pong"
    with pytest.raises(Exception) as info:
        parse_request('{"op": ' + "[" * 5000 + "]" * 5000 + "}")
    assert getattr(info.value, "code", None) == "invalid_json"


def test_a_long_op_is_not_repeated_whole() -> None:
    core = Core()
    session, _ = core.session()
    op = "x" * 4202
    [error] = core.ask(session, {"op": op, "id": "long"})
    assert error["error"] == "unknown_op" and error["id"] == "long"
    assert len(error["detail"]) < 200 and "4202 characters" in error["detail"]
    assert clip(op, 64) == "x" * 64 + "... (4202 characters)"
    assert clip("short", 64) == "short"


def test_subscribes_are_limited_per_client_and_only_those_that_cost_a_snapshot() -> None:
    core = Core(subscribe_rate_per_s=2.0, subscribe_burst=3, rate_per_s=1000, burst=1000)
    ticker = Ticker("core-subs")
    core.publish(ticker)
    session, _ = core.session()
    answers = [core.ask(session, {"op": "subscribe", "race": "core-subs"}) for _ in range(5)]
    assert [a[0]["type"] for a in answers] == ["snapshot"] * 3 + ["error"] * 2
    assert answers[3][0]["error"] == "too_many_subscribes"
    # Refused subscribes (an unknown race) are answered, and cost nothing.
    for _ in range(10):
        assert core.ask(session, {"op": "subscribe", "race": "ghost"})[0]["error"] == (
            "unknown_race"
        )
    core.now += 0.5  # one token back at 2 per second
    assert core.ask(session, {"op": "subscribe", "race": "core-subs"})[0]["type"] == "snapshot"
    assert core.ask(session, {"op": "subscribe", "race": "core-subs"})[0]["type"] == "error"
    # Another client has its own allowance.
    other, _ = core.session()
    assert core.ask(other, {"op": "subscribe", "race": "core-subs"})[0]["type"] == "snapshot"
    assert core.counts.errors["too_many_subscribes"] == 3


def test_a_flood_of_frames_closes_with_1008_and_nothing_more_is_answered() -> None:
    core = Core(rate_per_s=1.0, burst=3)
    session, port = core.session()
    for _ in range(3):
        assert core.ask(session, {"op": "ping"})[0]["type"] == "pong"
    assert core.ask(session, {"op": "ping"}) == []
    assert port.closed == (1008, "rate limit exceeded")
    core.now += 100
    assert core.ask(session, {"op": "ping"}) == []
    assert core.counts.errors["rate_limited"] == 1


def test_max_subscriptions_and_unsubscribe() -> None:
    core = Core(max_subscriptions=2)
    for race in ("a", "b", "c"):
        core.publish(Ticker(race))
    session, _ = core.session()
    assert core.ask(session, {"op": "subscribe", "race": "a"})[0]["type"] == "snapshot"
    assert core.ask(session, {"op": "subscribe", "race": "b", "class": "GT"})[0]["type"] == (
        "snapshot"
    )
    [error] = core.ask(session, {"op": "subscribe", "race": "c", "id": 7})
    assert (error["error"], error["id"]) == ("too_many_subscriptions", 7)
    assert core.ask(session, {"op": "unsubscribe", "race": "a"}) == [
        {"type": "unsubscribed", "race": "a"}
    ]
    assert core.ask(session, {"op": "subscribe", "race": "c"})[0]["type"] == "snapshot"
    assert core.ask(session, {"op": "unsubscribe", "race": "a"})[0]["error"] == "not_subscribed"
    [error] = core.ask(session, {"op": "subscribe", "race": "c", "class": "LMP9"})
    assert error["error"] == "unknown_class" and "GT" in error["detail"]


# -- the cache -------------------------------------------------------------------


def test_deltas_reach_the_clients_in_step_and_a_class_filter_keeps_its_cars() -> None:
    core = Core()
    ticker = Ticker("core-flow")
    core.publish(ticker)
    everyone, _ = core.session()
    gt, _ = core.session()
    [snap] = core.ask(everyone, {"op": "subscribe", "race": "core-flow"})
    [gt_snap] = core.ask(gt, {"op": "subscribe", "race": "core-flow", "class": "GT"})
    assert snap["seq"] == gt_snap["seq"] == 1 and {r["cls"] for r in gt_snap["cars"]} == {"GT"}
    for _ in range(5):
        core.publish(ticker, step=True)
    deltas = frames(everyone)
    assert [d["type"] for d in deltas] == ["delta"] * 5
    assert [d["prev_seq"] for d in deltas] == [1, 2, 3, 4, 5]
    gt_deltas = frames(gt)
    assert [d["seq"] for d in gt_deltas] == [2, 3, 4, 5, 6]
    # A patch names its car's class only when that changed: the filter looks the class up
    # on the board, and keeps exactly the class's patches of each delta.
    gt_cars = {car for car, cls in ticker.cls.items() if cls == "GT"}
    for whole, of_class in zip(deltas, gt_deltas, strict=True):
        kept = of_class.get("cars", [])
        assert kept == [p for p in whole.get("cars", []) if p["car"] in gt_cars]
        assert all("cls" not in p for p in kept)
    assert any(d.get("cars") for d in gt_deltas), "the steps moved a GT car"
    assert any(not d.get("cars") for d in gt_deltas), "and some changed no GT car"
    assert core.races.get("core-flow") is not None


def test_a_gap_marks_the_race_stale_asks_for_a_resync_and_the_next_snapshot_heals_it() -> None:
    core = Core()
    ticker = Ticker("core-gap")
    core.publish(ticker)
    session, _ = core.session()
    core.ask(session, {"op": "subscribe", "race": "core-gap"})
    ticker.step()  # lost on the way
    core.publish(ticker, step=True)
    cache = core.races.get("core-gap")
    assert cache is not None and cache.stale and core.timers.resyncs == 1
    assert frames(session) == [] and core.counts.gaps.value == 1
    core.publish(ticker)  # the retained snapshot, re-read
    [snap] = frames(session)
    assert (snap["type"], snap["seq"], cache.stale) == ("snapshot", ticker.seq, False)


def test_a_live_snapshot_waits_for_its_delta_then_goes_out_after_the_grace() -> None:
    core = Core()
    ticker = Ticker("core-ahead")
    core.publish(ticker)
    session, _ = core.session()
    core.ask(session, {"op": "subscribe", "race": "core-ahead"})
    delta = ticker.step()
    core.publish(ticker, retained=False)  # the live snapshot, just ahead of its delta
    assert frames(session) == [] and len(core.timers.calls) == 1
    topic = topics.topic("core-ahead", topics.STANDINGS_DELTA)
    core.races.on_message(topic, board.encode(delta), retained=False, now=core.now)
    assert [f["type"] for f in frames(session)] == ["delta"]
    assert core.timers.calls == []  # the hold was cancelled
    # A snapshot that no delta follows is news once the grace is over.
    ticker.step()
    core.publish(ticker, retained=False)
    assert frames(session) == []
    core.timers.fire()
    assert [f["type"] for f in frames(session)] == ["snapshot"]


def in_step(race: str, deltas: int) -> tuple[Core, Ticker, Session]:
    """A core with a client subscribed to ``race`` and ``deltas`` deltas forwarded to it."""
    core = Core()
    ticker = Ticker(race)
    core.publish(ticker)
    session, _ = core.session()
    core.ask(session, {"op": "subscribe", "race": race})
    for _ in range(deltas):
        core.publish(ticker, step=True)
    return core, ticker, session


def unstamped(snapshot: board.Snapshot) -> board.Snapshot:
    """The board without the wall time it was stamped with."""
    return msgspec.structs.replace(snapshot, wall=0.0)


def test_deltas_in_step_are_applied_only_when_a_whole_board_is_wanted() -> None:
    core, ticker, session = in_step("core-lazy", UNAPPLIED_MAX)
    assert len(frames(session)) == UNAPPLIED_MAX
    cache = core.races.get("core-lazy")
    assert cache is not None and len(cache.unapplied) == UNAPPLIED_MAX
    assert cache.seq == ticker.seq and cache.base is not None and cache.base.seq == 1
    # A client that joins now gets the board applied to the last seq, as the projector has it.
    late, _ = core.session()
    [snap] = core.ask(late, {"op": "subscribe", "race": "core-lazy"})
    assert unstamped(board.decode_snapshot(json.dumps(snap).encode())) == unstamped(
        ticker.snapshot()
    )
    assert cache.unapplied == []
    # And the unapplied deltas stay bounded when nobody asks.
    for _ in range(UNAPPLIED_MAX + 1):
        core.publish(ticker, step=True)
    assert len(cache.unapplied) <= UNAPPLIED_MAX and cache.seq == ticker.seq
    assert cache.snapshot is not None
    assert unstamped(cache.snapshot) == unstamped(ticker.snapshot())


def test_a_delta_for_a_car_the_board_lacks_is_refused_though_it_is_not_applied_yet() -> None:
    core, ticker, session = in_step("core-forged", 2)
    assert len(frames(session)) == 2
    forged = msgspec.structs.replace(ticker.step(), cars=[board.CarPatch(car="999", laps=3)])
    topic = topics.topic("core-forged", topics.STANDINGS_DELTA)
    note = core.races.on_message(topic, board.encode(forged), retained=False, now=core.now)
    assert note is not None and note[0] == "bad_payload" and "'999'" in str(note[1]["error"])
    assert core.counts.bad_payloads.value == 1 and frames(session) == []
    cache = core.races.get("core-forged")
    assert cache is not None and cache.seq == ticker.seq - 1 and len(cache.unapplied) == 2
    late, _ = core.session()
    [snap] = core.ask(late, {"op": "subscribe", "race": "core-forged"})
    assert snap["seq"] == ticker.seq - 1 and all(r["car"] != "999" for r in snap["cars"])


def test_the_live_snapshot_of_a_delta_s_seq_takes_the_place_of_the_deltas_unapplied() -> None:
    core, ticker, session = in_step("core-rebase", 3)
    delta = ticker.step()
    live = board.encode(ticker.snapshot())
    core.races.on_message(
        topics.topic("core-rebase", topics.STANDINGS), live, retained=False, now=core.now
    )
    topic = topics.topic("core-rebase", topics.STANDINGS_DELTA)
    core.races.on_message(topic, board.encode(delta), retained=False, now=core.now)
    cache = core.races.get("core-rebase")
    assert cache is not None and cache.unapplied == []
    assert cache.base == board.decode_snapshot(live)
    assert cache.encoded == {None: live}  # a joining client gets the projector's own bytes
    assert [f["type"] for f in frames(session)] == ["delta"] * 4


def test_the_snapshot_that_follows_its_delta_takes_the_place_of_the_deltas_unapplied() -> None:
    core, ticker, session = in_step("core-after", 3)
    live = board.encode(ticker.snapshot())  # the projector's order: the delta, then this
    core.races.on_message(
        topics.topic("core-after", topics.STANDINGS), live, retained=False, now=core.now
    )
    cache = core.races.get("core-after")
    assert cache is not None and cache.unapplied == []
    assert cache.base == board.decode_snapshot(live) and cache.encoded == {None: live}
    assert [f["type"] for f in frames(session)] == ["delta"] * 3  # nothing more to send


def test_held_subscribes_do_not_use_up_max_races() -> None:
    core = Core(max_races=2)
    core.requests.start_grace()
    session, _ = core.session()
    for ghost in ("ghost-1", "ghost-2", "ghost-3"):
        [held] = core.ask(session, {"op": "subscribe", "race": ghost})
        assert held.get("waiting") is True or held.get("error") == "unknown_race"
    # The races the broker names still get in, up to max_races of them.
    for race in ("real-1", "real-2", "real-3"):
        core.publish(Ticker(race))
    assert sorted(r["race"] for r in core.races.race_list()) == ["real-1", "real-2"]
    assert core.counts.rejected["max_races"] == 1
    # The held ones the broker never named are refused when the grace ends.
    core.requests.end_grace()
    refused = frames(session)
    assert {r["error"] for r in refused} == {"unknown_race"}
    assert set(core.races.races) == {"real-1", "real-2"}


def test_a_held_race_that_the_broker_names_is_served() -> None:
    core = Core()
    core.requests.start_grace()
    session, _ = core.session()
    assert core.ask(session, {"op": "subscribe", "race": "late", "id": 1}) == [
        {"type": "subscribed", "id": 1, "race": "late", "waiting": True}
    ]
    status = control.Status(race="late", state="running")
    core.races.on_message(
        topics.topic("late", topics.STATUS), control.encode(status), retained=True, now=core.now
    )
    core.publish(Ticker("late"))
    assert [f["type"] for f in frames(session)] == ["status", "snapshot"]
    core.requests.end_grace()
    assert frames(session) == [] and "late" in core.races.races


# -- a slow client ---------------------------------------------------------------


def test_a_client_whose_socket_is_full_is_coalesced_to_the_latest_snapshot() -> None:
    core = Core(queue_frames=4, queue_bytes=1 << 20)
    ticker = Ticker("core-slow")
    core.publish(ticker)
    session, port = core.session()
    core.ask(session, {"op": "subscribe", "race": "core-slow"})
    port.room_bytes = 0  # from now on the socket takes nothing
    for _ in range(20):
        core.publish(ticker, step=True)
    outbox = session.outbox
    assert len(outbox) <= 4 and session.coalesced >= 1 and port.closed is None
    assert outbox.high_water <= 5 and core.counts.queue_high_water <= 5
    kinds = [f.kind for f in outbox.frames]
    assert kinds[0] == "snapshot" and kinds.count("snapshot") == 1
    assert core.counts.coalesced.value == session.coalesced
    assert core.counts.frames_dropped.value > 0
    # What it holds still chains: the snapshot's seq, then deltas from there.
    seqs = [json.loads(f.data)["seq"] for f in outbox.frames]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert seqs[-1] == ticker.seq


def test_a_client_that_never_reads_but_keeps_asking_is_closed() -> None:
    core = Core(queue_frames=4, rate_per_s=1000, burst=1000)
    session, port = core.session(FakePort(room_bytes=0))
    for i in range(5):
        core.ask(session, {"op": "ping", "id": i})
    assert port.closed == (1008, "outbox overflow: client is not reading")


def test_outbox_drops_a_race_and_keeps_the_rest() -> None:
    core = Core()
    session, port = core.session(FakePort(room_bytes=0))
    session.send(Frame("reply", b"{}"))
    session.send(Frame("delta", b"d1", "a"))
    session.send(Frame("delta", b"d2", "b"))
    assert port.wakes == 3 and port.flushes == 0
    assert session.outbox.drop_race("a") == 1
    assert [f.data for f in session.outbox.frames] == [b"{}", b"d2"]


def test_frames_go_straight_to_the_socket_while_it_has_room() -> None:
    core = Core()
    session, port = core.session(FakePort(room_bytes=10))
    session.send(Frame("reply", b"12345"))
    session.send(Frame("reply", b"12345"))
    session.send(Frame("reply", b"1"))  # 10 bytes due already: no room left
    assert port.flushes == 1 and port.wakes == 1
    due, size = session.take()
    assert [frame.data for frame in due] == [b"12345", b"12345"] and size == 10
    assert [f.data for f in session.outbox.frames] == [b"1"]


# -- admission -------------------------------------------------------------------


def test_connections_are_counted_per_address_and_in_all_when_accepted() -> None:
    counts = Counts()
    admission = Admission(GatewaySettings(max_connections_per_address=2, max_clients=3), counts)
    assert admission.accept("a1", "192.0.2.1") is None
    assert admission.accept("a2", "192.0.2.1") is None
    refused = admission.accept("a3", "192.0.2.1")
    assert refused is not None and (refused.status, refused.reason) == (429, "per_address")
    assert admission.accept("b1", "192.0.2.2") is None
    full = admission.accept("c1", "192.0.2.3")
    assert full is not None and (full.status, full.reason) == (503, "capacity")
    admission.release("a1", "192.0.2.1")
    assert admission.accept("a4", "192.0.2.1") is None
    for key in ("a2", "a4"):
        admission.release(key, "192.0.2.1")
    assert "192.0.2.1" not in admission.by_address
    assert counts.rejected == {"per_address": 1, "capacity": 1}


def test_the_defaults_limit_each_address() -> None:
    defaults = GatewaySettings()
    assert defaults.max_connections_per_address and defaults.max_clients
    assert defaults.max_headers * defaults.max_line_bytes <= 128 * 1024
    assert defaults.open_timeout_s < 10 and defaults.subscribe_rate_per_s > 0
    assert defaults.allow_cors is None


def test_origin_checks_refuse_two_origins_even_without_an_allow_list() -> None:
    counts = Counts()
    anyone = Admission(GatewaySettings(), counts)
    assert anyone.handshake([], None) is None
    assert anyone.handshake(["https://a.example"], None) is None
    two = anyone.handshake(["https://a.example", "https://b.example"], None)
    assert two is not None and (two.status, two.reason) == (403, "origin")
    listed = Admission(
        GatewaySettings(allowed_origins=("https://a.example",), allow_missing_origin=False),
        counts,
    )
    assert listed.handshake(["https://a.example"], None) is None
    for origins in ([], ["https://b.example"], ["https://a.example", "https://a.example"]):
        refused = listed.handshake(origins, None)
        assert refused is not None and refused.status == 403
    assert counts.rejected["origin"] == 4


def test_token_and_metrics_access() -> None:
    counts = Counts()
    locked = Admission(GatewaySettings(token="s3cret"), counts)
    assert locked.handshake([], "s3cret") is None
    for wrong in (None, "", "s3cre", "s3cret!"):
        refused = locked.handshake([], wrong)
        assert refused is not None and refused.status == 401
    assert locked.metrics(local=True, token="s3cret") is None
    refused = locked.metrics(local=True, token=None)
    assert refused is not None and refused.status == 401
    open_ = Admission(GatewaySettings(), counts)
    assert open_.metrics(local=True, token=None) is None
    remote = open_.metrics(local=False, token=None)
    assert remote is not None and remote.status == 403
    elsewhere = Admission(GatewaySettings(metrics_port=0), counts)
    moved = elsewhere.metrics(local=True, token=None)
    assert moved is not None and moved.status == 404


@pytest.mark.parametrize(
    ("code", "label"),
    [
        (1000, "1000"),
        (1008, "1008"),
        (1015, "1015"),
        (1016, "invalid"),
        (2999, "invalid"),
        (3000, "application"),
        (3999, "application"),
        (4000, "private"),
        (4321, "private"),
        (4999, "private"),
        (5000, "invalid"),
        (0, "invalid"),
    ],
)
def test_close_codes_are_grouped_so_clients_cannot_make_new_series(code: int, label: str) -> None:
    assert close_label(code) == label
