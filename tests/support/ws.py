"""A websocket leaderboard client that behaves like the widget: reconnects, checks seq chains.

It subscribes to one race, keeps the board it is shown (snapshot, then deltas
applied on top), and on a broken chain or a lost connection does what the
widget does: resubscribe, or reconnect after a backoff with jitter. The tests
read its counters to prove what a browser would have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from chequered.contract import board

WIDGET_JS = Path(__file__).resolve().parents[2] / "consumers" / "web" / "leaderboard.js"


def _widget_ms(name: str, default: int) -> float:
    """A timing constant of the widget, so that this client keeps the widget's policy."""
    found = (
        re.search(rf"const {name} = (\d+);", WIDGET_JS.read_text()) if WIDGET_JS.exists() else None
    )
    return (int(found.group(1)) if found else default) / 1000


RECONNECT_MIN_S = _widget_ms("RECONNECT_MIN_MS", 500)
RECONNECT_MAX_S = _widget_ms("RECONNECT_MAX_MS", 15000)
RESUBSCRIBE_UNKNOWN_S = _widget_ms("RESUBSCRIBE_UNKNOWN_MS", 5000)
OPEN_TIMEOUT_S = 5.0


@dataclass
class Watcher:
    """One well-behaved client of one race."""

    url: str
    race: str
    cls: str | None = None
    seed: int = 0
    origin: str | None = None
    view: board.Snapshot | None = None
    """The board as this client shows it."""
    snapshots: int = 0
    deltas: int = 0
    gaps: int = 0
    """Deltas that did not chain on what the client held (each makes it resubscribe)."""
    connects: int = 0
    attempt: int = 0
    reconnect_waits: list[float] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    """Receive time minus the delta's emission time, per delta."""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def seq(self) -> int:
        return self.view.seq if self.view is not None else 0

    async def wait_seq(self, seq: int) -> None:
        """Wait until the board shown reflects at least ``seq`` (wrap in ``asyncio.timeout``)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.seq >= seq)

    async def wait_connects(self, n: int) -> None:
        """Wait until the client got a snapshot on its ``n``-th connection."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.connects >= n and self.view is not None)

    async def run(self) -> None:
        """Stay subscribed until cancelled, reconnecting with backoff and jitter."""
        rng = random.Random(self.seed)
        self.attempt = 0
        while True:
            try:
                headers = {"Origin": self.origin} if self.origin else None
                async with connect(
                    self.url,
                    open_timeout=OPEN_TIMEOUT_S,
                    additional_headers=headers,
                    max_size=None,
                    compression=None,
                ) as ws:
                    await self._subscribe(ws)
                    async for raw in ws:
                        await self._on_frame(ws, raw)
            except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            finally:
                self.connected.clear()
            # The widget's backoff: doubling from RECONNECT_MIN to RECONNECT_MAX, each
            # wait drawn from its upper half, so that a restarted gateway is not hit by
            # every browser in the same millisecond; reset by a snapshot.
            ceiling = min(RECONNECT_MAX_S, RECONNECT_MIN_S * 2**self.attempt)
            self.attempt += 1
            self.reconnect_waits.append(ceiling * (0.5 + 0.5 * rng.random()))
            await asyncio.sleep(self.reconnect_waits[-1])

    async def _subscribe(self, ws: ClientConnection) -> None:
        request: dict[str, Any] = {"op": "subscribe", "race": self.race}
        if self.cls is not None:
            request["class"] = self.cls
        await ws.send(json.dumps(request))

    async def _on_frame(self, ws: ClientConnection, raw: str | bytes) -> bool:
        """Apply one frame; True when the client holds a good board afterwards."""
        now = time.time()
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "snapshot":
            self.view = board.decode_snapshot(raw if isinstance(raw, bytes) else raw.encode())
            self.snapshots += 1
            self.attempt = 0
            async with self._changed:
                if not self.connected.is_set():
                    self.connects += 1
                    self.connected.set()
                self._changed.notify_all()
            return True
        if kind == "delta":
            delta = board.decode_delta(raw if isinstance(raw, bytes) else raw.encode())
            self.latencies_s.append(now - delta.wall)
            if self.view is None or delta.prev_seq != self.view.seq:
                self.gaps += 1
                # What the widget does on a gap: ask again, start from a fresh snapshot.
                self.view = None
                await self._subscribe(ws)
                return False
            self.view = board.apply_delta(self.view, delta)
            self.deltas += 1
            async with self._changed:
                self._changed.notify_all()
            return True
        if kind == "error":
            self.errors.append(message)
            if message.get("error") == "unknown_race":
                # The gateway has not seen the race yet (just started, or the race has
                # not begun): ask again a little later, as the widget does.
                await asyncio.sleep(RESUBSCRIBE_UNKNOWN_S)
                await self._subscribe(ws)
        return False


@contextlib.asynccontextmanager
async def watching(*watchers: Watcher) -> Any:
    """Run the watchers for the duration of the block."""
    tasks = [asyncio.create_task(w.run()) for w in watchers]
    try:
        yield watchers
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
