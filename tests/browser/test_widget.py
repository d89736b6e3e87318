"""The <live-leaderboard> widget in headless Chromium, fed by the real gateway.

First with hand-published standings (rendering, class tabs, places changing,
flags, best laps, retirements, phone width), then the widget's own gap
detection and reconnection against a scripted websocket server, then (when
the producer and the projector are there) a whole replay of Monterey 2013.
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import board, control, topics
from tests.conftest import REPO
from tests.consumers.gateway.test_server import (
    CLASSES,
    ENTRIES,
    Standings,
    publish_delta,
    publish_snapshot,
    publish_status,
    running_gateway,
    until,
)

playwright_api = pytest.importorskip("playwright.async_api")
async_playwright = playwright_api.async_playwright
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
UI_WAIT_MS = 10_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed"),
]

BOARD = "live-leaderboard"
ROWS = f"{BOARD} tbody tr"


@asynccontextmanager
async def chromium_page(width: int = 1280, height: int = 900) -> AsyncIterator[Any]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(UI_WAIT_MS)
            expect.set_options(timeout=UI_WAIT_MS)
            yield page
        finally:
            await browser.close()


async def row_order(page: Any) -> list[str]:
    cars: list[str] = await page.locator(ROWS).evaluate_all("rows => rows.map(r => r.dataset.car)")
    return cars


async def style_of(page: Any, selector: str, prop: str) -> str:
    value: str = await page.locator(selector).first.evaluate(f"el => getComputedStyle(el).{prop}")
    return value


async def test_widget_renders_standings_tabs_and_changes(
    module_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    race = Standings("wb-hand", seq=5)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        await publish_status(pub, "wb-hand", "running", speed=10.0, t_ms=5000)
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: "wb-hand" in gateway.races, "the retained snapshot")
            await page.goto(f"http://127.0.0.1:{port}/?race=wb-hand")
            element = page.locator(BOARD)
            await expect(element).to_have_attribute("data-state", "live")
            await expect(element).to_have_attribute("data-seq", "5")
            await expect(element).to_have_attribute("data-race-state", "running")

            # Every car, in order, with the session's name, flag and replay speed.
            await expect(page.locator(ROWS)).to_have_count(len(ENTRIES))
            assert await row_order(page) == [row.car for row in race.snapshot().cars]
            await expect(page.locator(f"{BOARD} .name")).to_have_text("Test race wb-hand")
            await expect(page.locator(f"{BOARD} .flag")).to_have_text("GREEN FLAG")
            await expect(page.locator(f"{BOARD} .speed")).to_have_text("\N{MULTIPLICATION SIGN}10")
            await expect(page.locator("#race-picker option[value='wb-hand']")).to_have_count(1)
            first = page.locator(f"{ROWS}[data-car='6']")
            await expect(first).to_have_attribute("data-position", "1")
            await expect(first).to_have_attribute("data-class", "P1")
            await expect(first.locator("td[data-col='gap']")).to_have_text("Leader")
            await expect(first.locator("td[data-col='team']")).to_have_text(
                "Muscle Milk Pickett Racing"
            )

            # Class tabs, from the session's classes; GT shows the two GT cars.
            tabs = page.locator(f"{BOARD} .tabs button")
            await expect(tabs).to_have_text(["All", *CLASSES])
            await tabs.filter(has_text="GTC").click()
            await tabs.get_by_text("GT", exact=True).click()
            await expect(element).to_have_attribute("data-filter", "GT")
            await expect(page.locator(ROWS)).to_have_count(2)
            assert set(
                await page.locator(ROWS).evaluate_all("rs => rs.map(r => r.dataset.class)")
            ) == {"GT"}
            gt_leader = page.locator(f"{ROWS}[data-class-position='1']")
            await expect(gt_leader.locator("td[data-col='gap']")).to_have_text("Leader")
            await tabs.get_by_text("All", exact=True).click()
            await expect(page.locator(ROWS)).to_have_count(len(ENTRIES))

            # A change of places: the passer moves up on screen and is marked as moved.
            delta = race.step()
            changed = {patch.car for patch in delta.cars}
            passer = next(
                r
                for r in race.snapshot().cars
                if r.car in changed and r.gained > 0 and r.position < len(ENTRIES)
            )
            await publish_delta(pub, delta)
            await expect(element).to_have_attribute("data-seq", str(race.seq))
            moved = page.locator(f"{ROWS}[data-car='{passer.car}']")
            await expect(moved).to_have_attribute("data-position", str(passer.position))
            await expect(moved).to_have_attribute("data-moved", "up")
            assert await row_order(page) == [row.car for row in race.snapshot().cars]

            # Flags, lap-time colours, pit marker and a retirement.
            await publish_delta(pub, race.patch(session={"flag": "fcy"}))
            await expect(page.locator(f"{BOARD} .flag")).to_have_text("FULL COURSE YELLOW")
            await expect(element).to_have_attribute("data-flag", "fcy")
            leader = race.snapshot().cars[0].car
            fastest = {"P1": board.FastLap(car=leader, lap_ms=81_234, lap=3)}
            await publish_delta(
                pub,
                race.patch(
                    leader,
                    session={"fastest": fastest},
                    last_lap_ms=81_234,
                    best_lap_ms=81_234,
                    last_is_overall_best=True,
                    last_is_class_best=True,
                    last_is_personal_best=True,
                ),
            )
            await publish_delta(
                pub, race.patch("4", last_lap_ms=85_500, last_is_personal_best=True)
            )
            await publish_delta(pub, race.patch("56", in_pit=True, pit_stops=1))
            await publish_delta(pub, race.patch("22", status="retired"))
            await expect(element).to_have_attribute("data-seq", str(race.seq))
            last = f"{ROWS}[data-car='{leader}'] td[data-col='last']"
            await expect(page.locator(last)).to_have_text("1:21.234")
            await expect(page.locator(last)).to_contain_class("overall-best")
            assert await style_of(page, last, "color") == "rgb(176, 79, 255)"
            best = f"{ROWS}[data-car='{leader}'] td[data-col='best']"
            await expect(page.locator(best)).to_contain_class("overall-best")
            green = f"{ROWS}[data-car='4'] td[data-col='last']"
            await expect(page.locator(green)).to_contain_class("personal-best")
            assert await style_of(page, green, "color") == "rgb(47, 208, 90)"
            pit = page.locator(f"{ROWS}[data-car='56'] td[data-col='pit']")
            await expect(pit).to_have_text("IN PIT")
            retired = page.locator(f"{ROWS}[data-car='22']")
            await expect(retired).to_have_attribute("data-status", "retired")
            await expect(retired).to_contain_class("retired")
            opacity = await style_of(page, f"{ROWS}[data-car='22'] td[data-col='team']", "opacity")
            assert float(opacity) < 0.5
            await page.screenshot(path=str(tmp_path / "widget-hand.png"), full_page=True)

            # At phone width the less important columns go; the essentials stay.
            await page.set_viewport_size({"width": 390, "height": 800})
            await expect(first.locator("td[data-col='team']")).to_be_hidden()
            await expect(first.locator("td[data-col='sectors']")).to_be_hidden()
            for col in ("pos", "car", "driver", "gap", "last"):
                await expect(first.locator(f"td[data-col='{col}']")).to_be_visible()
            fits = await page.locator(f"{BOARD} .scroll").evaluate(
                "el => el.scrollWidth <= el.clientWidth"
            )
            assert fits, "the table scrolls sideways at phone width"
            await page.screenshot(path=str(tmp_path / "widget-phone.png"), full_page=True)


async def test_widget_marks_a_partial_board(module_mosquitto: Mosquitto) -> None:
    race = Standings("wb-partial", seq=4)
    # The projector joined mid-race: three events of the race were never folded.
    race.session = msgspec.structs.replace(race.session, gaps=3)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: "wb-partial" in gateway.races, "the retained snapshot")
            await page.goto(f"http://127.0.0.1:{port}/?race=wb-partial")
            element = page.locator(BOARD)
            marker = page.locator(f"{BOARD} .partial")
            await expect(element).to_have_attribute("data-seq", "4")
            await expect(marker).to_be_visible()
            await expect(marker).to_have_text("PARTIAL")
            await expect(marker).to_have_attribute("title", re.compile(r"^Partial board: 3 "))
            await expect(element).to_have_attribute("data-partial", "true")

            # Folded again from the start (a backward seek): nothing missing, no marker.
            await publish_delta(pub, race.patch(session={"gaps": 0}))
            await expect(element).to_have_attribute("data-seq", str(race.seq))
            await expect(marker).to_be_hidden()
            await expect(element).to_have_attribute("data-partial", "false")


class ScriptedServer:
    """A websocket server that the test drives frame by frame, recording what clients ask."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(self, ws: ServerConnection) -> None:
        await self.connections.put(ws)
        async for raw in ws:
            await self.requests.put(json.loads(raw))

    async def next_request(self, op: str) -> dict[str, Any]:
        while True:
            message = await asyncio.wait_for(self.requests.get(), UI_WAIT_MS / 1000)
            if message.get("op") == op:
                return message


