"""The projector against a real Mosquitto: events in over MQTT, standings out over MQTT.

Events are published the way the producer publishes them (QoS 1, single
events and batches); a subscriber reads the standings, deltas and dead
letters. Every wait is on a message or a condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import msgspec
import pytest

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import board, topics
from chequered.contract.deadletter import DeadLetter
from chequered.contract.events import Batch, Event, Flag, Lap, Reset, encode
from consumers.metrics import Registry
from consumers.projector import checkpoints, intake
from consumers.projector.service import Projector, ProjectorSettings, run_projector
from consumers.standings import checkpoint
from consumers.standings.fold import delta, new_race, snapshot
from simulator.recording.io import load
from simulator.timeline.timing_replay import replay
from tests.conftest import REPLAYS
from tests.consumers.standings.test_fold import Script, fold

WAIT_S = 20.0
FAST = ProjectorSettings(reconnect_min_s=0.05, reconnect_max_s=0.2)


@cache
def _lime_rock(race: str) -> list[Event]:
    return replay(load(REPLAYS / "imsa-2021-lime-rock-race.json"), race=race)


# -- a reader of what the projector publishes ---------------------------------


@dataclass
class Reader:
    """Every standings, delta and dead-letter message, in arrival order."""

    messages: list[bus.Message] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshots(self, race: str) -> list[board.Snapshot]:
        topic = topics.topic(race, topics.STANDINGS)
        return [board.decode_snapshot(m.payload) for m in self.messages if m.topic == topic]

    def deltas(self, race: str) -> list[board.Delta]:
        topic = topics.topic(race, topics.STANDINGS_DELTA)
        return [board.decode_delta(m.payload) for m in self.messages if m.topic == topic]

    def dead(self, race: str) -> list[DeadLetter]:
        topic = topics.topic(race, topics.DEAD_LETTER)
        return [intake.decode_dead_letter(m.payload) for m in self.messages if m.topic == topic]

    def last_seq(self, race: str) -> int:
        """Seq of the latest board published for the race (snapshot or delta), 0 if none."""
        seqs = [s.seq for s in self.snapshots(race)] + [d.seq for d in self.deltas(race)]
        return max(seqs, default=0)

    async def until(self, what: str, condition: Callable[[], bool]) -> None:
        async def wait() -> None:
            while not condition():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), WAIT_S)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def until_seq(self, race: str, seq: int) -> board.Snapshot:
        await self.until(
            f"{race} snapshot at seq {seq}",
            lambda: any(s.seq == seq for s in self.snapshots(race)),
        )
        return next(s for s in self.snapshots(race) if s.seq == seq)


@contextlib.asynccontextmanager
async def reading(url: str) -> AsyncIterator[Reader]:
    reader = Reader()
    async with bus.connect(url) as client:
        await client.subscribe(topics.all_races(topics.STANDINGS))
        await client.subscribe(topics.all_races(topics.STANDINGS_DELTA))
        await client.subscribe(topics.all_races(topics.DEAD_LETTER))

        async def pump() -> None:
            async for message in client.messages():
                reader.messages.append(message)
                reader.changed.set()

        task = asyncio.create_task(pump())
        try:
            yield reader
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def projecting(
    url: str,
    *,
    checkpoint_dir: Path | None = None,
    client_id: str = "test-projector",
    registry: Registry | None = None,
    settings: ProjectorSettings = FAST,
    metrics_port: int | None = None,
) -> AsyncIterator[asyncio.Task[None]]:
    """A running projector; stopped cleanly on exit unless the test cancelled it."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_projector(
            url,
            checkpoint_dir=checkpoint_dir,
            client_id=client_id,
            stop=stop,
            ready=ready,
            registry=registry,
            settings=settings,
            metrics_port=metrics_port,
        )
    )
    ready_wait = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, ready_wait}, timeout=WAIT_S, return_when="FIRST_COMPLETED")
    if task in done:
        ready_wait.cancel()
        task.result()  # raises what stopped it
    assert ready_wait in done, "projector not subscribed in time"
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, WAIT_S)


