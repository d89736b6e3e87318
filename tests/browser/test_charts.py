"""<live-charts> in headless Chromium during a real replay at 1000x: the gap chart, lap chart
and lap-time scatter hold, for every car, exactly what the board shows at a few race times,
overall and per class, from the leaderboard's own stream (no second connection)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
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
from tests.support.wait import until, until_async

playwright_api = pytest.importorskip("playwright.async_api")
async_playwright = playwright_api.async_playwright
expect = playwright_api.expect

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
UI_WAIT_MS = 10_000
RACE = "imsa-2022-laguna-seca-race"
SCREENSHOT = REPO / "docs" / "img" / "charts.png"
UPDATE_SCREENSHOT = "CHEQUERED_UPDATE_SCREENSHOT"
"""Set to 1 to refresh docs/img/charts.png from this test; otherwise the docs stay put."""


def _pipeline_missing() -> str | None:
    for module in ("consumers.projector.service", "simulator.live.producer"):
        try:
            importlib.import_module(module)
        except Exception as exc:  # someone's work in progress must not fail the module
            return f"{module}: {exc}"
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed"),
    pytest.mark.skipif(_pipeline_missing() is not None, reason=str(_pipeline_missing())),
]


@asynccontextmanager
async def chromium_page(width: int, height: int) -> AsyncIterator[Any]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(UI_WAIT_MS)
            expect.set_options(timeout=UI_WAIT_MS)
            yield page
        finally:
            await browser.close()


def expected(snapshot: board.Snapshot, cls: str | None) -> dict[str, dict[str, Any]]:
    """What the charts must hold as each car's latest point: the board's row."""
    out = {}
    for row in snapshot.cars:
        if row.laps == 0 or (cls is not None and row.cls != cls):
            continue
        out[row.car] = {
            "lap": row.laps,
            "position": row.class_position if cls else row.position,
            "gap_ms": row.class_gap_ms if cls else row.gap_ms,
            "gap_laps": row.class_gap_laps if cls else row.gap_laps,
            "lap_ms": row.last_lap_ms,
        }
    return out


RECORD_LAPS = """el => {
  // Every lap each car is shown on in any frame the board applies; a seek back (fewer laps
  // than before) drops the laps above, as the charts do.
  const laps = window.__laps = {};
  el.addEventListener("lb-standings", (event) => {
    if (event.detail.kind === "reset") {
      for (const car of Object.keys(laps)) delete laps[car];
      return;
    }
    for (const row of event.detail.cars) {
      const have = laps[row.car] || (laps[row.car] = []);
      if (have.length && row.laps < Math.max(...have)) {
        laps[row.car] = have.filter((lap) => lap <= row.laps);
      }
      if (row.laps > 0 && !laps[row.car].includes(row.laps)) laps[row.car].push(row.laps);
    }
  });
}"""


CHART_DATA = """(el, classes) => ({
  seq: el._seq,
  all: el.latest(null),
  by: Object.fromEntries(classes.map((c) => [c, el.latest(c)])),
})"""


async def _command(url: str, race: str, command: control.Command) -> None:
    async with bus.connect(url) as pub:
        await pub.publish(topics.topic(race, topics.CONTROL), control.encode(command))


async def test_charts_match_the_board_at_several_race_times(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from chequered.cli.live import load_timeline
    from consumers.projector.service import run_projector
    from simulator.live.producer import ReplaySpec, run_producer

    race, events = load_timeline(RACE, seed=0)
    last_seq = events[-1].seq
    stop = asyncio.Event()
    ready = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_projector(mosquitto.url, client_id="charts-projector", stop=stop, ready=ready)
        )
    ]
    try:
        await asyncio.wait_for(ready.wait(), 10)
        spec = ReplaySpec(race, events, speed=1000.0, paused=True)
        tasks.append(asyncio.create_task(run_producer(mosquitto.url, [spec], stop=stop)))
        async with (
            running_gateway(mosquitto.url) as (gateway, port),
            chromium_page(1280, 1400) as page,
        ):
            await page.emulate_media(reduced_motion="reduce")
            await until(lambda: race in gateway.races, 10, "the producer's status")
            sockets: list[str] = []
            page.on("websocket", lambda ws: sockets.append(ws.url))
            await page.goto(f"http://127.0.0.1:{port}/?race={race}")
            charts = page.locator("live-charts")
            await expect(charts.locator(".ch-empty")).to_be_visible()
            await page.locator("live-leaderboard").evaluate(RECORD_LAPS)

            def board_now() -> board.Snapshot | None:
                # Looked up each time: the gateway may replace a race's cache entry.
                entry = gateway.races.get(race)
                return entry.snapshot if entry is not None else None

            def state_now() -> str | None:
                entry = gateway.races.get(race)
                return entry.status.state if entry is not None and entry.status else None

            async def settled() -> board.Snapshot:
                """Paused: the board, the widget and the charts all at the same seq."""
                await until(lambda: board_now() is not None, 10, "standings")

                async def same() -> bool:
                    now = board_now()
                    assert now is not None
                    seq = str(now.seq)
                    widget = await page.locator("live-leaderboard").get_attribute("data-seq")
                    drawn = await charts.get_attribute("data-seq")
                    return bool(widget == seq and drawn == seq)

                await until_async(same, 15, "the widget and the charts at the board's seq")
                now = board_now()
                assert now is not None
                return now

            async def check(snap: board.Snapshot) -> None:
                classes = list(snap.session.classes)

                async def agrees() -> bool:
                    # The charts' data, overall and per class, read in one go with the seq
                    # it is at (drawing is coalesced; the data is not), then compared with
                    # the gateway's board at that same seq: a frame still on its way to
                    # either side is read again, never compared across two seqs.
                    got = await charts.evaluate(CHART_DATA, classes)
                    now = board_now()
                    if now is None or got["seq"] != now.seq:
                        return False
                    assert got["all"] == expected(now, None)
                    for cls in classes:
                        assert got["by"][cls] == expected(now, cls), cls
                    return True

                await until_async(agrees, 15, "the charts' data at the board's seq")

            # Live at 1000x, paused early on (the pause must land before the finish with the
            # whole pipeline, the browser and the test sharing two cores).
            await _command(mosquitto.url, race, control.Resume())
            await until(
                lambda: (now := board_now()) is not None and now.seq > last_seq // 20,
                60,
                "the first laps",
            )
            await _command(mosquitto.url, race, control.Pause())
            await until(lambda: state_now() == "paused", 10, "paused")
            snap = await settled()
            await check(snap)

            # A forward seek (the race up to there as fast as possible), then a backward one
            # (a reset: the charts drop the laps not run again).
            ahead = snap.session.leader_laps + 30
            await _command(mosquitto.url, race, control.Seek(lap=ahead))
            await until(
                lambda: (now := board_now()) is not None and now.session.leader_laps >= ahead - 1,
                30,
                "the seek forward",
            )
            await check(await settled())
            await _command(mosquitto.url, race, control.Seek(lap=20))
            await until(
                lambda: (now := board_now()) is not None and now.session.leader_laps < 20,
                30,
                "the seek back",
            )
            await check(await settled())

            # A class tab shows that class's cars only, gaps to the class leader.
            snap = await settled()
            cls = snap.session.classes[-1]
            await charts.locator(f".ch-tabs button[data-tab='{cls}']").click()
            await expect(charts).to_have_attribute("data-filter", cls)
            legend = await charts.locator(".ch-legend span").all_text_contents()
            assert sorted(legend) == sorted(f"#{car}" for car in expected(snap, cls))
            await charts.locator(".ch-tabs button[data-tab='All']").click()

            # To the end: the final board, and a history of (nearly) every lap of each car.
            await _command(mosquitto.url, race, control.Resume())
            await expect(page.locator("live-leaderboard")).to_have_attribute(
                "data-finished", "true", timeout=60_000
            )
            final = await settled()
            await check(final)
            series = await charts.evaluate("el => el.series(null)")
            leader = final.cars[0]
            laps = [point["lap"] for point in series[leader.car]]
            assert laps[-1] == leader.laps
            # Every lap any frame of the board showed is in the charts: drawing is coalesced,
            # the data is not. (The stream itself may carry a car over two laps in one frame
            # when it coalesces: at 1000x, or in a seek's burst.)
            seen = await page.evaluate("window.__laps")
            assert {car: sorted(points) for car, points in seen.items()} == {
                car: [p["lap"] for p in points] for car, points in series.items() if points
            }
            assert len(laps) > leader.laps // 2
            assert int(await charts.get_attribute("data-draws") or 0) > 2
            painted = await charts.evaluate(
                """el => [...el.shadowRoot.querySelectorAll('canvas')].map(c => {
                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                  let n = 0;
                  for (let i = 3; i < d.length; i += 4) if (d[i]) n++;
                  return n;
                })"""
            )
            assert all(n > 1000 for n in painted), painted
            # One data source: the page's only websockets are the board's and the picker's.
            assert len(sockets) == 2, sockets
            shot = tmp_path / "charts.png"
            await charts.screenshot(path=str(shot))
            if os.environ.get(UPDATE_SCREENSHOT) == "1":
                shutil.copyfile(shot, SCREENSHOT)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)


async def test_charts_say_when_the_board_lost_its_gateway(module_mosquitto: Mosquitto) -> None:
    from tests.browser.test_spoilers_and_overlay import publish, standings

    snap = standings("ch-lost", 30, finished=False)
    async with bus.connect(module_mosquitto.url) as pub:
        await publish(pub, snap, "running")
    first = contextlib.AsyncExitStack()
    async with chromium_page(1280, 900) as page, first:
        gateway, port = await first.enter_async_context(running_gateway(module_mosquitto.url))
        await until(lambda: "ch-lost" in gateway.races, 10, "the race")
        await page.goto(f"http://127.0.0.1:{port}/?race=ch-lost")
        charts = page.locator("live-charts")
        await expect(charts).to_have_attribute("data-seq", "30")
        assert await charts.evaluate("el => el.latest(null)") == expected(snap, None)
        await expect(charts.locator(".ch-state")).to_have_text("")
        await first.aclose()
        # The gateway is gone: the last laps stay, and the charts say they are old.
        await expect(charts).to_have_attribute("data-state", "reconnecting")
        await expect(charts.locator(".ch-state")).to_contain_text("Reconnecting")
        assert await charts.evaluate("el => el.latest(null)") == expected(snap, None)
        async with running_gateway(module_mosquitto.url, port=port):
            await expect(charts).to_have_attribute("data-state", "live", timeout=30_000)
            await expect(charts.locator(".ch-state")).to_have_text("")
