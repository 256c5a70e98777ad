"""Pieces every provider fake needs."""

from __future__ import annotations

import asyncio

from starlette.requests import Request


async def sleep_unless_disconnected(request: Request, seconds: float) -> bool:
    """Sleep, but stop as soon as the client goes away (so server shutdown never waits on us).

    Returns True when the client left first.
    """
    if seconds <= 0:
        return False

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
    finally:
        watcher.cancel()
    return bool(done)