async def publish(url: str, events: list[Event], *, batch: int = 1) -> None:
    """Publish events the way the producer does: QoS 1, in order, single or in batches."""
    async with bus.connect(url) as client:
        for i in range(0, len(events), batch):
            chunk = events[i : i + batch]
            race = chunk[0].race
            message = chunk[0] if len(chunk) == 1 else Batch(race=race, events=chunk)
            await client.publish(topics.topic(race, topics.EVENTS), encode(message), qos=1)


async def publish_raw(url: str, items: list[tuple[str, bytes]]) -> None:
    async with bus.connect(url) as client:
        for topic, payload in items:
            await client.publish(topic, payload, qos=1)


def check_chain(reader: Reader, race: str) -> board.Snapshot:
    """Snapshots and deltas of a race, in arrival order, rebuild the last snapshot.

    Every delta applies on the seq of the message published just before it.
    """
    snapshot_topic = topics.topic(race, topics.STANDINGS)
    delta_topic = topics.topic(race, topics.STANDINGS_DELTA)
    current: board.Snapshot | None = None
    deltas = 0
    for message in reader.messages:
        if message.topic == snapshot_topic:
            snap = board.decode_snapshot(message.payload)
            if current is not None:
                assert snap.seq >= current.seq
                # A snapshot states the same board the deltas arrived at.
                if snap.seq == current.seq:
                    assert snap == current
            current = snap
        elif message.topic == delta_topic:
            change = board.decode_delta(message.payload)
            assert current is not None, "a delta before any snapshot"
            assert change.prev_seq == current.seq, (change.prev_seq, current.seq)
            current = board.apply_delta(current, change)
            deltas += 1
    assert current is not None and deltas > 0
    return current


# -- the tests ---------------------------------------------------------------------


async def test_a_race_in_singles_and_batches_gives_the_folded_standings(
    mosquitto: Mosquitto,
) -> None:
    events = _lime_rock("lime-rock")
    expected = snapshot(fold(events))
    registry = Registry("test")
    async with reading(mosquitto.url) as reader, projecting(mosquitto.url, registry=registry):
        # The start one by one, the rest as the producer batches a fast replay.
        await publish(mosquitto.url, events[:300])
        await publish(mosquitto.url, events[300:], batch=50)
        final = await reader.until_seq("lime-rock", len(events))
    assert final == expected
    assert check_chain(reader, "lime-rock") == expected
    # Coalesced: never more deltas than messages in.
    values = registry.values()
    assert values["deltas_out"] <= values["messages_in"] < len(events)
    assert values["applied"] == len(events)
    assert (values["duplicates"], values["gaps"], values["dead_letters"]) == (0, 0, 0)

    # A reader that comes later gets the retained snapshot at the last seq.
    async with reading(mosquitto.url) as late:
        await late.until("the retained snapshot", lambda: bool(late.snapshots("lime-rock")))
        retained = late.snapshots("lime-rock")[0]
    assert retained.seq == len(events) and retained == expected


async def test_a_duplicate_is_dropped_and_a_missing_seq_counted(mosquitto: Mosquitto) -> None:
    s = Script(race="holes")
    s.lap("1", 1, 90_000)
    s.lap("2", 1, 91_000)
    s.lap("3", 1, 92_000)
    s.lap("1", 2, 180_000)
    one, two, three, four, five = s.events
    registry = Registry("test")
    async with reading(mosquitto.url) as reader, projecting(mosquitto.url, registry=registry):
        await publish(mosquitto.url, [one, two, three, three, five])
        snap = await reader.until_seq("holes", 5)
        await reader.until("the gap notice", lambda: bool(reader.dead("holes")))
    assert snap.session.gaps == 1
    assert snap == snapshot(fold([one, two, three, five]))
    values = registry.values()
    assert (values["duplicates"], values["gaps"], values["applied"]) == (1, 1, 4)
    notice = reader.dead("holes")[0]
    assert notice.seq == 5 and "seqs 4..4 missing" in notice.reason
    assert four.seq == 4


