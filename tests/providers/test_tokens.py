"""Loading the tokenizer where the config did not need it at start-up: off the event loop, once."""

from __future__ import annotations

import asyncio
import threading

import pytest

from providers import tokens


async def test_ready_loads_the_encoding_in_a_worker_thread_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[threading.Thread] = []

    def load(name: str = tokens.DEFAULT_ENCODING) -> None:
        loads.append(threading.current_thread())
        tokens._loaded.add(name)

    monkeypatch.setattr(tokens, "encoding", load)
    monkeypatch.setattr(tokens, "_loaded", set())
    ticks = 0

    async def loop_keeps_running() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(loop_keeps_running())
    await tokens.ready()
    await tokens.ready()
    ticker.cancel()
    assert len(loads) == 1
    assert loads[0] is not threading.main_thread()
    assert ticks > 0


async def test_counting_after_ready_uses_the_real_encoding() -> None:
    await tokens.ready()
    assert tokens.DEFAULT_ENCODING in tokens._loaded
    assert tokens.count_text("hello world") == 2