async def test_widget_resubscribes_on_a_gap_and_reconnects_by_itself(tmp_path: Path) -> None:
    race = Standings("wb-script", seq=5)
    scripted = ScriptedServer()
    async with (
        serve(scripted.handler, "127.0.0.1", 0) as server,
        running_gateway("memory://wb-static") as (_, port),  # serves leaderboard.js only
        chromium_page() as page,
    ):
        ws_port = server.sockets[0].getsockname()[1]
        # A foreign page: one script tag and one element, as in docs/WIDGET.md.
        await page.set_content(
            f'<script src="http://127.0.0.1:{port}/leaderboard.js"></script>'
            f'<live-leaderboard race="wb-script" server="ws://127.0.0.1:{ws_port}/ws">'
            "</live-leaderboard>"
        )
        element = page.locator(BOARD)
        conn = await asyncio.wait_for(scripted.connections.get(), UI_WAIT_MS / 1000)
        assert (await scripted.next_request("subscribe"))["race"] == "wb-script"
        await conn.send(board.encode(race.snapshot()).decode())
        await expect(element).to_have_attribute("data-seq", "5")
        await expect(element).to_have_attribute("data-state", "live")
        await conn.send(board.encode(race.step()).decode())
        await expect(element).to_have_attribute("data-seq", "6")

        # A delta that does not follow: the widget asks for a fresh snapshot itself.
        race.step()
        await conn.send(board.encode(race.step()).decode())
        assert (await scripted.next_request("subscribe"))["race"] == "wb-script"
        await expect(element).to_have_attribute("data-gaps", "1")
        await expect(element).to_have_attribute("data-seq", "6")
        await conn.send(board.encode(race.snapshot()).decode())
        await expect(element).to_have_attribute("data-seq", "8")
        await expect(element).to_have_attribute("data-state", "live")
        assert await row_order(page) == [row.car for row in race.snapshot().cars]

        # The server goes away: the widget comes back on its own and subscribes again.
        await conn.close(1012, "restarting")
        await expect(element).not_to_have_attribute("data-state", "live")
        conn = await asyncio.wait_for(scripted.connections.get(), UI_WAIT_MS / 1000)
        assert (await scripted.next_request("subscribe"))["race"] == "wb-script"
        race.step()
        await conn.send(board.encode(race.snapshot()).decode())
        await expect(element).to_have_attribute("data-seq", "9")
        await expect(element).to_have_attribute("data-state", "live")

        # An unknown race is said so on screen, and asked for again later.
        await conn.send(
            json.dumps({"type": "error", "error": "unknown_race", "detail": "no race 'wb-script'"})
        )
        await expect(element).to_have_attribute("data-state", "unknown")
        await expect(page.locator(f"{BOARD} .message")).to_contain_text("not on air")


