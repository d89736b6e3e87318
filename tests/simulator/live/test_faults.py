"""The hostile feed's pure core: what it does to a stream of messages, and its record."""

from __future__ import annotations

import msgspec
import pytest

from chequered.contract import topics
from chequered.contract.control import decode_command
from chequered.contract.events import Event, PayloadError, decode, encode, unbatch
from chequered.contract.injected import Injected
from simulator.live.faults import FaultError, FaultRates, Injector, Outgoing
from simulator.live.feed import Feed
from tests.support.feed import tiny_race

RACE = "hostile"


def stamped(race: str = RACE) -> list[Event]:
    """The tiny race as a feed numbers it: seqs from 1, clock event included."""
    feed = Feed.create(race, tiny_race(race, laps=8), now=0.0, speed=None)
    return feed.start(0.0) + feed.take(0.0, 10_000)


def messages(events: list[Event]) -> list[bytes]:
    return [encode(event) for event in events]


def run(rates: FaultRates, payloads: list[bytes]) -> tuple[Injector, list[Outgoing]]:
    injector = Injector(RACE, rates)
    out: list[Outgoing] = []
    for i, payload in enumerate(payloads):
        out += injector.message(payload, now=1000.0 + i)
    out += injector.flush(now=2000.0)
    return injector, out


def events_out(out: list[Outgoing]) -> list[bytes]:
    return [o.payload for o in out if o.leaf == topics.EVENTS and o.payload]


def seqs(payloads: list[bytes]) -> list[int]:
    found: list[int] = []
    for payload in payloads:
        try:
            found += [e.seq for e in unbatch(decode(payload))]
        except PayloadError:
            continue
    return found


def hwm_counts(payloads: list[bytes]) -> tuple[int, int, int]:
    """Gaps, duplicates and malformed payloads, as our fold counts them (independently)."""
    high = gaps = dups = bad = 0
    for payload in payloads:
        try:
            events = unbatch(decode(payload))
        except PayloadError:
            bad += 1
            continue
        for e in events:
            if e.seq <= high:
                dups += 1
            else:
                gaps += e.seq - high - 1 if high else 0
                high = e.seq
    return gaps, dups, bad


def test_without_faults_the_stream_passes_untouched() -> None:
    payloads = messages(stamped())
    injector, out = run(FaultRates(seed=3), payloads)
    assert events_out(out) == payloads
    assert injector.record == [] and not any(injector.counts.values())
    assert all(o.original and o.pause_s == 0 for o in out)


def test_the_same_seed_injects_the_same_faults_and_another_seed_others() -> None:
    payloads = messages(stamped())
    rates = FaultRates(seed=7, duplicate=0.2, drop=0.1, reorder=0.1, malformed=0.1)
    a, out_a = run(rates, payloads)
    b, out_b = run(rates, payloads)
    c, _ = run(FaultRates(seed=8, duplicate=0.2, drop=0.1, reorder=0.1, malformed=0.1), payloads)
    assert a.record == b.record and out_a == out_b
    assert a.record != c.record
    assert {"duplicate", "drop", "reorder", "malformed"} <= {r.fault for r in a.record}


def test_drops_are_gaps_and_duplicates_are_sent_twice_and_the_record_says_which() -> None:
    payloads = messages(stamped())
    injector, out = run(FaultRates(seed=1, duplicate=0.15, drop=0.1), payloads)
    sent = seqs(events_out(out))
    dropped = {r.first_seq for r in injector.record if r.fault == "drop"}
    doubled = [r.first_seq for r in injector.record if r.fault == "duplicate"]
    assert dropped and doubled
    assert dropped.isdisjoint(sent)
    for seq in doubled:
        assert sent.count(seq) == 2
    assert set(sent) | dropped == set(range(1, len(payloads) + 1))
    gaps, dups, _ = hwm_counts(events_out(out))
    assert (injector.expected.gaps, injector.expected.duplicates) == (gaps, dups)
    assert gaps == len(dropped) and dups == len(doubled)


def test_a_reordered_message_goes_out_behind_later_ones_within_the_window() -> None:
    payloads = messages(stamped())
    rates = FaultRates(seed=2, reorder=0.1, reorder_window=3)
    injector, out = run(rates, payloads)
    sent = seqs(events_out(out))
    assert sorted(sent) == list(range(1, len(payloads) + 1))  # nothing lost, nothing twice
    labels = [r for r in injector.record if r.fault == "reorder"]
    assert labels
    for label in labels:
        assert label.first_seq is not None and label.behind is not None
        assert 1 <= label.behind <= 3
        assert sent.index(label.first_seq) > sent.index(label.first_seq + 1)
    gaps, dups, _ = hwm_counts(events_out(out))
    assert injector.expected.gaps == gaps == injector.expected.duplicates == dups > 0


