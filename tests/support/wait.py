"""Wait on a condition with a timeout: the fault tests' only way of letting time pass."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.02
"""How often a condition is checked again."""


class Timeout(AssertionError):
    """A condition the test waited for did not come true in time."""


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Block until ``cond()`` is truthy; raise ``Timeout`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


async def until(cond: Callable[[], object], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """``wait_for`` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_S)


async def until_async(cond: Callable[[], Awaitable[object]], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """``until`` for a condition that must itself be awaited (a browser page, a scrape)."""
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_S)
