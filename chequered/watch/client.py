"""The terminal screen's websocket shell: follow one race on the gateway, reconnecting.

It speaks the documented protocol (docs/PROTOCOL.md, "Websocket protocol"):
``list`` when no race is named, ``subscribe``, then every frame to the pure
``Board``; a delta that does not chain is answered with a fresh ``subscribe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import msgspec
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, WebSocketException

from chequered.watch.view import Board

log = structlog.get_logger("chequered.watch")

DEFAULT_GATEWAY = "ws://127.0.0.1:8080/ws"


@dataclass(frozen=True)
class WatchSettings:
    """Every limit of ``chequered watch``, with the reason for its default."""

    reconnect_min_s: float = 0.5
    """First wait before reconnecting; doubles per failed attempt."""
    reconnect_max_s: float = 15.0
    """Longest wait between attempts (with jitter), as the widget."""
    open_timeout_s: float = 10.0
    """Opening handshake, as the gateway's own ``open_timeout_s``."""
    max_frame_bytes: int = 16 * 1024 * 1024
    """Largest frame taken from the gateway: a snapshot of 60 cars is about 40 KiB."""
    list_every_s: float = 2.0
    """With no race named: how often the race list is asked for until one is on air."""
    resubscribe_unknown_s: float = 5.0
    """A race not on air (yet) is asked for again this often."""
    close_timeout_s: float = 1.0
    """How long quitting waits for the gateway to answer the close."""
    redraw_hz: float = 10.0
    """Most redraws of the table a second: at 1000x frames come faster than a terminal shows."""


class GatewayUrlError(ValueError):
    """A gateway URL that cannot be used."""


def gateway_url(text: str, token: str | None = None) -> str:
    """``ws://``/``wss://`` as given, ``http(s)://`` turned into them; ``/ws`` when no path."""
    parts = urlsplit(text if "://" in text else f"ws://{text}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.hostname:
        raise GatewayUrlError(f"{text}: not a gateway URL (ws://host:port/ws or http://host:port)")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = parts.query
    if token:
        query = f"{query}&token={token}" if query else f"token={token}"
    return urlunsplit((scheme, parts.netloc, path, query, ""))


class _Races(msgspec.Struct):
    type: str = ""
    races: list[dict[str, object]] = []


_races = msgspec.json.Decoder(_Races)


async def follow(
    url: str,
    board: Board,
    on_change: Callable[[], None],
    stop: asyncio.Event,
    settings: WatchSettings | None = None,
) -> None:
    """Keep ``board`` following its race (the first on air when None) until ``stop``."""
    settings = settings or WatchSettings()
    attempt = 0
    while not stop.is_set():
        board.connection = "connecting"
        on_change()
        try:
            async with connect(
                url, open_timeout=settings.open_timeout_s, max_size=settings.max_frame_bytes
            ) as ws:
                attempt = 0
                try:
                    await _session(ws, board, on_change, stop, settings)
                except asyncio.CancelledError:
                    # The screen quit: a normal close, not the 1011 of a connection left
                    # by an error.
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(), settings.close_timeout_s)
                    raise
        except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
            board.message = f"{url}: {_reason(exc)}"
            log.info("watch.disconnected", url=url, error=str(exc))
        if stop.is_set():
            return
        board.disconnected()
        on_change()
        ceiling = min(settings.reconnect_max_s, settings.reconnect_min_s * 2**attempt)
        attempt += 1
        # Jitter: screens that lost the same gateway do not all come back at once.
        delay = ceiling * (0.5 + random.random() / 2)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is `chequered serve` or `chequered demo` running?)"
    return str(exc) or type(exc).__name__


async def _session(
    ws: ClientConnection,
    board: Board,
    on_change: Callable[[], None],
    stop: asyncio.Event,
    settings: WatchSettings,
) -> None:
    async def send(message: dict[str, object]) -> None:
        await ws.send(json.dumps(message))

    stopping = asyncio.ensure_future(stop.wait())
    receiving: asyncio.Future[str | bytes] | None = None
    try:
        if board.race is None:
            board.message = "Waiting for a race on air…"
            on_change()
            race = await _first_race(ws, send, stop, settings)
            if race is None:
                return
            board.race = race
        await send({"op": "subscribe", "race": board.race})
        board.connection = "waiting"
        on_change()
        while not stop.is_set():
            receiving = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait(
                {receiving, stopping},
                timeout=settings.resubscribe_unknown_s if _unknown(board) else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if receiving not in done:
                receiving.cancel()
                if not stop.is_set():  # a race not on air yet: ask again
                    await send({"op": "subscribe", "race": board.race})
                continue
            outcome = board.on_frame(receiving.result())
            if outcome == "gap":
                await send({"op": "subscribe", "race": board.race})
            on_change()
    finally:
        # Cancelled (the screen quits) while waiting: the read must not outlive the
        # connection, or its error is never retrieved.
        stopping.cancel()
        if receiving is not None:
            receiving.cancel()


async def _first_race(
    ws: ClientConnection,
    send: Callable[[dict[str, object]], Awaitable[None]],
    stop: asyncio.Event,
    settings: WatchSettings,
) -> str | None:
    while not stop.is_set():
        await send({"op": "list"})
        try:
            async with asyncio.timeout(settings.list_every_s):
                while True:
                    try:
                        reply = _races.decode(await ws.recv())
                    except msgspec.DecodeError:
                        continue  # not the list; nothing else is asked for yet
                    if reply.type != "races":
                        continue
                    for race in reply.races:
                        name = race.get("race")
                        if isinstance(name, str):
                            return name
                    break
        except TimeoutError:
            continue
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.list_every_s)
    return None


def _unknown(board: Board) -> bool:
    """The gateway said the race is not on air (it may start later)."""
    return board.connection == "unknown"
