"""Run the websocket gateway inside the test's event loop, on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from consumers.gateway.server import Gateway, GatewaySettings

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
"""Closing the broker connection may wait out the MQTT client's own 10 s timeout."""


@asynccontextmanager
async def running_gateway(
    url: str, settings: GatewaySettings | None = None, *, port: int = 0
) -> AsyncIterator[tuple[Gateway, int]]:
    """A gateway serving until the block ends; yields it and its port."""
    gateway = Gateway(url, settings)
    stop = asyncio.Event()
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(gateway.run(host="127.0.0.1", port=port, stop=stop, ready=ready))
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            bound = await ready
        yield gateway, bound
        assert not task.done(), f"the gateway stopped by itself: {task}"
    finally:
        stop.set()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await asyncio.gather(task, return_exceptions=True)