# -- the whole pipeline ------------------------------------------------------


def _pipeline_missing() -> str | None:
    for module, name in [
        ("consumers.projector.service", "run_projector"),
        ("simulator.live.producer", "run_producer"),
        ("simulator.timeline.build", "build"),
    ]:
        try:
            if not hasattr(importlib.import_module(module), name):
                return f"{module}.{name} is missing"
        except ImportError:
            return f"{module} is missing"
    return None


MONTEREY = REPO / "replays" / "alms-2013-monterey-race.json"
SCREENSHOT = REPO / "docs" / "img" / "widget.png"
UPDATE_SCREENSHOT = "CHEQUERED_UPDATE_SCREENSHOT"
"""Set to 1 to refresh docs/img/widget.png from the replay test; otherwise the docs stay put."""
REPLAY_SPEED = 1000.0

# In the page: every time the element's seq changes, note the order of the rows shown.
RECORD_ORDERS = """el => {
  window.__orders = [];
  const note = () => window.__orders.push(
    [...el.shadowRoot.querySelectorAll('tbody tr')].map(r => r.dataset.car));
  new MutationObserver(note).observe(el, {attributes: true, attributeFilter: ['data-seq']});
}"""


async def _command(url: str, race: str, command: control.Command) -> None:
    async with bus.connect(url) as pub:
        await pub.publish(topics.topic(race, topics.CONTROL), control.encode(command))


