"""What the load test measures, kept apart from how it measures it.

Sequence checking of a client's snapshot/delta stream by ``prev_seq``, HDR
latency histograms merged across client processes, per-interval time series
and the report's summary. Pure: no sockets, no processes, no files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import msgspec
from hdrh.histogram import HdrHistogram

LATENCY_LOWEST_US = 1
LATENCY_HIGHEST_US = 3_600_000_000
"""Latencies are recorded in microseconds, 1 us to 1 hour; larger ones are clamped."""
LATENCY_SIGNIFICANT_DIGITS = 3
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99.9", 99.9),
)


def new_histogram() -> HdrHistogram:
    return HdrHistogram(LATENCY_LOWEST_US, LATENCY_HIGHEST_US, LATENCY_SIGNIFICANT_DIGITS)


def record_latency(hist: HdrHistogram, seconds: float) -> bool:
    """Record one latency; False (and nothing recorded) when it is negative.

    A negative latency means the sender's and the receiver's clocks disagree
    (different machines); it is counted by the caller, never folded in.
    """
    if seconds < 0:
        return False
    us = min(max(round(seconds * 1e6), LATENCY_LOWEST_US), LATENCY_HIGHEST_US)
    hist.record_value(us)
    return True


class LatencyTally:
    """Latencies counted per value, recorded into an HDR histogram in bulk.

    hdrh records a value in several microseconds of pure Python, as much as
    everything else a load client does with a frame; a dict increment costs a
    tenth of that. Values are kept to 12 significant bits (finer than the
    histogram's 3 significant digits, whose buckets they never cross), so the
    histogram comes out the same as if each value had been recorded.
    """

    __slots__ = ("counts", "negative", "sum_s")

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.negative = 0
        self.sum_s = 0.0

    def add(self, seconds: float) -> None:
        if seconds < 0:
            self.negative += 1
            return
        self.sum_s += seconds
        us = min(max(round(seconds * 1e6), LATENCY_LOWEST_US), LATENCY_HIGHEST_US)
        shift = us.bit_length() - 12
        if shift > 0:
            us = us >> shift << shift
        self.counts[us] = self.counts.get(us, 0) + 1

    def record_into(self, hist: HdrHistogram) -> None:
        """Record every value counted so far into ``hist``, and start again."""
        for value, count in self.counts.items():
            hist.record_value(value, count)
        self.counts.clear()


def latency_summary(hist: HdrHistogram, *, sum_s: float | None = None) -> dict[str, float | int]:
    """Count, min, mean, the report's percentiles and max, in milliseconds.

    The mean comes from ``sum_s`` (the exact sum of the latencies recorded, in
    seconds) when given: hdrh's own mean walks every bucket in Python and costs
    about 100 ms, too much for a progress line.
    """
    count = hist.get_total_count()
    out: dict[str, float | int] = {"count": count}
    if count == 0:
        for name in ("min", "mean", *(p for p, _ in PERCENTILES), "max"):
            out[name] = 0.0
        return out
    out["min"] = hist.get_min_value() / 1000
    if sum_s is not None:
        out["mean"] = round(sum_s * 1000 / count, 3)
    for name, pct in PERCENTILES:
        out[name] = hist.get_value_at_percentile(pct) / 1000
    out["max"] = hist.get_max_value() / 1000
    return out


def histogram_buckets(hist: HdrHistogram, *, per_decade: int = 10) -> list[tuple[float, int]]:
    """Counts in logarithmic buckets, as ``(upper bound in ms, count)``, for plotting."""
    if hist.get_total_count() == 0:
        return []
    buckets: dict[int, int] = {}
    for item in hist.get_recorded_iterator():
        us = max(item.value_iterated_to, 1)
        index = math.ceil(math.log10(us) * per_decade)
        buckets[index] = buckets.get(index, 0) + item.count_added_in_this_iter_step
    return [(round(10 ** (i / per_decade) / 1000, 6), buckets[i]) for i in sorted(buckets)]


# -- sequence checking --------------------------------------------------------


@dataclass(slots=True)
class SeqChain:
    """One client's view of one race: checks that each delta continues the last.

    The stream is a snapshot, then deltas whose ``prev_seq`` is the ``seq`` of
    the snapshot or delta before. A delta that starts past the last seq is a
    gap (something was lost); one that ends at or before it is a duplicate; a
    later snapshot (coalescing of a slow client, a resubscribe) is a resync.
    """

    last: int | None = None
    gaps: int = 0
    missed_seqs: int = 0
    """Seqs skipped over by gaps (events, not deltas: a delta can cover several)."""
    duplicates: int = 0
    overlaps: int = 0
    """Deltas that start before the last seq but end after it (a broken chain)."""
    resyncs: int = 0
    early: int = 0
    """Deltas received before any snapshot."""

    def snapshot(self, seq: int) -> bool:
        """Take a snapshot; False when it is older than what was already applied."""
        if self.last is not None:
            if seq < self.last:
                self.duplicates += 1
                return False
            self.resyncs += 1
        self.last = seq
        return True

    def delta(self, seq: int, prev_seq: int) -> bool:
        """Take a delta; False when it is a duplicate (nothing new in it)."""
        if self.last is None:
            self.early += 1
            self.last = seq
            return True
        if seq <= self.last:
            self.duplicates += 1
            return False
        if prev_seq > self.last:
            self.gaps += 1
            self.missed_seqs += prev_seq - self.last
        elif prev_seq < self.last:
            self.overlaps += 1
        self.last = seq
        return True

    @property
    def faults(self) -> int:
        return self.gaps + self.duplicates + self.overlaps + self.early


# -- what client processes send back ------------------------------------------


class ClientResult(msgspec.Struct, kw_only=True, array_like=True):
    """One websocket client's totals at the end of a run."""

    client: int
    race: str
    connected: bool
    messages: int = 0
    snapshots: int = 0
    last_seq: int = 0
    gaps: int = 0
    missed_seqs: int = 0
    duplicates: int = 0
    overlaps: int = 0
    resyncs: int = 0
    early: int = 0
    errors: int = 0
    error: str = ""
    last_at: float = 0.0
    """Unix time the last snapshot or delta arrived."""


class WorkerTick(msgspec.Struct, kw_only=True):
    """What one client process reports every interval (and once more at the end)."""

    worker: int
    wall: float
    """Unix time at the end of the interval."""
    connected: int
    failed: int
    messages: int
    """Websocket messages received in this interval."""
    received_bytes: int
    negative: int
    """Latencies below zero in this interval (clock disagreement), not recorded."""
    histogram: bytes
    """HDR histogram of this interval's latencies, encoded."""
    latency_sum_s: float = 0.0
    """Sum of this interval's latencies (for an exact mean)."""
    faults: int
    """Gaps + duplicates + overlaps + early deltas so far, across this worker's clients."""
    race_min_seq: dict[str, int]
    """Per race, the lowest last seq among this worker's connected clients."""
    race_max_seq: dict[str, int] = {}
    """Per race, the highest last seq among them: what a service under test reached."""
    final: bool = False
    clients: list[ClientResult] = []
    deltas: int = 0
    """Delta frames received in this interval (snapshots and replies not counted)."""
    delta_bytes: int = 0


tick_encoder = msgspec.msgpack.Encoder()
tick_decoder = msgspec.msgpack.Decoder(WorkerTick)


# -- aggregation ---------------------------------------------------------------


@dataclass(slots=True)
class Interval:
    """One second (by default) of the run, all workers merged."""

    t: float
    """Seconds since the start of the run at the end of the interval."""
    messages: int = 0
    received_bytes: int = 0
    histogram: HdrHistogram = field(default_factory=new_histogram)
    latency_sum_s: float = 0.0
    produced: int = 0
    folded: int = 0
    connected: int = 0
    """Clients connected at the latest tick of the interval."""
    races: int = 0
    """Races resumed by the end of the interval (the offered load of a ramp)."""


@dataclass
class Aggregate:
    """Merges the ticks of every client process into totals and a time series."""

    started: float
    """Unix time the measured run started."""
    interval_s: float = 1.0
    total: HdrHistogram = field(default_factory=new_histogram)
    total_sum_s: float = 0.0
    intervals: dict[int, Interval] = field(default_factory=dict)
    messages: int = 0
    received_bytes: int = 0
    deltas: int = 0
    delta_bytes: int = 0
    negative: int = 0
    connected: dict[int, int] = field(default_factory=dict)
    failed: dict[int, int] = field(default_factory=dict)
    faults: dict[int, int] = field(default_factory=dict)
    race_min_seq: dict[int, dict[str, int]] = field(default_factory=dict)
    race_max_seq: dict[int, dict[str, int]] = field(default_factory=dict)
    clients: list[ClientResult] = field(default_factory=list)
    finals: set[int] = field(default_factory=set)

    def _interval(self, wall: float) -> Interval:
        index = max(0, math.ceil((wall - self.started) / self.interval_s))
        slot = self.intervals.get(index)
        if slot is None:
            slot = self.intervals[index] = Interval(t=index * self.interval_s)
        return slot

    def add(self, tick: WorkerTick) -> None:
        hist = HdrHistogram.decode(tick.histogram) if tick.histogram else None
        slot = self._interval(tick.wall)
        if hist is not None and hist.get_total_count():
            self.total.add(hist)
            slot.histogram.add(hist)
        slot.latency_sum_s += tick.latency_sum_s
        self.total_sum_s += tick.latency_sum_s
        slot.messages += tick.messages
        slot.received_bytes += tick.received_bytes
        self.messages += tick.messages
        self.received_bytes += tick.received_bytes
        self.deltas += tick.deltas
        self.delta_bytes += tick.delta_bytes
        self.negative += tick.negative
        self.connected[tick.worker] = tick.connected
        self.failed[tick.worker] = tick.failed
        self.faults[tick.worker] = tick.faults
        self.race_min_seq[tick.worker] = tick.race_min_seq
        self.race_max_seq[tick.worker] = tick.race_max_seq
        slot.connected = self.clients_connected
        if tick.final:
            self.finals.add(tick.worker)
            self.clients.extend(tick.clients)

    def wire(self, wall: float, *, produced: int, folded: int) -> None:
        """Events seen on the broker in the interval ending at ``wall``."""
        slot = self._interval(wall)
        slot.produced += produced
        slot.folded += folded

    def running(self, wall: float, races: int) -> None:
        """Races resumed by ``wall``: the offered load of the interval."""
        slot = self._interval(wall)
        slot.races = max(slot.races, races)

    @property
    def clients_connected(self) -> int:
        return sum(self.connected.values())

    @property
    def clients_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def fault_count(self) -> int:
        return sum(self.faults.values())

    def min_seq(self) -> dict[str, int]:
        """Per race, the lowest last seq any connected client has reached."""
        out: dict[str, int] = {}
        for per_worker in self.race_min_seq.values():
            for race, seq in per_worker.items():
                out[race] = min(seq, out.get(race, seq))
        return out

    def max_seq(self) -> dict[str, int]:
        """Per race, the highest last seq any client has reached."""
        out: dict[str, int] = {}
        for per_worker in self.race_max_seq.values():
            for race, seq in per_worker.items():
                out[race] = max(seq, out.get(race, seq))
        return out

    def summary(self) -> dict[str, float | int]:
        """Latency over the whole run so far (a few ms: fine for a progress line)."""
        return latency_summary(self.total, sum_s=self.total_sum_s)

    def rates(self, intervals: int, *, now: float) -> dict[str, float]:
        """Per second over the last ``intervals`` whole intervals before ``now``: cheap."""
        current = math.ceil((now - self.started) / self.interval_s)
        picked = [self.intervals.get(i) for i in range(current - intervals, current)]
        slots = [slot for slot in picked if slot is not None]
        span = intervals * self.interval_s
        return {
            "produced": sum(slot.produced for slot in slots) / span,
            "folded": sum(slot.folded for slot in slots) / span,
            "messages": sum(slot.messages for slot in slots) / span,
        }

    def series(self) -> list[dict[str, float | int]]:
        """The time series for the report and the plot, one row per interval."""
        rows: list[dict[str, float | int]] = []
        for index in sorted(self.intervals):
            slot = self.intervals[index]
            lat = latency_summary(slot.histogram, sum_s=slot.latency_sum_s)
            rows.append(
                {
                    "t": round(slot.t, 3),
                    "events_per_s": round(slot.produced / self.interval_s, 1),
                    "folded_per_s": round(slot.folded / self.interval_s, 1),
                    "messages_per_s": round(slot.messages / self.interval_s, 1),
                    "latency_count": lat["count"],
                    "p50_ms": lat["p50"],
                    "p99_ms": lat["p99"],
                    "max_ms": lat["max"],
                    "clients": slot.connected,
                    "races": slot.races,
                }
            )
        return rows

    def load_curve(
        self, *, stepped: bool, until_s: float | None = None
    ) -> list[dict[str, float | int]]:
        """Throughput and latency against offered load: one point per step of a ramp
        (the intervals with the same number of races running merged), else one per
        interval; in order of offered events per second. ``until_s`` leaves out the
        intervals that begin after it (the drain, when nothing is offered any more)."""
        groups: dict[int, list[Interval]] = {}
        for index in sorted(self.intervals):
            slot = self.intervals[index]
            if until_s is not None and slot.t - self.interval_s >= until_s:
                continue
            groups.setdefault(slot.races if stepped else index, []).append(slot)
        points: list[dict[str, float | int]] = []
        for slots in groups.values():
            span = len(slots) * self.interval_s
            hist = new_histogram()
            for slot in slots:
                if slot.histogram.get_total_count():
                    hist.add(slot.histogram)
            lat = latency_summary(hist, sum_s=sum(slot.latency_sum_s for slot in slots))
            points.append(
                {
                    "races": max(slot.races for slot in slots),
                    "clients": max(slot.connected for slot in slots),
                    "seconds": round(span, 3),
                    "offered_events_per_s": round(sum(s.produced for s in slots) / span, 1),
                    "folded_per_s": round(sum(s.folded for s in slots) / span, 1),
                    "messages_per_s": round(sum(s.messages for s in slots) / span, 1),
                    "latency_count": lat["count"],
                    "p50_ms": lat["p50"],
                    "p99_ms": lat["p99"],
                }
            )
        points.sort(key=lambda p: (p["offered_events_per_s"], p["races"], p["clients"]))
        return points


def loss_summary(clients: Iterable[ClientResult], expected: Mapping[str, int]) -> dict[str, object]:
    """Gaps, duplicates and clients that never reached their race's last seq."""
    rows = list(clients)
    behind = [
        c for c in rows if c.connected and c.race in expected and c.last_seq < expected[c.race]
    ]
    faulty = [c for c in rows if c.gaps or c.duplicates or c.overlaps or c.early]
    return {
        "clients": len(rows),
        "connected": sum(1 for c in rows if c.connected),
        "gaps": sum(c.gaps for c in rows),
        "missed_seqs": sum(c.missed_seqs for c in rows),
        "duplicates": sum(c.duplicates for c in rows),
        "overlaps": sum(c.overlaps for c in rows),
        "early": sum(c.early for c in rows),
        "resyncs": sum(c.resyncs for c in rows),
        "errors": sum(c.errors for c in rows),
        "clients_with_faults": len(faulty),
        "clients_behind": len(behind),
        "lossless": not faulty and not behind and all(c.connected for c in rows),
    }


def client_rows(clients: Iterable[ClientResult]) -> list[dict[str, object]]:
    """Per-client lines of the report, in client order."""
    return [msgspec.structs.asdict(c) for c in sorted(clients, key=lambda c: c.client)]
