"""Read-only looks inside a gateway served in-process: its loop's tasks, live stats, breakers, pools.

Everything the gateway holds lives on its server loop and is touched without locks, so every reading
here runs *on that loop* (`on_loop`), never from the test thread. Process-wide readings (file
descriptors, TCP connections, memory, live objects) come from /proc and the garbage collector.
Nothing here changes the gateway's state.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

#: The TCP states of /proc/net/tcp, by their hex code.
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def on_loop(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, T]], timeout_s: float = 10.0) -> T:
    """Run `make()` on `loop` (another thread's) and return its result, from a thread outside it."""
    return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout_s)


async def on_loop_async(loop: asyncio.AbstractEventLoop, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`on_loop` for a caller that is itself a coroutine on its own loop."""
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))


@dataclass
class GatewayState:
    """What a gateway holds at one moment, read on its loop."""

    tasks: list[str]  # one description per task on the loop (the reading's own task excluded)
    in_flight: dict[str, int]  # live-stats in-flight count per deployment key
    breakers: dict[str, dict[str, Any]]  # per deployment key: the breaker's snapshot plus probes_in_flight
    pool_acquired: int | None  # upstream connections checked out of the shared pool (None: pool not made yet)
    pool_idle: int | None  # keep-alive connections waiting in the pool
    extra: dict[str, Any] = field(default_factory=dict)


def describe_task(task: asyncio.Task[Any]) -> str:
    """A task's coroutine and where it is suspended: enough to tell which code left it running."""
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", type(coro).__name__)
    frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
    where = f" at {frame.f_code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno}" if frame is not None else ""
    # Follow the await chain to the innermost coroutine: that is where the task is really waiting.
    inner = coro
    depth = 0
    while depth < 20:
        awaited = getattr(inner, "cr_await", None) or getattr(inner, "ag_await", None)
        if awaited is None or not hasattr(awaited, "cr_frame") and not hasattr(awaited, "ag_frame"):
            break
        inner, depth = awaited, depth + 1
    inner_frame = getattr(inner, "cr_frame", None) or getattr(inner, "ag_frame", None)
    if inner is not coro and inner_frame is not None:
        where += f" -> {getattr(inner, '__qualname__', '?')} at "
        where += f"{inner_frame.f_code.co_filename.rsplit('/', 2)[-1]}:{inner_frame.f_lineno}"
    return f"{name}{where}"


def _pool(runtime: Any) -> tuple[int | None, int | None]:
    """Acquired and idle connections of the aiohttp pool that both paths of the runtime's client share
    (private attributes of aiohttp, read defensively: None when the layout is not the known one)."""
    session = runtime.http.session()
    connector = getattr(session, "connector", None)
    acquired = getattr(connector, "_acquired", None)
    conns = getattr(connector, "_conns", None)
    if acquired is None or conns is None:
        return None, None
    return len(acquired), sum(len(queue) for queue in conns.values())


async def gateway_state(app: Any) -> GatewayState:
    """Read on the gateway's loop: call as `on_loop(loop, lambda: gateway_state(app))`."""
    runtime = app.state.runtime
    me = asyncio.current_task()
    tasks = [describe_task(task) for task in asyncio.all_tasks() if task is not me]
    now = time.monotonic()
    keys = sorted({d.key for d in runtime.router.all_deployments()})
    in_flight = {key: runtime.router.stats.get(key).in_flight for key in keys}
    breakers = {}
    for key in keys:
        breaker = runtime.executor.circuits.get(key)
        breakers[key] = {**breaker.snapshot(now), "probes_in_flight": breaker.probes_in_flight}
    acquired, idle = _pool(runtime)
    return GatewayState(tasks, in_flight, breakers, acquired, idle)


async def breaker_snapshot(app: Any, key: str) -> dict[str, Any]:
    """One deployment's breaker as `snapshot` reports it, plus its raw state and probes in flight."""
    breaker = app.state.runtime.executor.circuits.get(key)
    return {
        **breaker.snapshot(time.monotonic()),
        "raw_state": breaker.state.value,
        "probes_in_flight": breaker.probes_in_flight,
    }


# --- process-wide readings ---------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tcp_states(port: int) -> Counter[str]:
    """States of this host's IPv4 TCP sockets with `port` at either end (both ends, when both are here)."""
    states: Counter[str] = Counter()
    try:
        with open("/proc/net/tcp") as table:
            next(table)
            for line in table:
                parts = line.split()
                local, remote, state = parts[1], parts[2], parts[3]
                if int(local.split(":")[1], 16) == port or int(remote.split(":")[1], 16) == port:
                    states[TCP_STATES.get(state, state)] += 1
    except OSError:
        pass
    return states


def client_connections_to(port: int) -> int:
    """ESTABLISHED sockets connected *to* `port` (the client side only; the listener's accepted ends have
    `port` as their local port and are not counted)."""
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            parts = line.split()
            if parts[3] == "01" and int(parts[2].split(":")[1], 16) == port:
                count += 1
    return count


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def live_objects(prefixes: tuple[str, ...], *, coroutines: bool = True) -> Counter[str]:
    """Live garbage-collected objects whose type is defined in a module starting with one of `prefixes`
    (and, with `coroutines`, tasks, coroutines and async generators wherever defined), by type; after a
    full collection."""
    gc.collect()
    counts: Counter[str] = Counter()
    generic = {"Task", "coroutine", "async_generator"} if coroutines else set()
    for obj in gc.get_objects():
        kind = type(obj)
        module = kind.__dict__.get("__module__") or getattr(kind, "__module__", "")
        if not isinstance(module, str):
            module = ""  # a class whose instances have a `__module__` attribute of their own
        if module.startswith(prefixes) or kind.__name__ in generic:
            counts[f"{module}.{kind.__qualname__}"] += 1
    return counts
