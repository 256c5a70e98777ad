"""Time limits on streamed answers, shared by every adapter that streams.

A stream must show its first item within the first-token limit, each later item within the idle limit,
and its last item before the call's deadline. The limits wrap only the wait for the next item (never
the consumer's own work between items), so a slow client cannot trip them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

from providers.base import CallOptions

Item = TypeVar("Item")
_END = object()


async def within_limits(items: AsyncIterator[Item], options: CallOptions) -> AsyncIterator[Item]:
    """Yield `items`, raising TimeoutError (with what was late) when the next one does not come in time."""
    loop = asyncio.get_running_loop()
    wait, stage = options.first_token_timeout_s, "first chunk"
    iterator = aiter(items)
    while True:
        limit = min(loop.time() + wait, options.deadline)
        try:
            async with asyncio.timeout_at(limit):
                item = await anext(iterator, _END)
        except TimeoutError:
            late = "the call's total time limit" if limit >= options.deadline else f"{wait:g}s"
            raise TimeoutError(f"no {stage} within {late}") from None
        if item is _END:
            return
        wait, stage = options.idle_timeout_s, "next chunk"
        yield item  # type: ignore[misc]