def test_malformed_payloads_are_labelled_on_the_side_topic_and_fail_the_contract() -> None:
    payloads = messages(stamped())
    injector, out = run(FaultRates(seed=4, malformed=0.3), payloads)
    labels = [msgspec.json.decode(o.payload, type=Injected) for o in out
              if o.leaf == topics.INJECTED]  # fmt: skip
    garbage = [p for p in events_out(out) if p not in payloads]
    assert labels and len(labels) == len(garbage) == injector.expected.malformed
    assert [label.payload for label in labels] == [g.decode("utf-8", "replace") for g in garbage]
    for payload in garbage:
        with pytest.raises(PayloadError):
            decode(payload)
    # The real messages all went out, in order: malformed ones come beside them.
    assert [p for p in events_out(out) if p in payloads] == payloads
    assert {label.form for label in labels} <= {"not_json", "truncated", "unknown_kind",
                                                 "wrong_types"}  # fmt: skip


def test_stalls_and_bursts_hold_the_feed_and_a_backward_seek_goes_to_the_control_topic() -> None:
    payloads = messages(stamped())
    rates = FaultRates(seed=5, stall=0.05, stall_s=2.0, burst=0.1, burst_s=0.25, seek_back=0.2)
    injector, out = run(rates, payloads)
    pauses = [o.pause_s for o in out if o.pause_s]
    assert pauses and set(pauses) <= {2.0, 0.25, 2.25}
    assert injector.counts["stall"] and injector.counts["burst"]
    commands = [decode_command(o.payload) for o in out if o.leaf == topics.CONTROL]
    assert len(commands) == injector.counts["seek_back"] == 1  # max_seeks
    label = next(r for r in injector.record if r.fault == "seek_back")
    assert label.target_ms is not None and label.last_seq is not None
    at = next(e for e in stamped() if e.seq == label.last_seq)
    assert 0 <= label.target_ms < at.t_ms
    assert events_out(out) == payloads  # holds and seeks lose nothing


def test_the_session_open_reset_and_close_are_never_touched() -> None:
    events = stamped()
    payloads = messages(events)
    injector, out = run(FaultRates(seed=6, drop=1.0), payloads)
    sent = seqs(events_out(out))
    kept = {e.seq for e in events if e.__struct_config__.tag in ("session_open", "session_close")}
    assert set(sent) == kept
    assert injector.counts["drop"] == len(payloads) - len(kept)


def test_after_max_faults_the_feed_is_honest() -> None:
    payloads = messages(stamped())
    rates = FaultRates(seed=9, drop=0.3, reorder=0.3, duplicate=0.3, max_faults=5)
    injector, out = run(rates, payloads)
    assert len(injector.record) == 5
    last = max(r.last_seq or 0 for r in injector.record if r.fault != "reorder")
    tail = [p for p in events_out(out) if seqs([p]) and seqs([p])[0] > last + 10]
    assert tail == [p for p in payloads if seqs([p])[0] > last + 10]


def test_a_batch_is_one_message_with_all_its_seqs() -> None:
    events = stamped()
    batch = (b'{"kind":"batch","race":"%s","events":[' % RACE.encode()
             + b",".join(encode(e) for e in events[2:12]) + b"]}")  # fmt: skip
    injector = Injector(RACE, FaultRates(seed=0, drop=1.0))
    injector.message(encode(events[0]), 0.0)
    assert injector.message(batch, 0.0)[-1].payload == b""
    assert injector.record[0].first_seq == 3 and injector.record[0].last_seq == 12
    assert injector.record[0].events == 10


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [({"drop": 1.5}, "--drop"), ({"seek_back": -0.1}, "--seek-back"),
     ({"reorder_window": 0}, "--reorder-window"), ({"stall_s": 0}, "--stall-s"),
     ({"max_faults": -1}, "--max-faults")],
)  # fmt: skip
def test_rates_out_of_range_name_the_setting(kwargs: dict[str, float], flag: str) -> None:
    with pytest.raises(FaultError, match=flag):
        FaultRates(**kwargs)  # type: ignore[arg-type]