async def test_bad_payloads_go_to_the_dead_letter_topic_and_change_nothing(
    mosquitto: Mosquitto,
) -> None:
    s = Script(race="bad")
    s.lap("1", 1, 90_000)
    good = list(s.events)
    events_topic = topics.topic("bad", topics.EVENTS)
    nxt = len(good) + 1
    unknown_car = encode(
        Lap(
            race="bad",
            seq=nxt,
            t_ms=95_000,
            car="99",
            lap=1,
            lap_ms=None,
            sectors_ms=[None],
            position=1,
            driver="x",
        )
    )
    bad: list[tuple[str, bytes, str]] = [
        (events_topic, b"not json at all", "invalid payload"),
        (events_topic, b'{"kind": "lap", "race": "bad"}', "invalid payload"),
        (events_topic, b'{"kind": "teleport", "race": "bad", "seq": 3, "t_ms": 1}', "invalid"),
        (events_topic, b'{"kind": "flag", "race": "bad", "seq": "3", "t_ms": 1}', "invalid"),
        (events_topic, b"[" * 20_000, "bytes is more than"),
        (events_topic, unknown_car, "car 99 is not entered"),
        (
            events_topic,
            encode(Flag(race="bad", seq=nxt + 10**6, t_ms=1, flag="red")),
            "ahead",
        ),
        (
            events_topic,
            encode(Flag(race="other", seq=nxt, t_ms=1, flag="red")),
            "on the topic of race bad",
        ),
    ]
    ghost = (
        topics.topic("ghost", topics.EVENTS),
        encode(Flag(race="ghost", seq=1, t_ms=0, flag="fcy")),
    )
    registry = Registry("test")
    settings = ProjectorSettings(max_payload_bytes=10_000)
    async with (
        reading(mosquitto.url) as reader,
        projecting(mosquitto.url, registry=registry, settings=settings),
    ):
        await publish(mosquitto.url, good)
        before = await reader.until_seq("bad", len(good))
        await publish_raw(mosquitto.url, [(t, p) for t, p, _ in bad] + [ghost])
        await reader.until("every dead letter", lambda: len(reader.dead("bad")) == len(bad))
        await reader.until("the unknown race's", lambda: bool(reader.dead(intake.UNKNOWN_RACE)))
        # Still folding, and from where it was: the next seq is not a gap.
        s.lap("2", 1, 96_000)
        await publish(mosquitto.url, s.events[-1:])
        after = await reader.until_seq("bad", nxt)
    for letter, (_, payload, reason) in zip(reader.dead("bad"), bad, strict=True):
        assert reason in letter.reason, (reason, letter.reason)
        assert letter.topic == events_topic
        assert letter.truncated == (len(payload) > intake.DEAD_LETTER_EXCERPT_BYTES)
    assert "unknown" in reader.dead(intake.UNKNOWN_RACE)[0].reason
    assert after == snapshot(fold(s.events)) and after.session.gaps == 0
    assert before.cars == snapshot(fold(good)).cars
    assert registry.values()["dead_letters"] == len(bad) + 1


async def interrupted(
    url: str,
    reader: Reader,
    events: list[Event],
    ckpt: Path,
    first: Registry,
    second: Registry,
    *,
    batch: int,
) -> board.Snapshot:
    """Fold a race with the projector cancelled mid-stream and started again.

    The first half is folded; the projector is cancelled while the next quarter
    is arriving; the last quarter is published while no projector runs.
    """
    race = events[0].race
    half, late = len(events) // 2, len(events) * 3 // 4
    async with projecting(url, checkpoint_dir=ckpt, registry=first) as task:
        await publish(url, events[:half], batch=batch)
        await reader.until("the first half folded", lambda: reader.last_seq(race) >= half)
        publisher = asyncio.create_task(publish(url, events[half:late], batch=batch))
        await reader.until("folding the third quarter", lambda: reader.last_seq(race) > half)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait_for(publisher, WAIT_S)
    await publish(url, events[late:], batch=batch)
    assert half < first.values()["applied"] <= late
    async with projecting(url, checkpoint_dir=ckpt, registry=second):
        return await reader.until_seq(race, len(events))