async def _widget_seq(page: Any) -> int:
    seq = await page.locator(BOARD).get_attribute("data-seq")
    return int(seq) if seq else -1


@pytest.mark.slow
@pytest.mark.skipif(_pipeline_missing() is not None, reason=str(_pipeline_missing()))
async def test_widget_follows_a_whole_replay_to_the_official_classification(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from consumers.projector.service import run_projector
    from simulator.live.producer import ReplaySpec, run_producer
    from simulator.recording import io as recording_io
    from simulator.timeline import build as timeline

    recording = recording_io.load(MONTEREY)
    race = recording.facts.id
    events = timeline.build(recording, seed=0)
    half_seq = events[-1].seq // 2
    official = [row.number for row in sorted(recording.classification, key=lambda r: r.position)]
    class_winners = {}
    for row in sorted(recording.classification, key=lambda r: r.position):
        class_winners.setdefault(row.cls, row.number)

    stop = asyncio.Event()
    projector_ready = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_projector(
                mosquitto.url,
                client_id="widget-test-projector",
                stop=stop,
                ready=projector_ready,
            )
        )
    ]
    try:
        await asyncio.wait_for(projector_ready.wait(), 10)
        tasks.append(
            asyncio.create_task(
                run_producer(
                    mosquitto.url,
                    [ReplaySpec(race, events, speed=REPLAY_SPEED, paused=True)],
                    stop=stop,
                )
            )
        )
        async with (
            running_gateway(mosquitto.url) as (gateway, port),
            chromium_page(1280, 1100) as page,
        ):
            # Highlights off: on two cores shared with the whole pipeline, hundreds of
            # animations at 1000x starve the page (the highlights have their own test).
            await page.emulate_media(reduced_motion="reduce")
            await until(lambda: race in gateway.races, "the producer's status")
            await page.goto(f"http://127.0.0.1:{port}/?race={race}")
            element = page.locator(BOARD)
            await expect(element).to_have_attribute("data-state", re.compile("waiting|live"))
            await element.evaluate(RECORD_ORDERS)
            await _command(mosquitto.url, race, control.Resume())

            # Mid-race, paused: the screen is exactly what the projector published.
            await expect(element).to_have_attribute("data-race-state", "running")
            await page.wait_for_function(
                f"() => Number(document.querySelector('{BOARD}').dataset.seq) > {half_seq}",
                timeout=60_000,
            )
            await _command(mosquitto.url, race, control.Pause())
            await expect(element).to_have_attribute("data-race-state", "paused")
            cache = gateway.races[race]
            await until(lambda: cache.snapshot is not None, "standings in the gateway")

            async def settled() -> bool:
                # Paused, the producer's status names its last seq: the board is settled
                # once the gateway and the widget are both at it (events sent just before
                # the pause may still be on their way to either).
                entry = gateway.races[race]
                status, snap = entry.status, entry.snapshot
                if status is None or status.state != "paused" or snap is None:
                    return False
                return snap.seq == status.last_seq and await _widget_seq(page) == snap.seq

            async with asyncio.timeout(10):
                while not await settled():  # noqa: ASYNC110 - polls the browser and the cache
                    await asyncio.sleep(0.05)
            cache = gateway.races[race]
            assert cache.snapshot is not None
            mid = cache.snapshot
            assert await row_order(page) == [row.car for row in mid.cars]
            leader = page.locator(f"{ROWS}").first
            await expect(leader).to_have_attribute("data-car", mid.cars[0].car)
            await expect(leader).to_have_attribute("data-position", "1")
            shot = tmp_path / "widget-mid-race.png"
            await page.screenshot(path=str(shot))
            if os.environ.get(UPDATE_SCREENSHOT) == "1":
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(shot, SCREENSHOT)
            tabs = page.locator(f"{BOARD} .tabs button")
            for cls in mid.session.classes:
                await tabs.get_by_text(cls, exact=True).click()
                in_class = [row.car for row in mid.cars if row.cls == cls]
                await expect(page.locator(ROWS).first).to_have_attribute("data-car", in_class[0])
                await expect(page.locator(ROWS)).to_have_count(len(in_class))
            await tabs.get_by_text("All", exact=True).click()

            # To the end: the official classification, overall and in each class.
            await _command(mosquitto.url, race, control.Resume())
            await expect(element).to_have_attribute("data-finished", "true", timeout=60_000)
            await expect(element).to_have_attribute("data-race-state", "finished")
            assert cache.snapshot is not None and cache.snapshot.session.finished
            await expect(element).to_have_attribute("data-seq", str(cache.snapshot.seq))
            await expect(element).to_have_attribute("data-flag", "chequered")
            assert await row_order(page) == official
            for cls, winner in class_winners.items():
                await tabs.get_by_text(cls, exact=True).click()
                await expect(page.locator(ROWS).first).to_have_attribute("data-car", winner)
            await tabs.get_by_text("All", exact=True).click()
            await page.screenshot(path=str(tmp_path / "widget-finished.png"))

            # Places changed on screen while it ran.
            orders: list[list[str]] = await page.evaluate("window.__orders")
            assert len(orders) > 10
            changes = sum(1 for a, b in itertools.pairwise(orders) if a and b and a != b)
            assert changes > 0, "no change of places was ever on screen"
            assert gateway.metrics.gaps.value == 0
            # Chromium asked for permessage-deflate: the race reached it compressed, each
            # frame referring back to the ones before (the screen above is the proof).
            metrics = gateway.metrics
            assert metrics.deflated.value > 100
            assert metrics.deflate_out_bytes.value < 0.5 * metrics.deflate_in_bytes.value
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


CSP_WATCH = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__cspViolations.push(`${event.violatedDirective} ${event.blockedURI}`);
});
"""


async def test_the_page_runs_under_the_gateways_content_security_policy(
    module_mosquitto: Mosquitto,
) -> None:
    race = Standings("wb-csp", seq=3)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, race.snapshot())
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: "wb-csp" in gateway.races, "the retained snapshot")
            await page.add_init_script(CSP_WATCH)
            for query in ("?race=wb-csp", "?race=wb-csp&overlay"):
                response = await page.goto(f"http://127.0.0.1:{port}/{query}")
                assert response is not None
                policy = response.headers["content-security-policy"]
                assert "default-src 'none'" in policy and "unsafe-inline" not in policy
                # The widget (leaderboard.js) and the page's own inline script (the race
                # picker) both ran: the policy allows them, and nothing else was blocked.
                element = page.locator(BOARD)
                await expect(element).to_have_attribute("data-state", "live")
                await expect(page.locator(ROWS)).to_have_count(len(ENTRIES))
                await expect(page.locator("#race-picker option[value='wb-csp']")).to_have_count(1)
                assert await page.evaluate("window.__cspViolations") == []
