"""Retrying an operation on the store until it works or the service stops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

FIRST_DELAY_S = 0.5


async def stopped_within(stopping: asyncio.Event, seconds: float) -> bool:
    """Sleeps up to ``seconds``; True as soon as ``stopping`` is set."""
    try:
        await asyncio.wait_for(stopping.wait(), seconds)
    except TimeoutError:
        return False
    return True


async def retry_until_stopped(attempt: Callable[[], Awaitable[None]], stopping: asyncio.Event, cap_s: float,
                              on_failure: Callable[[Exception, float], Awaitable[None]]) -> bool:
    """Awaits ``attempt()`` until it succeeds (True) or ``stopping`` is set (False).

    Waits 0.5 s, 1 s, 2 s … at most ``cap_s`` between tries; ``on_failure(error, next_delay_s)``
    runs after each failed try. Once stopping, a failed try is not retried.
    """
    delay = min(FIRST_DELAY_S, cap_s)
    while True:
        try:
            await attempt()
            return True
        except Exception as exc:  # a store down raises many unrelated types
            await on_failure(exc, delay)
        if await stopped_within(stopping, delay):
            return False
        delay = min(delay * 2, cap_s)
