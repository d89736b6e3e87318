"""The widget's spoiler-safe mode and compact overlay in headless Chromium, fed by the real
gateway from hand-published standings: a finished race stays covered (list, title, board,
charts) until asked, a finish watched live is shown; the overlay shows the top N of a class in
the few columns and big type its custom properties set."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import board, control, topics
from tests.conftest import REPO
from tests.support.gateway import running_gateway
from tests.support.wait import until

playwright_api = pytest.importorskip("playwright.async_api")
async_playwright = playwright_api.async_playwright
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
UI_WAIT_MS = 10_000
BOARD = "live-leaderboard"
ROWS = f"{BOARD} tbody tr"
SCREENSHOT = REPO / "docs" / "img" / "overlay.png"
UPDATE_SCREENSHOT = "CHEQUERED_UPDATE_SCREENSHOT"
"""Set to 1 to refresh docs/img/overlay.png from this test; otherwise the docs stay put."""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed"),
]

CARS = [  # car, class, team, driver
    ("10", "DPi", "Konica Minolta Acura", "R. Taylor"),
    ("60", "DPi", "Meyer Shank Racing", "T. Blomqvist"),
    ("52", "LMP2", "PR1 Mathiasen", "M. Jensen"),
    ("3", "GTD", "Corvette Racing", "A. Garcia"),
    ("9", "GTD", "Pfaff Motorsports", "M. Campbell"),
    ("23", "GTD", "Heart of Racing", "R. Gunn"),
    ("1", "GTD", "Paul Miller Racing", "B. Sellers"),
]


def standings(race: str, seq: int, *, finished: bool) -> board.Snapshot:
    rows = []
    in_class: dict[str, int] = {}
    for i, (car, cls, team, driver) in enumerate(CARS):
        in_class[cls] = in_class.get(cls, 0) + 1
        class_gap = None if in_class[cls] == 1 else 1_234 * (in_class[cls] - 1)
        rows.append(
            board.CarRow(
                car=car, cls=cls, team=team, driver=driver, position=i + 1,
                class_position=in_class[cls], laps=117 - i // 2, gap_ms=None if i == 0 else
                1000 * i, interval_ms=None if i == 0 else 1000, last_lap_ms=80_000 + 100 * i,
                best_lap_ms=79_000 + 100 * i, class_gap_ms=class_gap,
                class_interval_ms=None if class_gap is None else 1_234,
                status="finished" if finished else "running",
            )
        )  # fmt: skip
    session = board.SessionView(
        name=f"Race {race}", classes=["DPi", "LMP2", "GTD"], leader_laps=117,
        t_ms=9_720_000, remaining_ms=0 if finished else 60_000, finished=finished,
        flag="chequered" if finished else "green",
    )  # fmt: skip
    message = board.RaceMessage(
        seq=seq - 1, t_ms=9_700_000, lap=117, category="retirement", text="#9 retires"
    )
    return board.Snapshot(race=race, seq=seq, session=session, cars=rows, messages=[message])


async def publish(pub: bus.Bus, snap: board.Snapshot, state: control.ProducerState) -> None:
    await pub.publish(topics.topic(snap.race, topics.STANDINGS), board.encode(snap), retain=True)
    status = control.Status(race=snap.race, state=state, speed=60.0, t_ms=snap.session.t_ms)
    await pub.publish(topics.topic(snap.race, topics.STATUS), control.encode(status), retain=True)


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


async def test_spoiler_safe_hides_a_result_not_watched(module_mosquitto: Mosquitto) -> None:
    done = standings("sp-done", 900, finished=True)
    live = standings("sp-live", 500, finished=False)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish(pub, done, "finished")
        await publish(pub, live, "running")
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: {"sp-done", "sp-live"} <= set(gateway.races), 10, "the races")
            element = page.locator(BOARD)

            # Without the option, a finished race shows its result, and the title its winner.
            await page.goto(f"http://127.0.0.1:{port}/?race=sp-done")
            await expect(element).to_have_attribute("data-seq", "900")
            await expect(page.locator(ROWS)).to_have_count(len(CARS))
            await expect(page).to_have_title("Winner #10 · Race sp-done")
            picker = page.locator("#race-picker option[value='sp-done']")
            await expect(picker).to_contain_text("finished")

            # Spoiler-safe: the list, the title, the board and the charts say nothing of it.
            await page.goto(f"http://127.0.0.1:{port}/?race=sp-done&spoilers=off")
            await expect(element).to_have_attribute("data-seq", "900")
            await expect(element).to_have_attribute("data-covered", "true")
            await expect(page.locator(f"{BOARD} .cover")).to_be_visible()
            await expect(page.locator(f"{BOARD} .cover")).to_contain_text("already finished")
            await expect(page.locator(ROWS).first).to_be_hidden()
            await expect(page.locator(f"{BOARD} .tabs")).to_be_hidden()
            await expect(page.locator(f"{BOARD} .lap")).to_have_text("-")
            await expect(page.locator(f"{BOARD} .clock")).to_have_text("--:--:--")
            await expect(page.locator(f"{BOARD} .flag")).to_have_text("SPOILER-SAFE")
            await expect(page.locator(f"{BOARD} .rc")).to_be_hidden()
            await expect(page).to_have_title("Race sp-done · chequered")
            await expect(picker).to_have_text("Race sp-done")
            charts = page.locator("live-charts")
            await expect(charts).to_have_attribute("data-covered", "true")
            await expect(charts.locator(".ch-empty")).to_contain_text("spoiler-safe")
            # What is on screen (hidden rows stay in the DOM; innerText leaves them out).
            text = await element.evaluate("el => el.shadowRoot.querySelector('.board').innerText")
            assert "Race sp-done" in text
            for _, _, team, driver in CARS:
                assert team not in text and driver not in text
            # Asked for, the result shows (the title stays spoiler-safe).
            await page.locator(f"{BOARD} .reveal").click()
            await expect(element).to_have_attribute("data-covered", "false")
            await expect(page.locator(ROWS)).to_have_count(len(CARS))
            await expect(charts).to_have_attribute("data-covered", "false")
            await expect(page).to_have_title("Race sp-done · chequered")

            # A race watched to its finish is not covered: the replay reached the result.
            await page.goto(f"http://127.0.0.1:{port}/?race=sp-live&spoilers=off")
            await expect(element).to_have_attribute("data-seq", "500")
            await expect(page.locator(ROWS)).to_have_count(len(CARS))
            finish = board.Delta(
                race="sp-live",
                seq=501,
                prev_seq=500,
                session=board.SessionPatch(finished=True, flag="chequered"),
            )
            await pub.publish(topics.topic("sp-live", topics.STANDINGS_DELTA), board.encode(finish))
            await expect(element).to_have_attribute("data-finished", "true")
            await expect(element).to_have_attribute("data-covered", "false")
            await expect(page.locator(ROWS)).to_have_count(len(CARS))


async def test_compact_overlay_shows_the_top_of_a_class_in_big_type(
    module_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    snap = standings("ov-race", 40, finished=False)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish(pub, snap, "running")
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page(480, 320) as page,
        ):
            await until(lambda: "ov-race" in gateway.races, 10, "the race")
            await page.goto(f"http://127.0.0.1:{port}/?race=ov-race&overlay&top=3&class=GTD")
            element = page.locator(BOARD)
            await expect(element).to_have_attribute("data-seq", "40")
            await expect(element).to_have_attribute("data-filter", "GTD")
            gtd = [car for car, cls, _, _ in CARS if cls == "GTD"]
            await expect(page.locator(ROWS)).to_have_count(3)
            cars = await page.locator(ROWS).evaluate_all("rs => rs.map(r => r.dataset.car)")
            assert cars == gtd[:3]
            first = page.locator(ROWS).first
            shown = await first.locator("td").evaluate_all(
                "tds => tds.filter(td => td.offsetParent !== null).map(td => td.dataset.col)"
            )
            assert shown == ["pic", "car", "driver", "gap", "pit"]
            await expect(first.locator("td[data-col='pic']")).to_have_text("1")
            await expect(page.locator(ROWS).nth(1).locator("td[data-col='gap']")).to_have_text(
                "+1.234"
            )
            await expect(first.locator("td[data-col='gap']")).to_have_text("Leader")
            await expect(page.locator(".bar")).to_be_hidden()
            await expect(page.locator(f"{BOARD} .tabs")).to_be_hidden()
            await expect(page.locator("live-charts")).to_have_count(0)
            # An overlay has no room for the message feed, the clock or the yellow share.
            await expect(element).to_have_attribute("data-messages", "1")
            await expect(page.locator(f"{BOARD} .rc")).to_be_hidden()
            await expect(page.locator(f"{BOARD} .clock")).to_be_hidden()
            await expect(page.locator(f"{BOARD} .yellow")).to_be_hidden()
            size = await first.locator("td[data-col='driver']").evaluate(
                "td => getComputedStyle(td).fontSize"
            )
            assert size == "22px"
            background = await page.locator("body").evaluate(
                "b => getComputedStyle(b).backgroundColor"
            )
            assert background == "rgba(0, 0, 0, 0)", "an overlay page is transparent"

            # Themed through custom properties: bigger type, other columns.
            await element.evaluate("el => el.style.setProperty('--lb-compact-font-size', '30px')")
            size = await first.locator("td[data-col='driver']").evaluate(
                "td => getComputedStyle(td).fontSize"
            )
            assert size == "30px"
            await element.evaluate("el => el.setAttribute('columns', 'pos car gap last')")
            await expect(first.locator("td[data-col='driver']")).to_be_hidden()
            await expect(first.locator("td[data-col='last']")).to_be_visible()
            await element.evaluate("el => el.removeAttribute('columns')")
            await element.evaluate("el => el.style.removeProperty('--lb-compact-font-size')")
            await expect(first.locator("td[data-col='driver']")).to_be_visible()
            shot = tmp_path / "overlay.png"
            await element.screenshot(path=str(shot))
            if os.environ.get(UPDATE_SCREENSHOT) == "1":
                shutil.copyfile(shot, SCREENSHOT)
