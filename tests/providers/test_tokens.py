"""Loading the tokenizer where the config did not need it at start-up: off the event loop, once."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time

import pytest

from providers import tokens


async def test_ready_loads_the_encoding_in_a_worker_thread_once(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[threading.Thread] = []
    ticks_while_loading: list[int] = []

    def load(name: str = tokens.DEFAULT_ENCODING) -> None:
        loads.append(threading.current_thread())
        before = ticks
        time.sleep(0.05)  # a slow load: the event loop must keep running meanwhile
        ticks_while_loading.append(ticks - before)
        tokens._loaded.add(name)

    monkeypatch.setattr(tokens, "encoding", load)
    monkeypatch.setattr(tokens, "_loaded", set())
    monkeypatch.setattr(tokens, "_loading", {})
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
    assert ticks_while_loading[0] > 0


async def test_callers_arriving_during_the_load_share_it(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = 0
    release = threading.Event()

    def load(name: str = tokens.DEFAULT_ENCODING) -> None:
        nonlocal loads
        loads += 1
        release.wait(5)
        tokens._loaded.add(name)

    monkeypatch.setattr(tokens, "encoding", load)
    monkeypatch.setattr(tokens, "_loaded", set())
    monkeypatch.setattr(tokens, "_loading", {})
    waiting = [asyncio.create_task(tokens.ready()) for _ in range(20)]
    await asyncio.sleep(0.05)
    release.set()
    await asyncio.gather(*waiting)
    assert loads == 1
    assert tokens._loading == {}


async def test_counting_after_ready_uses_the_real_encoding() -> None:
    await tokens.ready()
    assert tokens.DEFAULT_ENCODING in tokens._loaded
    assert tokens.count_text("hello world") == 2


def test_the_loaded_encoding_keeps_no_python_copy_of_its_ranks_and_still_counts_and_pickles() -> None:
    loaded = tokens.encoding()
    assert not hasattr(loaded, "_mergeable_ranks")  # about 20 MB of bytes objects, freed
    text = "Tokens: 123 ünïcödé 字 <|endoftext|>"
    assert loaded.decode(loaded.encode(text, disallowed_special=())) == text
    assert tokens.count_text("hello world") == 2
    restored = pickle.loads(pickle.dumps(loaded))  # registered encodings pickle by name
    assert restored.encode(text, disallowed_special=()) == loaded.encode(text, disallowed_special=())
