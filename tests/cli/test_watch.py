"""``chequered watch``: the view model with plain calls, then the Textual screen driven by its
own test pilot against a real Mosquitto, projector, producer and gateway during a replay."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.cli.watch import target
from chequered.contract import board, topics
from chequered.watch import view
from chequered.watch.client import GatewayUrlError, gateway_url
from chequered.watch.control import step_speed
from chequered.watch.view import Board
from tests.conftest import REPO
from tests.support.gateway import running_gateway
from tests.support.wait import until

SCREENSHOT = REPO / "docs" / "img" / "watch.svg"
UPDATE_SCREENSHOT = "CHEQUERED_UPDATE_SCREENSHOT"
"""Set to 1 to refresh docs/img/watch.svg from the replay test; otherwise the docs stay put."""
RACE = "imsa-2022-laguna-seca-race"
"""A real race, 2 h 42 min of racing: under 10 s of wall time at 1000x."""


def row(car: str, cls: str, position: int, class_position: int, **kw: Any) -> board.CarRow:
    return board.CarRow(
        car=car,
        cls=cls,
        position=position,
        class_position=class_position,
        team=f"Team {car}",
        **kw,
    )


MESSAGES = [
    board.RaceMessage(seq=3, t_ms=61_000, lap=1, category="flag", text="Full course yellow"),
    board.RaceMessage(
        seq=4, t_ms=62_000, lap=1, category="penalty", text="Drive through", cars=["7"]
    ),
]


def snapshot(seq: int = 5, **session: Any) -> board.Snapshot:
    fastest = {
        "P1": board.FastLap(car="1", lap_ms=81_000, lap=3),
        "GT": board.FastLap(car="7", lap_ms=90_500, lap=4),
    }
    return board.Snapshot(
        race="hand",
        seq=seq,
        messages=MESSAGES,
        session=board.SessionView(
            name="Hand Race",
            classes=["P1", "GT"],
            leader_laps=4,
            remaining_ms=3_600_000,
            fastest=fastest,
            speed=60.0,
            **session,
        ),
        cars=[
            row(
                "1",
                "P1",
                1,
                1,
                laps=4,
                last_lap_ms=81_000,
                best_lap_ms=81_000,
                last_is_overall_best=True,
                last_is_class_best=True,
                last_is_personal_best=True,
            ),
            row(
                "2",
                "P1",
                2,
                2,
                laps=4,
                gap_ms=1_234,
                interval_ms=1_234,
                last_lap_ms=82_000,
                best_lap_ms=81_900,
            ),
            row(
                "7",
                "GT",
                3,
                1,
                laps=3,
                gap_laps=1,
                interval_laps=1,
                best_lap_ms=90_500,
                last_lap_ms=91_000,
                last_is_personal_best=False,
                in_pit=True,
                pit_stops=1,
            ),
            row(
                "8",
                "GT",
                4,
                2,
                laps=2,
                gap_laps=2,
                interval_laps=1,
                class_gap_laps=1,
                class_interval_laps=1,
                status="retired",
            ),
        ],
    )


def frame(value: board.Snapshot | board.Delta) -> bytes:
    return board.encode(value)


# -- the view model ------------------------------------------------------------------


def test_rows_show_gaps_marks_and_pit_state_overall_and_in_class() -> None:
    b = Board(race="hand")
    assert b.on_frame(frame(snapshot())) == "snapshot"
    assert b.connection == "live"
    overall = view.rows(b)
    assert [r.car for r in overall] == ["1", "2", "7", "8"]
    first, second, gt, retired = overall
    assert first.cells["gap"] == "Leader" and first.cells["int"] == ""
    assert second.cells["gap"] == "+1.234" and second.cells["last"] == "1:22.000"
    assert gt.cells["gap"] == "+1 lap" and retired.cells["gap"] == "+2 laps"
    assert first.last_mark == "overall" and first.best_mark == "overall"
    assert gt.best_mark == "class" and gt.last_mark == ""
    assert gt.pit == "in" and gt.cells["pit"] == "IN PIT"
    assert retired.retired and retired.cells["status"] == "RETIRED"

    in_gt = view.rows(b, "GT")
    assert [r.car for r in in_gt] == ["7", "8"]
    assert in_gt[0].cells["gap"] == "Leader" and in_gt[1].cells["gap"] == "+1 lap"

    assert [(m.when, m.category, m.text) for m in view.messages(b)] == [
        ("0:01:02 L1", "PENALTY", "Drive through (#7)"),
        ("0:01:01 L1", "FLAG", "Full course yellow"),
    ]
    head = view.header(b)
    assert (head.name, head.flag_text, head.lap, head.remaining, head.replay) == (
        "Hand Race",
        "GREEN FLAG",
        "4",
        "1:00:00",
        "60x",
    )


def test_a_delta_that_does_not_chain_asks_for_a_fresh_snapshot() -> None:
    b = Board(race="hand")
    b.on_frame(frame(snapshot(seq=5)))
    moved = board.Delta(
        race="hand",
        seq=6,
        prev_seq=5,
        cars=[
            board.CarPatch(car="2", position=1, class_position=1, laps=5),
            board.CarPatch(car="1", position=2, class_position=2, laps=4),
        ],
    )
    assert b.on_frame(frame(moved)) == "applied"
    assert [r.car for r in view.rows(b)][:2] == ["2", "1"]
    assert b.on_frame(frame(moved)) == "stale"
    skipped = board.Delta(race="hand", seq=9, prev_seq=8, cars=[])
    assert b.on_frame(frame(skipped)) == "gap"
    assert (b.connection, b.gaps) == ("resync", 1)
    # Until the fresh snapshot, deltas are not applied; then it is live again.
    assert b.on_frame(frame(board.Delta(race="hand", seq=10, prev_seq=9))) == "stale"
    assert b.on_frame(frame(snapshot(seq=10, flag="fcy"))) == "snapshot"
    assert b.connection == "live" and view.header(b).flag_text == "FULL COURSE YELLOW"


def test_status_errors_and_other_races_frames() -> None:
    b = Board(race="hand")
    assert b.on_frame(b'{"type": "error", "error": "unknown_race", "detail": "x"}') == "other"
    assert b.connection == "unknown" and "not on air" in b.message
    assert b.on_frame(b'{"type": "status", "race": "hand", "state": "paused", "speed": 10}') == (
        "status"
    )
    b.on_frame(frame(snapshot()))
    assert view.header(b).replay == "paused (10x)"
    assert b.on_frame(frame(board.Delta(race="other", seq=6, prev_seq=1))) == "other"
    assert b.on_frame(b"not json") == "other"
    b.disconnected()
    assert view.header(b).connection == "RECONNECTING…"
    assert view.rows(b), "the last board stays on screen while reconnecting"


def test_spoiler_safe_hides_a_final_board_not_watched_arrive() -> None:
    final = snapshot(seq=9, finished=True, flag="chequered")
    b = Board(race="hand", spoiler_safe=True)
    b.on_frame(frame(final))
    assert b.covered and view.rows(b) == [] and view.messages(b) == []
    head = view.header(b)
    assert (head.lap, head.clock, head.flag_text) == ("-", "--:--:--", "SPOILER-SAFE")
    b.revealed = True
    assert [r.car for r in view.rows(b)] == ["1", "2", "7", "8"]
    # Watched running, the finish shows when it comes.
    watched = Board(race="hand", spoiler_safe=True)
    watched.on_frame(frame(snapshot(seq=8)))
    finish = board.Delta(
        race="hand",
        seq=9,
        prev_seq=8,
        session=board.session_patch(snapshot(seq=8).session, final.session),
    )
    assert watched.on_frame(frame(finish)) == "applied"
    assert not watched.covered and view.header(watched).flag_text == "CHEQUERED FLAG"
    # The provisional classification (the order at the flag) tells the result as well.
    provisional = Board(race="hand", spoiler_safe=True)
    provisional.on_frame(frame(snapshot(seq=9, provisional=True, flag="chequered")))
    assert provisional.covered and view.rows(provisional) == []
    # Not spoiler-safe: nothing is hidden.
    plain = Board(race="hand")
    plain.on_frame(frame(final))
    assert not plain.covered and view.rows(plain)


def test_speed_steps_and_gateway_urls() -> None:
    assert step_speed(60.0, up=True) == 120.0
    assert step_speed(60.0, up=False) == 30.0
    assert step_speed(1000.0, up=True) == 1000.0
    assert step_speed(0.1, up=False) == 0.1
    assert step_speed(None, up=False) == 600.0
    assert step_speed(45.0, up=True) == 60.0
    assert gateway_url("http://127.0.0.1:8080") == "ws://127.0.0.1:8080/ws"
    assert gateway_url("https://t.example/ws", "s3") == "wss://t.example/ws?token=s3"
    assert gateway_url("127.0.0.1:9000") == "ws://127.0.0.1:9000/ws"
    with pytest.raises(GatewayUrlError, match="ftp://x"):
        gateway_url("ftp://x")
    # The widget URL that `chequered demo` prints names the race.
    assert target("http://127.0.0.1:8080/?race=r1&class=GT", None, None)[1:] == ("r1", "GT")
    assert target("http://127.0.0.1:8080/?race=r1", "r2", None)[1:] == ("r2", None)


def test_a_bad_gateway_url_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from chequered.cli.main import main

    assert main(["watch", "--gateway", "ftp://nowhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "chequered watch: --gateway ftp://nowhere: not a gateway URL "
        "(ws://host:port/ws or http://host:port)"
    ]
    assert main(["watch", "Not A Race"]) == 2
    assert capsys.readouterr().err.startswith("chequered watch: RACE ")
    # Under pytest neither standard input nor output is a terminal.
    assert main(["watch", "some-race", "--no-spoilers"]) == 2
    assert capsys.readouterr().err.strip() == (
        "chequered watch: needs a terminal (standard input and output are not one)"
    )


# -- the screen, driven during a real replay -----------------------------------------


def _pipeline_missing() -> str | None:
    for module in ("consumers.projector.service", "simulator.live.producer"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # someone's work in progress must not fail this module
            return f"{module}: {exc}"
    return None


async def test_the_screen_watches_without_a_broker_and_reconnects(
    module_mosquitto: Mosquitto,
) -> None:
    from chequered.watch.app import WatchApp

    snap = msgspec_replace(snapshot(), race="wt-hand")
    async with bus.connect(module_mosquitto.url) as pub:
        await pub.publish(
            topics.topic("wt-hand", topics.STANDINGS), board.encode(snap), retain=True
        )
    first = contextlib.AsyncExitStack()
    async with first:
        gateway, port = await first.enter_async_context(running_gateway(module_mosquitto.url))
        await until(lambda: "wt-hand" in gateway.races, 10, "the retained snapshot")
        app = WatchApp(f"ws://127.0.0.1:{port}/ws", "wt-hand")
        async with app.run_test(size=(150, 40)) as pilot:
            await until(lambda: app.shown_cars() == ["1", "2", "7", "8"], 10, "the rows")
            assert app.cell("2", "gap") == "+1.234"
            assert app.feed_lines() == ["PENALTY Drive through (#7)", "FLAG Full course yellow"]
            assert "give --broker" in app.control_line
            await pilot.press("space")
            await until(lambda: "read-only" in app.control_line, 5, "the read-only line")
            await pilot.press("c")
            await until(lambda: app.shown_cars() == ["1", "2"], 5, "the P1 tab")
            await pilot.press("2")
            await until(lambda: app.shown_cars() == ["7", "8"], 5, "the GT tab")
            assert app.cell("7", "gap") == "Leader"
            await pilot.press("0")
            await until(lambda: len(app.shown_cars()) == 4, 5, "the All tab")
            await pilot.press("question_mark")
            await until(lambda: type(app.screen).__name__ == "HelpScreen", 5, "the help")
            await pilot.press("escape")
            await until(lambda: type(app.screen).__name__ != "HelpScreen", 5, "help closed")

            # With no race named, a second screen follows the first race on air.
            other = WatchApp(f"ws://127.0.0.1:{port}/ws")
            async with other.run_test(size=(150, 40)):
                await until(lambda: other.board.connection == "live", 10, "a race on air")
                assert other.board.race in gateway.races
                await until(lambda: other.shown_cars(), 5, "its rows")
            # --class: the screen opens on that class's tab.
            on_gt = WatchApp(f"ws://127.0.0.1:{port}/ws", "wt-hand", cls="GT")
            async with on_gt.run_test(size=(150, 40)):
                await until(lambda: on_gt.shown_cars() == ["7", "8"], 10, "the GT tab")
                assert on_gt.cell("7", "gap") == "Leader"

            # The gateway goes away: the board stays, marked as reconnecting; it comes back.
            await first.aclose()
            await until(lambda: app.board.connection == "reconnecting", 10, "reconnecting")
            assert app.shown_cars() == ["1", "2", "7", "8"]
            await until(lambda: view.header(app.board).connection == "RECONNECTING…", 5, "said")
            async with running_gateway(module_mosquitto.url, port=port):
                await until(lambda: app.board.connection == "live", 30, "live again")
            await pilot.press("q")


async def test_the_screen_without_spoilers_covers_a_finished_race(
    module_mosquitto: Mosquitto,
) -> None:
    from chequered.watch.app import WatchApp

    snap = msgspec_replace(snapshot(finished=True, flag="chequered"), race="wt-done")
    async with bus.connect(module_mosquitto.url) as pub:
        await pub.publish(
            topics.topic("wt-done", topics.STANDINGS), board.encode(snap), retain=True
        )
    async with running_gateway(module_mosquitto.url) as (gateway, port):
        await until(lambda: "wt-done" in gateway.races, 10, "the retained snapshot")
        app = WatchApp(f"ws://127.0.0.1:{port}/ws", "wt-done", spoilers=False)
        async with app.run_test(size=(150, 40)) as pilot:
            await until(lambda: app.board.snapshot is not None, 10, "the board")
            await until(lambda: "Spoiler-safe" in app.drawn_notice, 5, "the cover drawn")
            assert app.shown_cars() == [] and app.feed_lines() == []
            await pilot.press("r")
            await until(lambda: app.shown_cars() == ["1", "2", "7", "8"], 5, "the result")
            await pilot.press("q")


def msgspec_replace(snap: board.Snapshot, **changes: Any) -> board.Snapshot:
    import msgspec

    return msgspec.structs.replace(snap, **changes)


@pytest.mark.slow
@pytest.mark.skipif(_pipeline_missing() is not None, reason=str(_pipeline_missing()))
async def test_the_screen_follows_and_controls_a_real_replay(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from chequered.cli.live import load_timeline
    from chequered.watch.app import WatchApp
    from consumers.projector.service import run_projector
    from simulator.live.producer import ReplaySpec, run_producer
    from simulator.recording import io as recording_io

    race, events = load_timeline(RACE, seed=0)
    recording = recording_io.load(recording_io.find(RACE))
    official = [r.number for r in sorted(recording.classification, key=lambda r: r.position)]
    stop = asyncio.Event()
    ready = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_projector(mosquitto.url, client_id="watch-test-projector", stop=stop, ready=ready)
        )
    ]
    try:
        await asyncio.wait_for(ready.wait(), 10)
        # 100x while the test pauses and seeks (the whole pipeline shares this process and
        # two cores with the screen), 1000x to the finish.
        spec = ReplaySpec(race, events, speed=100.0, paused=True)
        tasks.append(asyncio.create_task(run_producer(mosquitto.url, [spec], stop=stop)))
        async with running_gateway(mosquitto.url) as (gateway, port):
            await until(lambda: race in gateway.races, 10, "the producer's status")
            app = WatchApp(gateway_url(f"http://127.0.0.1:{port}"), race, broker=mosquitto.url)
            async with app.run_test(size=(160, 50)) as pilot:
                b = app.board

                def state() -> str | None:
                    return b.status.state if b.status else None

                def at_speed(speed: float) -> Callable[[], bool]:
                    return lambda: b.status is not None and b.status.speed == speed

                await until(lambda: b.connection == "live" and app.shown_cars(), 20, "the grid")
                assert state() == "paused"
                await pilot.press("space")  # resume
                await until(lambda: state() == "running", 10, "running")
                # The help over a running race: the screen under it keeps drawing.
                await pilot.press("question_mark")
                await until(lambda: type(app.screen).__name__ == "HelpScreen", 5, "the help")
                drawn = app.redraws
                await until(lambda: app.redraws > drawn + 2, 10, "redraws under the help")
                await pilot.press("escape")
                await pilot.press("space")  # pause
                await until(lambda: state() == "paused", 10, "paused")
                await until(lambda: app.control_line == "pause: ok", 5, "the reply shown")
                # Ten laps on, still paused: the race up to there as fast as possible.
                assert b.snapshot is not None
                laps_paused = b.snapshot.session.leader_laps
                await pilot.press("right_curly_bracket")
                await until(
                    lambda: (
                        b.snapshot is not None and b.snapshot.session.leader_laps >= laps_paused + 9
                    ),
                    20,
                    "the seek ten laps on",
                )
                assert state() == "paused"

                def board_now() -> board.Snapshot | None:
                    # Looked up each time: the gateway may replace a race's cache entry.
                    entry = gateway.races.get(race)
                    return entry.snapshot if entry is not None else None

                await until(
                    lambda: (
                        (now := board_now()) is not None
                        and b.snapshot is not None
                        and b.snapshot.seq == now.seq
                    ),
                    10,
                    "caught up",
                )
                mid = board_now()
                assert mid is not None
                want = [r.car for r in mid.cars]
                await until(lambda: app.shown_cars() == want, 5, "the table drawn")
                leader = mid.cars[0]
                assert app.cell(leader.car, "gap") == "Leader"
                assert app.cell(leader.car, "laps") == str(leader.laps)
                assert app.cell(mid.cars[1].car, "gap") == view.gap_text(
                    mid.cars[1].gap_ms, mid.cars[1].gap_laps
                )
                # A class tab: only that class, gaps to the class leader.
                first_cls = mid.session.classes[0]
                await pilot.press("1")
                in_class = [r.car for r in mid.cars if r.cls == first_cls]
                await until(lambda: app.shown_cars() == in_class, 5, "the class tab")
                assert app.cell(in_class[0], "gap") == "Leader"
                await pilot.press("0")
                await until(lambda: app.shown_cars() == want, 5, "the All tab")
                shot = app.save_screenshot("watch.svg", str(tmp_path))
                if os.environ.get(UPDATE_SCREENSHOT) == "1":
                    shutil.copyfile(shot, SCREENSHOT)

                # Speed down one step, then one lap back: the documented commands.
                await pilot.press("minus")
                await until(lambda: b.status is not None and b.status.speed == 60.0, 10, "60x")
                laps_before = mid.session.leader_laps
                await pilot.press("left_square_bracket")
                await until(
                    lambda: b.snapshot is not None and b.snapshot.session.leader_laps < laps_before,
                    20,
                    "the seek back",
                )
                assert "seek to lap" in app.control_line and "ok" in app.control_line

                # To the end: the official classification on screen.
                for faster in (120.0, 300.0, 600.0, 1000.0):
                    await pilot.press("plus")
                    await until(at_speed(faster), 10, f"{faster:g}x")
                await pilot.press("space")
                await until(
                    lambda: b.snapshot is not None and b.snapshot.session.finished, 60, "the finish"
                )
                await until(lambda: app.shown_cars() == official, 10, "the classification")
                assert "CHEQUERED" in view.header(b).flag_text
                assert b.gaps == 0 and app.redraws > 2
                await pilot.press("q")
            assert app.return_value == 0
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def test_control_keys_say_when_no_broker_or_no_producer_answers(
    module_mosquitto: Mosquitto,
) -> None:
    from chequered.contract import control as commands
    from chequered.watch.control import Controller

    said: list[str] = []
    stop = asyncio.Event()
    # No broker there: one line says so, and the keys wait for it.
    nowhere = Controller("mqtt://127.0.0.1:1", "wt-none", said.append, reconnect_s=30)
    task = asyncio.create_task(nowhere.run(stop))
    await until(lambda: any(line.startswith("broker: ") for line in said), 10, "the error")
    assert any("control keys wait for it" in line for line in said)
    # A broker but no producer: the command waits, then says no reply came.
    said.clear()
    quiet = Controller(module_mosquitto.url, "wt-none", said.append, reply_timeout_s=0.2)
    task2 = asyncio.create_task(quiet.run(stop))
    quiet.send(commands.Pause())
    await until(lambda: len(said) >= 2, 10, "the timeout")
    assert said[0] == "pause: waiting for the producer of wt-none…"
    assert said[1] == "pause: no reply within 0.2 s; is a producer replaying wt-none?"
    stop.set()
    await asyncio.wait_for(asyncio.gather(task, task2), 10)
