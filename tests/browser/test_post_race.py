"""The widget through a result changed after the flag: "provisional" from the provisional
classification to the official one, and the penalty on the car's row, from the boards
the standings fold makes of a real replay, through the broker and the real gateway."""

from __future__ import annotations

import re

import msgspec
import pytest

from broker import bus
from broker.mosquitto import Mosquitto
from chequered.contract import events as ev
from chequered.contract.board import Snapshot
from consumers.standings import fold
from tests.browser.test_widget import BOARD, CHROMIUM, ROWS, chromium_page, expect, row_order
from tests.consumers.gateway.test_server import (
    publish_delta,
    publish_snapshot,
    running_gateway,
    until,
)
from tests.simulator.timeline.test_post_race import penalised_events

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed"),
]

RACE = "wb-penalty"


def boards() -> list[Snapshot]:
    """The board at the provisional classification, after the penalty, and at the close."""
    state = fold.new_race(RACE)
    out = []
    for event in penalised_events():
        fold.apply(state, msgspec.structs.replace(event, race=RACE))
        if isinstance(event, ev.Provisional | ev.Penalty | ev.SessionClosed):
            out.append(fold.snapshot(state))
    return out


async def test_widget_shows_provisional_then_the_penalty_then_the_official_order(
    module_mosquitto: Mosquitto,
) -> None:
    provisional, penalised, official = boards()
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, provisional)
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: RACE in gateway.races, "the retained snapshot")
            await page.goto(f"http://127.0.0.1:{port}/?race={RACE}")
            element = page.locator(BOARD)
            marker = page.locator(f"{BOARD} .provisional")
            await expect(element).to_have_attribute("data-seq", str(provisional.seq))
            await expect(marker).to_be_visible()
            await expect(element).to_have_attribute("data-provisional", "true")
            await expect(page.locator(f"{BOARD} .flag")).to_have_text(re.compile("PROVISIONAL"))
            assert (await row_order(page)).index("14") == 12
            car = page.locator(f'{ROWS}[data-car="14"] td[data-col="car"]')
            await expect(car).not_to_have_attribute("data-penalty", re.compile("."))

            delta = fold.delta(provisional, penalised)
            assert delta is not None
            await publish_delta(pub, delta)
            await expect(car).to_have_attribute("data-penalty", "+23 s")
            await expect(car).to_have_text("14")  # the badge is drawn, the number stays
            badge = await car.evaluate("el => getComputedStyle(el, '::after').content")
            assert "23" in badge
            await expect(page.locator(f'{ROWS}[data-car="14"]')).to_have_attribute(
                "title", "#14 penalty: +23 s"
            )
            await expect(marker).to_be_visible()
            # The decision is the newest message of the race-control feed.
            newest = page.locator(f"{BOARD} .rc-feed .rc-item").first
            await expect(newest).to_have_attribute("data-category", "penalty")
            await expect(newest.locator(".rc-text")).to_have_text(
                "#14 +23 s, post-race: 13th to 16th"
            )

            delta = fold.delta(penalised, official)
            assert delta is not None
            await publish_delta(pub, delta)
            await expect(element).to_have_attribute("data-provisional", "false")
            await expect(marker).to_be_hidden()
            await expect(element).to_have_attribute("data-seq", str(official.seq))
            order = await row_order(page)
            assert order[12:16] == ["25", "3", "16", "14"]
            await expect(car).to_have_attribute("data-penalty", "+23 s")


async def test_spoiler_safe_covers_a_provisional_result_not_watched(
    module_mosquitto: Mosquitto,
) -> None:
    provisional = boards()[0]
    provisional = msgspec.structs.replace(provisional, race=f"{RACE}-s")
    async with bus.connect(module_mosquitto.url) as pub:
        await publish_snapshot(pub, provisional)
        async with (
            running_gateway(module_mosquitto.url) as (gateway, port),
            chromium_page() as page,
        ):
            await until(lambda: f"{RACE}-s" in gateway.races, "the retained snapshot")
            await page.goto(f"http://127.0.0.1:{port}/?race={RACE}-s&spoilers=off")
            element = page.locator(BOARD)
            await expect(element).to_have_attribute("data-seq", str(provisional.seq))
            # The order at the flag tells the result as the official one would.
            await expect(element).to_have_attribute("data-covered", "true")
