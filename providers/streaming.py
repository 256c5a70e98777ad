"""Time limits on streamed answers, shared by every adapter that streams.

A stream must start (response headers and first item) within the first-token limit, show each later
item within the idle limit, and end before the call's deadline. The limits wrap only the wait for the
next item (never the consumer's own work between items), so a slow client cannot trip them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from providers.base import CallOptions

Item = TypeVar("Item")
_END = object()


def first_token_deadline(options: CallOptions) -> float:
    """When the first item must have arrived: one budget for connecting, headers and first chunk."""
    return min(asyncio.get_running_loop().time() + options.first_token_timeout_s, options.deadline)


async def within_limits(items: AsyncIterator[Item], options: CallOptions, first_deadline: float) -> AsyncIterator[Item]:
    """Yield `items`, raising TimeoutError (saying what was late) when the next one does not come in time.

    `items` is closed on every exit, so an upstream response under it is released promptly.
    """
    loop = asyncio.get_running_loop()
    limit, stage = first_deadline, "first chunk"
    iterator = aiter(items)
    try:
        while True:
            try:
                async with asyncio.timeout_at(limit):
                    item = await anext(iterator, _END)
            except TimeoutError:
                late = "the call's total time limit" if limit >= options.deadline else "its time limit"
                raise TimeoutError(f"no {stage} within {late}") from None
            if item is _END:
                return
            limit, stage = min(loop.time() + options.idle_timeout_s, options.deadline), "next chunk"
            yield item  # type: ignore[misc]
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
