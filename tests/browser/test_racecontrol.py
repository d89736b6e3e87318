"""The race-control feed in Chromium, as a viewer of a Baltimore 2013 replay sees it.

The real producer, projector and gateway run the synthesised race (seed 0);
the replay is paused and sought forward to three moments: just after the
opening-lap crash and its red flag, #48's unscheduled stop, and #02's crash
with 19 minutes left. At each the feed (newest first) tells the story so
far, and the cars of the newest message are highlighted in the board.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from broker.mosquitto import Mosquitto
from chequered.contract import control
from chequered.contract.events import Event, RaceControl
from tests.browser.test_widget import (
    BOARD,
    ROWS,
    _command,
    _pipeline_missing,
    chromium_page,
    expect,
    style_of,
)
from tests.conftest import REPO
from tests.consumers.gateway.test_server import running_gateway, until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_pipeline_missing() is not None, reason=str(_pipeline_missing())),
]

BALTIMORE = REPO / "replays" / "alms-2013-baltimore-race.json"
FEED = f"{BOARD} .rc-feed .rc-item"


def said(events: list[Event], *, category: str, has: str) -> RaceControl:
    """The first message of the timeline of that category whose text holds ``has``."""
    return next(
        e for e in events if isinstance(e, RaceControl) and e.category == category and has in e.text
    )


async def feed(page: Any) -> list[dict[str, str]]:
    """The feed as shown, newest first: text, category and cars of each message."""
    items: list[dict[str, str]] = await page.locator(FEED).evaluate_all(
        """items => items.map(li => ({
            text: li.querySelector('.rc-text').textContent,
            when: li.querySelector('.rc-when').textContent,
            category: li.dataset.category,
            cars: li.dataset.cars,
        }))"""
    )
    return items


async def highlighted(page: Any) -> set[str]:
    cars: list[str] = await page.locator(f"{ROWS}.rc-involved").evaluate_all(
        "rows => rows.map(r => r.dataset.car)"
    )
    return set(cars)


async def seek(url: str, race: str, page: Any, t_ms: int, newest: str) -> None:
    """Seek the paused replay to ``t_ms`` and wait for the feed to show ``newest`` on top."""
    await _command(url, race, control.Seek(t_ms=t_ms))
    await expect(page.locator(FEED).first.locator(".rc-text")).to_have_text(newest)


async def test_a_viewer_follows_the_baltimore_story_in_the_feed(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from consumers.projector.service import run_projector
    from simulator.live.producer import ReplaySpec, run_producer
    from simulator.recording import io as recording_io
    from simulator.timeline import build as timeline

    recording = recording_io.load(BALTIMORE)
    race = recording.facts.id
    events = timeline.build(recording, seed=0)
    red = said(events, category="flag", has="Red flag")
    crash = said(events, category="incident", has="#551")
    stop_48 = said(events, category="pit", has="#48 in the pits, unscheduled")
    hit_02 = said(events, category="incident", has="#02")
    out_02 = said(events, category="retirement", has="#02")
    # Each moment sought is the last message of its millisecond: it is the newest shown.
    for message in (red, stop_48, out_02):
        assert not [e for e in events if isinstance(e, RaceControl) and e.t_ms == message.t_ms + 1]

    stop = asyncio.Event()
    projector_ready = asyncio.Event()
    tasks = [
        asyncio.create_task(
            run_projector(
                mosquitto.url, client_id="racecontrol-projector", stop=stop, ready=projector_ready
            )
        )
    ]
    try:
        await asyncio.wait_for(projector_ready.wait(), 10)
        tasks.append(
            asyncio.create_task(
                run_producer(
                    mosquitto.url,
                    [ReplaySpec(race, events, speed=60.0, paused=True)],
                    stop=stop,
                )
            )
        )
        async with (
            running_gateway(mosquitto.url) as (gateway, port),
            chromium_page(1280, 1200) as page,
        ):
            await page.emulate_media(reduced_motion="reduce")
            await until(lambda: race in gateway.races, "the producer's status")
            await page.goto(f"http://127.0.0.1:{port}/?race={race}")
            element = page.locator(BOARD)
            await expect(element).to_have_attribute("data-state", "live")

            # The opening-lap crash: the red flag names the five cars out, which are
            # highlighted; the crash itself names #551 (the report's word).
            await seek(mosquitto.url, race, page, red.t_ms + 1, red.text)
            await expect(element).to_have_attribute("data-flag", "red")
            flag_text = page.locator(f"{BOARD} .flag")
            await expect(flag_text).to_contain_text("RED FLAG · multi-car crash at the first turn")
            shown = await feed(page)
            assert shown[0]["category"] == "flag"
            assert shown[0]["cars"].split() == ["551", "06", "17", "62", "68"]
            assert await highlighted(page) == {"551", "06", "17", "62", "68"}
            texts = [item["text"] for item in shown]
            assert crash.text in texts
            assert texts.index(red.text) < texts.index(crash.text)  # newest first
            assert texts[-1] == "Green flag: the race is started"
            # The red flag's list is partly the result's reading: the feed says so.
            top = page.locator(FEED).first
            await expect(top.locator(".rc-source")).to_have_text("inferred")
            # Pointing at the crash highlights the cars it names instead.
            await page.locator(f"{FEED}[data-category='incident']").filter(has_text="#551").hover()
            await expect(element).to_have_attribute("data-highlight", "551")
            assert await highlighted(page) == {"551"}
            await page.mouse.move(5, 5)
            await expect(element).to_have_attribute("data-highlight", " ".join(red.cars))

            # #48's unscheduled stop: the newest message, #48 highlighted, in the pit lane.
            await seek(mosquitto.url, race, page, stop_48.t_ms + 1, stop_48.text)
            assert await highlighted(page) == {"48"}
            await expect(page.locator(f"{ROWS}[data-car='48'] td[data-col='pit']")).to_have_text(
                "IN PIT"
            )
            pit_colour = await style_of(page, FEED, "borderLeftColor")
            assert pit_colour == "rgb(47, 156, 246)"

            # #02 hits the chicane tyre barrier with 19 minutes left: the yellow says why.
            await seek(mosquitto.url, race, page, out_02.t_ms + 1, out_02.text)
            assert await highlighted(page) == {"02"}
            await expect(element).to_have_attribute("data-flag", "fcy")
            await expect(flag_text).to_contain_text(
                "FULL COURSE YELLOW · The #02 Extreme Speed Motorsports car hit the chicane"
            )
            texts = [item["text"] for item in await feed(page)]
            # The story in order, newest first: #02's crash, #48's stop, the opening lap.
            assert texts.index(out_02.text) < texts.index(hit_02.text)
            assert texts.index(hit_02.text) < texts.index(stop_48.text)
            assert texts.index(stop_48.text) < texts.index(red.text) < texts.index(crash.text)
            incident = page.locator(f"{FEED}[data-category='incident']").filter(has_text="#02")
            assert await incident.evaluate("li => getComputedStyle(li).borderLeftColor") == (
                "rgb(255, 90, 79)"
            )
            when = await incident.locator(".rc-when").text_content()
            assert when is not None and when.startswith(f"L{hit_02.lap} · ")
            # How much of the race so far ran under yellow, beside the clock.
            share = await element.get_attribute("data-yellow-share")
            assert share is not None and 0 < float(share) < 100
            await expect(page.locator(f"{BOARD} .yellow")).to_have_text(f"{round(float(share))}%")
            # ... and that the race is synthesised, which is why it ran so much of it.
            await expect(element).to_have_attribute("data-synthesised", "true")
            yellow_fact = page.locator(f"{BOARD} .fact").filter(has=page.locator(".yellow"))
            await expect(yellow_fact.locator("small")).to_have_text("Yellow (sim)")
            await expect(yellow_fact).to_have_attribute("title", re.compile("synthesised"))
            await page.screenshot(path=str(tmp_path / "racecontrol.png"), full_page=True)

            # An embed that wants the table alone hides the feed.
            section = page.locator(f"{BOARD} .rc")
            await expect(section).to_be_visible()
            await element.evaluate("el => el.setAttribute('hide-feed', '')")
            await expect(section).to_be_hidden()
            assert gateway.metrics.gaps.value == 0
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
