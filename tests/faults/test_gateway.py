"""The gateway killed and restarted on the same port: every browser comes back by itself.

The gateway runs as a real process (``chequered serve``) while a stand-in
projector publishes standings that change every few milliseconds. Websocket
clients that follow the widget's reconnect policy, and the widget itself in
headless Chromium, watch the race. The gateway is killed (SIGKILL) at moments
drawn by a seeded RNG over the seqs published, and started again on the same
port. Each client must reconnect on its own, get a snapshot, then deltas that
chain on it, and end on exactly the board that was published.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from broker import bus
from broker.mosquitto import Mosquitto, free_port
from tests.conftest import requires_mosquitto
from tests.support.procs import Service
from tests.support.standings import Ticker
from tests.support.wait import until, until_async
from tests.support.ws import Watcher, watching

pytestmark = [requires_mosquitto, pytest.mark.slow]

KILLS = 3
SEED = 20130907
TICK_S = 0.01
"""Pace of the stand-in projector: a delta every 10 ms."""
WAIT_S = 60.0
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
COUNT_SOCKETS = """
(() => {
  // Count the widget's connections: the sockets that subscribe to a race (the page's
  // race picker has a socket of its own, which only lists races).
  const send = WebSocket.prototype.send;
  window.__opened = 0;
  WebSocket.prototype.send = function (data) {
    if (!this.__counted && String(data).includes('"subscribe"')) {
      this.__counted = true;
      window.__opened += 1;
    }
    return send.call(this, data);
  };
})();
"""


class Pacer:
    """The stand-in projector at work: a delta and the retained snapshot every tick."""

    def __init__(self, pub: bus.Bus, ticker: Ticker) -> None:
        self.pub = pub
        self.ticker = ticker
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self.stopping.is_set():
            await self.ticker.publish_step(self.pub)
            await asyncio.sleep(TICK_S)  # the source's pace, not a synchronisation

    async def halt(self) -> None:
        self.stopping.set()
        await self.task


@asynccontextmanager
async def ticking(broker: Mosquitto, ticker: Ticker) -> AsyncIterator[Pacer]:
    async with bus.connect(broker.url) as pub:
        await ticker.publish_snapshot(pub)
        pacer = Pacer(pub, ticker)
        try:
            yield pacer
        finally:
            await pacer.halt()


@asynccontextmanager
async def widget_page(url: str, *, enabled: bool) -> AsyncIterator[Any]:
    if not enabled:
        yield None
        return
    playwright_api = pytest.importorskip("playwright.async_api")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.add_init_script(COUNT_SOCKETS)
            await page.goto(url)
            yield page
        finally:
            await browser.close()


async def _widget(page: Any) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        """() => {
          const el = document.querySelector("live-leaderboard");
          const snap = el.snapshot;
          return {
            seq: snap ? snap.seq : null,
            gaps: Number(el.dataset.gaps || 0),
            state: el.dataset.state,
            opened: window.__opened,
            cars: snap ? snap.cars.map(r => [r.car, r.position, r.class_position, r.laps]) : [],
          };
        }"""
    )
    return state


@pytest.mark.parametrize(
    "with_browser",
    [
        pytest.param(False, id="websocket-clients"),
        pytest.param(
            True,
            id="chromium",
            marks=[
                pytest.mark.browser,
                pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed"),
            ],
        ),
    ],
)
async def test_gateway_killed_and_restarted(
    mosquitto: Mosquitto, tmp_path: Path, with_browser: bool
) -> None:
    rng = random.Random(SEED)
    race = "fault-gateway"
    port = free_port()
    gateway = Service(
        "gateway", ["serve", "--broker", mosquitto.url, "--port", str(port)], tmp_path
    )
    ticker = Ticker(race)
    clients = [
        Watcher(f"ws://127.0.0.1:{port}/ws", race, seed=i, cls=cls)
        for i, cls in enumerate([None, None, None, "P1", "GT"])
    ]
    try:
        async with ticking(mosquitto, ticker) as pacer:
            gateway.start()
            async with (
                watching(*clients),
                widget_page(f"http://127.0.0.1:{port}/?race={race}", enabled=with_browser) as page,
            ):
                for client in clients:
                    async with asyncio.timeout(WAIT_S):
                        await client.wait_connects(1)
                # Kill moments: seqs ahead of where the race is, drawn by the RNG.
                at = ticker.seq
                for k in range(1, KILLS + 1):
                    at += rng.randint(20, 120)
                    await until(lambda at=at: ticker.seq >= at, WAIT_S, f"seq {at}")
                    gateway.kill()
                    gateway.start()
                    for client in clients:
                        async with asyncio.timeout(WAIT_S):
                            await client.wait_connects(k + 1)
                    if page is not None:

                        async def widget_back(k: int = k) -> bool:
                            widget = await _widget(page)
                            return bool(widget["opened"] > k and widget["state"] == "live")

                        await until_async(widget_back, WAIT_S, f"the widget back after kill {k}")
                # The race goes on a little after the last restart, then stops.
                await until(lambda at=at: ticker.seq >= at + 20, WAIT_S, "deltas after the kills")
                await pacer.halt()
                final = ticker.snapshot()
                for client in clients:
                    async with asyncio.timeout(WAIT_S):
                        await client.wait_seq(final.seq)
                if page is not None:

                    async def widget_done() -> bool:
                        return bool((await _widget(page))["seq"] == final.seq)

                    await until_async(widget_done, WAIT_S, "the widget at the last seq")
                    widget = await _widget(page)
            assert gateway.stop() == 0
    finally:
        if gateway.alive:
            gateway.kill()

    for client in clients:
        # Reconnected after each kill, by itself; a snapshot on each connection, then
        # deltas chaining on it: no gap, and exactly the board published at the end.
        assert client.connects == KILLS + 1
        # One snapshot per connection; a restart that subscribes between a delta and
        # the snapshot it leads to misses that delta, and adopts the snapshot as news:
        # one more snapshot on that connection, never a gap.
        assert KILLS + 1 <= client.snapshots <= 2 * (KILLS + 1)
        assert client.gaps == 0
        # A client that asks before the restarted gateway has read the retained
        # standings is held through the startup grace; only past it would it be told
        # the race is unknown, and ask again (as the widget does).
        assert {e["error"] for e in client.errors} <= {"unknown_race"}
        assert client.deltas > 0
        assert client.view is not None
        cars = [row for row in final.cars if client.cls in (None, row.cls)]
        assert (client.view.seq, client.view.cars) == (final.seq, cars)
        # The widget's backoff with jitter: waits differ between clients.
        assert client.reconnect_waits
    assert len({round(c.reconnect_waits[0], 6) for c in clients}) == len(clients)
    if with_browser:
        assert widget["gaps"] == 0
        assert widget["opened"] >= KILLS + 1
        assert widget["cars"] == [[r.car, r.position, r.class_position, r.laps] for r in final.cars]
    assert not gateway.tracebacks()