async def test_a_restart_resumes_from_the_checkpoint_and_ends_the_same(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    events = _lime_rock("restart")
    first, second = Registry("first"), Registry("second")
    async with reading(mosquitto.url) as reader:
        final = await interrupted(
            mosquitto.url, reader, events, tmp_path / "ckpt", first, second, batch=20
        )
    assert final == snapshot(fold(events))
    # Resumed from the checkpoint, not from seq 1; nothing applied twice.
    assert first.values()["applied"] + second.values()["applied"] == len(events)
    assert second.values()["gaps"] == 0


async def test_a_kill_between_checkpoints_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed without a last checkpoint: what was acknowledged is in the checkpoint,
    the rest the broker redelivers to the persistent session."""
    monkeypatch.setattr(Projector, "close", lambda self: None)  # as if SIGKILLed
    events = _lime_rock("killed")
    first, second = Registry("first"), Registry("second")
    async with reading(mosquitto.url) as reader:
        final = await interrupted(
            mosquitto.url, reader, events, tmp_path / "ckpt", first, second, batch=10
        )
    assert final == snapshot(fold(events))
    assert second.values()["gaps"] == 0
    assert second.values()["applied"] < len(events)
    assert first.values()["applied"] + second.values()["applied"] >= len(events)


async def test_a_broker_restart_is_survived_and_the_snapshot_retained_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    s = Script(race="outage")
    s.lap("1", 1, 90_000)
    registry = Registry("test")
    async with projecting(mosquitto.url, checkpoint_dir=tmp_path, registry=registry):
        async with reading(mosquitto.url) as reader:
            await publish(mosquitto.url, s.events)
            await reader.until_seq("outage", 2)
        mosquitto.stop()
        mosquitto.start()  # same port, no persistence: retained messages and sessions gone
        async with reading(mosquitto.url) as reader:
            # The projector republishes every race's snapshot when it reconnects.
            snap = await reader.until_seq("outage", 2)
            s.lap("2", 1, 91_000)
            await publish(mosquitto.url, s.events[-1:])
            after = await reader.until_seq("outage", 3)
    assert snap == snapshot(fold(s.events[:2]))
    assert after == snapshot(fold(s.events))
    assert registry.values()["reconnects"] >= 1


async def test_metrics_are_served_in_prometheus_text(mosquitto: Mosquitto) -> None:
    from broker.mosquitto import free_port

    port = free_port()
    s = Script(race="metered")
    async with reading(mosquitto.url) as reader, projecting(mosquitto.url, metrics_port=port):
        await publish(mosquitto.url, s.events)
        await reader.until_seq("metered", 1)
        text = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
    assert "chequered_projector_applied_total 1.0\n" in text
    assert "# TYPE chequered_projector_races gauge" in text
    assert "chequered_projector_connected 1.0\n" in text


def test_the_in_memory_fold_matches_a_fresh_state() -> None:
    # The fixture race used above folds to a board with every car on it.
    assert len(snapshot(fold(_lime_rock("x"))).cars) == len(
        {e.number for e in load(REPLAYS / "imsa-2021-lime-rock-race.json").entries}
    )
    assert snapshot(new_race("x")).cars == []


async def test_the_project_command_folds_and_stops_cleanly_on_sigterm(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from broker.mosquitto import free_port

    port = free_port()
    ckpt = tmp_path / "ckpt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "chequered",
        "--log-level",
        "info",
        "project",
        "--broker",
        mosquitto.url,
        "--checkpoint-dir",
        str(ckpt),
        "--client-id",
        "cli-projector",
        "--metrics-port",
        str(port),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        # Subscribed once it says so; events published before would not be queued for it.
        async def subscribed() -> None:
            assert proc.stderr is not None
            while "projector_subscribed" not in (log[-1] if log else ""):
                line = await proc.stderr.readline()
                assert line, "the projector exited: " + "".join(log)
                log.append(line.decode())

        await asyncio.wait_for(subscribed(), WAIT_S)
        s = Script(race="cli")
        s.lap("1", 1, 90_000)
        async with reading(mosquitto.url) as reader:
            await publish(mosquitto.url, s.events)
            snap = await reader.until_seq("cli", 2)
        assert snap == snapshot(fold(s.events))
        metrics = await asyncio.to_thread(
            lambda: (
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
                .read()
                .decode()
            )
        )
        assert "chequered_projector_applied_total 2.0\n" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), WAIT_S)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert (ckpt / "cli.ckpt").exists()


# -- the intake decisions, as plain calls ------------------------------------------


def test_intake_gives_the_events_of_a_single_or_a_batch() -> None:
    s = Script(race="pure")
    s.lap("1", 1, 90_000)
    topic = topics.topic("pure", topics.EVENTS)
    assert intake.parse(topic, encode(s.events[0])) == s.events[:1]
    batch = Batch(race="pure", events=s.events)
    assert intake.parse(topic, encode(batch)) == s.events


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "race"),
    [
        ("chequered/v2/pure/standings", b"{}", "not an events topic", None),
        ("elsewhere/pure/events", b"{}", "not an events topic", None),
        ("chequered/v2/pure/events", b"\xff\xfe", "invalid payload", "pure"),
        ("chequered/v2/pure/events", b"{" * 50, "invalid payload", "pure"),
        ("chequered/v2/pure/events", b" " * 5000, "bytes is more than", "pure"),
        (
            "chequered/v2/pure/events",
            b'{"kind": "batch", "race": "pure", "events": []}',
            "invalid payload",
            "pure",
        ),
        (
            "chequered/v2/pure/events",
            encode(Batch(race="other", events=[Flag(race="other", seq=1, t_ms=0, flag="red")])),
            "batch of race other",
            "pure",
        ),
        (
            "chequered/v2/pure/events",
            encode(Batch(race="pure", events=[Flag(race="other", seq=1, t_ms=0, flag="red")])),
            "event seq 1 of race other",
            "pure",
        ),
        (
            "chequered/v2/pure/events",
            encode(Batch(race="pure", events=[Flag(race="pure", seq=1, t_ms=0, flag="red")] * 4)),
            "batch of 4 events",
            "pure",
        ),
    ],
)
def test_intake_names_what_is_wrong(
    topic: str, payload: bytes, reason: str, race: str | None
) -> None:
    with pytest.raises(intake.BadPayload, match=reason) as info:
        intake.parse(topic, payload, max_bytes=4000, max_events=3)
    assert info.value.race == race


def test_dead_letters_go_to_the_race_only_when_it_is_folded() -> None:
    assert intake.dead_letter_topic("known", {"known"}) == "chequered/v2/known/deadletter"
    assert intake.dead_letter_topic("made-up", {"known"}) == "chequered/v2/_/deadletter"
    assert intake.dead_letter_topic(None, {"known"}) == "chequered/v2/_/deadletter"
    letter = intake.decode_dead_letter(
        intake.dead_letter("why", "t", b"x" * 2000, race="r", seq=3, wall=1.5)
    )
    assert (letter.reason, letter.topic, letter.race, letter.seq, letter.wall) == (
        "why",
        "t",
        "r",
        3,
        1.5,
    )
    assert letter.truncated and len(letter.payload) == intake.DEAD_LETTER_EXCERPT_BYTES


# -- rows rebuilt only where they can have changed ---------------------------------


def _messages(
    events: list[Event], race: str, rng: random.Random
) -> Iterator[tuple[list[Event], bus.Message]]:
    """The events as MQTT messages: mostly one each, now and then a batch of 2 to 19."""
    topic = topics.topic(race, topics.EVENTS)
    i = 0
    while i < len(events):
        size = 1 if rng.random() < 0.7 else rng.randrange(2, 20)
        chunk = events[i : i + size]
        i += size
        payload = encode(chunk[0]) if size == 1 else encode(Batch(race=race, events=chunk))
        yield chunk, bus.Message(topic, payload)


def _stream(events: list[Event], race: str) -> list[Event]:
    """A race with redeliveries, a missing seq, a reset half-way and the race again."""
    rng = random.Random(11)
    out: list[Event] = []
    for i, event in enumerate(events):
        if i == len(events) // 3:
            continue  # a gap
        out.append(event)
        if i % 17 == 0:
            out.append(events[rng.randrange(0, i + 1)])
    half = len(events) // 2
    reset = Reset(race=race, seq=events[-1].seq + 1, t_ms=events[-1].t_ms, target_ms=0)
    again = [msgspec.structs.replace(e, seq=reset.seq + e.seq) for e in events[:half]]
    return [*out, reset, *again]


@pytest.mark.parametrize(
    "recording", ["imsa-2021-lime-rock-race", "imsa-2022-laguna-seca-qualifying"]
)
def test_publications_are_those_of_the_whole_board_rebuilt_every_flush(recording: str) -> None:
    # The projector rebuilds only the rows that can have changed; what it publishes
    # must be what rebuilding the whole board and diffing it gives, flush after flush.
    race = "rows"
    events = _stream(replay(load(REPLAYS / f"{recording}.json"), race=race), race)
    # A delta per flush: no rate limit on snapshots, no coalescing window on deltas.
    projector = Projector(settings=ProjectorSettings(snapshot_max_hz=1e9, delta_window_s=0))
    previous: board.Snapshot | None = None
    published = 0
    for chunk, message in _messages(events, race, random.Random(5)):
        projector.handle(message)
        dirty = race in projector.dirty  # false when only duplicates came
        out = projector.publications()
        current = snapshot(projector.standings.races[race])
        change = delta(previous, current) if previous is not None else None
        expected: list[tuple[str, bytes, bool]] = []
        if not dirty:
            pass
        elif change is None:
            expected.append((topics.topic(race, topics.STANDINGS), board.encode(current), True))
        elif change.cars or change.session is not None:
            expected.append(
                (topics.topic(race, topics.STANDINGS_DELTA), board.encode(change), False)
            )
            expected.append((topics.topic(race, topics.STANDINGS), board.encode(current), True))
        assert out == expected, f"after seq {chunk[-1].seq}"
        if out:
            previous = current
            published += len(out)
    # Every flush that changed something published (the comparison above was not idle).
    assert published > len(events) // 10


@pytest.mark.parametrize(
    "recording", ["imsa-2021-lime-rock-race", "imsa-2022-laguna-seca-qualifying"]
)
def test_checkpoint_patches_lead_to_the_state_folded(recording: str, tmp_path: Path) -> None:
    # Records after the first of a file hold only the cars changed since the record
    # before; read back, the file must be the folded state exactly, flush after
    # flush, through gaps, redeliveries, a reset, and a restart half-way.
    race = "patched"
    events = _stream(replay(load(REPLAYS / f"{recording}.json"), race=race), race)
    path = checkpoints.path_for(tmp_path, race)
    projector = Projector(checkpoint_dir=tmp_path)
    patches = restarts = 0
    for chunk, message in _messages(events, race, random.Random(7)):
        projector.handle(message)
        before = path.stat().st_size if path.exists() else 0
        projector.save_checkpoints()
        written = path.read_bytes()[before:]
        patches += written.startswith(checkpoint.PATCH_MAGIC)
        assert checkpoints.load(path) == projector.standings.races[race], f"seq {chunk[-1].seq}"
        if not restarts and chunk[-1].seq >= events[len(events) // 4].seq:
            projector = Projector(checkpoint_dir=tmp_path)  # a restart: the file compacted
            assert projector.standings.races[race] == checkpoints.load(path)
            restarts += 1
    assert patches > len(events) // 10 and restarts == 1
    whole = len(checkpoint.record(projector.standings.races[race]))
    car = next(iter(projector.standings.races[race].cars))
    assert len(checkpoint.record(projector.standings.races[race], [car])) < whole / 4


def test_a_patch_with_no_whole_record_before_it_is_refused(tmp_path: Path) -> None:
    state = new_race("orphan")
    path = checkpoints.path_for(tmp_path, "orphan")
    path.write_bytes(checkpoint.record(state, []))
    with pytest.raises(checkpoint.CheckpointError, match="no whole record before it"):
        checkpoints.load(path)
