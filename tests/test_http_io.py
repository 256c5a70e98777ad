"""`unless_client_leaves`: the work runs in the handler's own task, a watcher cancels it when the client
leaves, and a result that nobody will take is handed to `discard`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.http_io import ClientGone, unless_client_leaves


class FakeRequest:
    """Just what `unless_client_leaves` reads: an ASGI `receive` that reports a disconnect on demand."""

    def __init__(self) -> None:
        self.left = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}


async def other_tasks() -> set[asyncio.Task[Any]]:
    await asyncio.sleep(0)  # let cancelled watchers finish
    await asyncio.sleep(0)
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_the_result_comes_back_and_the_watcher_goes() -> None:
    async def work() -> str:
        await asyncio.sleep(0.01)
        return "answer"

    assert await unless_client_leaves(FakeRequest(), work()) == "answer"  # type: ignore[arg-type]
    assert await other_tasks() == set()


async def test_a_client_leaving_cancels_the_work_and_raises_client_gone() -> None:
    request = FakeRequest()
    cleaned_up = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.set()
        return "never"

    asyncio.get_running_loop().call_later(0.01, request.left.set)
    with pytest.raises(ClientGone):
        await unless_client_leaves(request, work())  # type: ignore[arg-type]
    assert cleaned_up.is_set()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0)  # and no cancellation is left pending on the handler's task
    assert await other_tasks() == set()


async def test_a_result_made_while_the_client_left_is_discarded() -> None:
    request = FakeRequest()
    discarded: list[str] = []

    async def work() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "made anyway"  # e.g. an answer that completed inside a shielded step
        return "never"

    async def discard(result: str) -> None:
        discarded.append(result)

    asyncio.get_running_loop().call_later(0.01, request.left.set)
    with pytest.raises(ClientGone):
        await unless_client_leaves(request, work(), discard=discard)  # type: ignore[arg-type]
    assert discarded == ["made anyway"]
    await asyncio.sleep(0)
    assert await other_tasks() == set()


async def test_a_cancellation_from_outside_goes_on_up_and_releases_a_result_nobody_takes() -> None:
    discarded: list[str] = []
    started = asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "made anyway"
        return "never"

    async def discard(result: str) -> None:
        discarded.append(result)

    async def handler() -> str:
        return await unless_client_leaves(FakeRequest(), work(), discard=discard)  # type: ignore[arg-type]

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert discarded == ["made anyway"]
    assert await other_tasks() == set()


async def test_a_cancellation_from_outside_cancels_work_in_progress() -> None:
    started = asyncio.Event()
    cleaned_up = asyncio.Event()

    async def work() -> str:
        started.set()
        try:
            await asyncio.sleep(10)
        finally:
            cleaned_up.set()
        return "never"

    task = asyncio.create_task(unless_client_leaves(FakeRequest(), work()))  # type: ignore[arg-type]
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up.is_set()
    assert await other_tasks() == set()
