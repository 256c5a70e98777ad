"""A leak check: after 10,000 requests with random client disconnects, open connections, asyncio tasks and
memory return to baseline.

The gateway runs in this process (uvicorn on its own thread and loop) with two kinds of deployment: the
built-in mock (no network, 5 ms to first token, 2000 tokens/s) and a fake OpenAI upstream over real HTTP,
so the shared upstream pool (aiohttp) really opens, reuses and closes connections. Two aliases: `mixed`
spreads requests over both by weight; `hedged` asks the upstream first and races the mock against it
after 3 ms, so hedge losers are cancelled and discarded all the time.

The client (httpx, on this thread's own loop, 50 requests at a time) sends a mix: half streamed, and
about 30% abandoned at a random point: before the answer's headers, or after 1-3 streamed chunks.

A warm-up of 500 requests comes first (imports, tokenizer, pools, caches), then the gateway is left to
come to rest and its state is the baseline. After the 10,000 requests and the same rest, it must be
back there:
- asyncio tasks on the gateway's loop: exactly the baseline's (a task per request left behind is a leak);
- live-stats in-flight counts: all 0; breakers: closed with no probe in flight;
- upstream connections checked out of the pool: 0; idle keep-alive ones expire (keep-alive is set to 1 s
  so that at rest the pool is empty and every connection still open is a held one);
- open file descriptors of the process: the baseline's, within a small slack;
- live objects of the gateway's own types, tasks, coroutines and async generators: the baseline's;
- memory (RSS) growth under 20 MB (see `MAX_RSS_GROWTH`);
- uvicorn's connection objects, 5 s later: none left (see `CENSUS`);
- nothing logged as an unhandled gateway error (a client leaving mid-body is a 499, not a gateway bug).
Every reading is taken with the test's client closed, so the process's descriptors and memory are the
gateway's and the two servers' (the fake upstream's too, but it keeps no per-request state: it counts).
The numbers and the run's duration are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvloop
from starlette.requests import Request

from gateway.app import create_app
from gateway.config import parse_config
from tests.fakes.openai_upstream import Behaviour, FakeOpenAI, Reply, StreamChunks
from tests.support.introspection import (
    GatewayState,
    client_connections_to,
    gateway_state,
    live_objects,
    on_loop,
    open_fds,
    rss_bytes,
    tcp_states,
)
from tests.support.server import ServerThread

WARM_UP = 500
REQUESTS = 10_000
CONCURRENCY = 50
CANCEL_SHARE = 0.3
SETTLE_S = 8.0  # the pool's idle connections expire in 1-2 s (keep-alive 1 s, checked every second)
FD_SLACK = 4
#: A leak of one request's worth of objects (its body, journey, plan, attempt records, stream state:
#: several KB) per request would grow the heap by tens of MB over 10,000 requests; allocator noise
#: (arenas kept by pymalloc and malloc after the peak of 50 concurrent requests) measured at a few MB.
#: Object-level leaks are caught exactly by the live-object census; this bounds what the census cannot
#: see (bytes held by C extensions, buffers).
MAX_RSS_GROWTH = 20 * 1024 * 1024
#: Modules whose objects are counted one by one: the gateway's own, and the HTTP stacks it drives.
#: uvicorn's are counted apart: a connection the client reset leaves its protocol object referenced by
#: uvicorn's keep-alive timer for `timeout_keep_alive` (5 s; uvicorn cancels that timer only on a clean
#: close), so they are checked once that has passed (`KEEP_ALIVE_S`).
CENSUS = ("gateway.", "routing.", "providers.", "aiohttp.", "httpx_aiohttp", "starlette.", "fastapi.")
KEEP_ALIVE_S = 5.0
MESSAGES = [{"role": "user", "content": "Tell me about connection pools."}]


class LeanUpstream(FakeOpenAI):
    """The fake OpenAI upstream, counting requests instead of keeping them (10,000 recorded requests would
    be memory the leak check has to tell apart), and streaming word by word with a small delay, so the
    gateway's client can leave in the middle of an upstream stream."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.script_forever(Reply(delay_s=0.005))

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        self.calls += 1  # only the fake's own loop thread writes it
        return json.loads(raw) if raw else None

    async def _apply(self, request: Request, behaviour: object, body: Any) -> tuple[Behaviour, Any]:
        if isinstance(behaviour, Reply) and isinstance(body, dict) and body.get("stream"):
            behaviour = StreamChunks(chunk_delay_s=0.002, chunks=8)
        return await super()._apply(request, behaviour, body)


def gateway_config(upstream_url: str) -> str:
    return f"""
server:
  watch_config: false
  http_client: {{keepalive_expiry_s: 1}}
  resilience:
    retry: {{attempts_per_deployment: 2, max_attempts: 4, backoff_base_ms: 5, backoff_max_ms: 20}}
providers:
  mock: {{type: mock, ttft_ms: 5, tokens_per_s: 2000, min_words: 8, max_words: 20}}
  up: {{type: openai, base_url: "{upstream_url}/v1", api_key: sk-leak-check}}
models:
  mixed:
    strategy: weighted
    deployments:
      - {{provider: mock, model: mock-chat-1}}
      - {{provider: up, model: up-chat-1}}
  hedged:
    hedge: {{after_ms: 3, min_after_ms: 0}}
    deployments:
      - {{provider: up, model: up-chat-1}}
      - {{provider: mock, model: mock-chat-1}}
"""


# --- the client side ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    alias: str
    stream: bool
    action: str  # complete | cancel_at (after `delay_s`, wherever the request is) | cancel_after_chunks
    delay_s: float = 0.0
    chunks: int = 0


def jobs(count: int, seed: int) -> Iterator[Job]:
    rng = random.Random(seed)
    for _ in range(count):
        alias = "hedged" if rng.random() < 0.3 else "mixed"
        stream = rng.random() < 0.5
        if rng.random() >= CANCEL_SHARE:
            yield Job(alias, stream, "complete")
        elif stream and rng.random() < 0.5:
            yield Job(alias, stream, "cancel_after_chunks", chunks=rng.randint(1, 3))
        else:
            yield Job(alias, stream, "cancel_at", delay_s=rng.uniform(0.0005, 0.03))


async def one(client: httpx.AsyncClient, job: Job, tally: Counter[str]) -> None:
    body: dict[str, Any] = {"model": job.alias, "messages": MESSAGES, "stream": job.stream}
    progress = {"headers": False, "chunks": 0}
    hedged = {"won": False, "fired": False}

    async def request() -> None:
        if not job.stream:
            response = await client.post("/v1/chat/completions", json=body)
            progress["headers"] = True
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"]
            hedged["won"] = response.headers.get("x-gateway-fallback-reason") == "hedge"
            hedged["fired"] = job.alias == "hedged" and response.headers.get("x-gateway-attempts") == "2"
            return
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            progress["headers"] = True
            assert response.status_code == 200, await response.aread()
            hedged["won"] = response.headers.get("x-gateway-fallback-reason") == "hedge"
            hedged["fired"] = job.alias == "hedged" and response.headers.get("x-gateway-attempts") == "2"
            last = None
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                last = line[6:]
                assert '"error"' not in last, last
                progress["chunks"] += 1
                if job.action == "cancel_after_chunks" and progress["chunks"] >= job.chunks:
                    return  # leaving the block closes the response mid-stream: the connection is dropped
            assert last == "[DONE]", last

    if job.action != "cancel_at":
        await request()
        tally["cut_after_chunks" if job.action == "cancel_after_chunks" else "completed"] += 1
        tally["hedge_fired"] += hedged["fired"]  # not outcomes: these two are counted on the side
        tally["hedge_won"] += hedged["won"]
        return
    try:
        await asyncio.wait_for(request(), job.delay_s)
    except TimeoutError:
        if not progress["headers"]:
            tally["cut_before_headers"] += 1
        else:
            tally["cut_mid_answer"] += 1
    else:
        tally["completed_before_cut"] += 1


async def load(url: str, count: int, seed: int) -> tuple[Counter[str], float]:
    """`count` jobs, CONCURRENCY at a time, from a client that is closed at the end (so it holds nothing)."""
    tally: Counter[str] = Counter()
    work = jobs(count, seed)
    failures: list[str] = []

    async def worker() -> None:
        for job in work:  # one shared iterator: each job is taken by exactly one worker
            try:
                await one(client, job, tally)
            except Exception as exc:
                failures.append(f"{job}: {type(exc).__name__}: {exc}")

    # The client drops idle connections before the server's keep-alive (5 s) would: else, on a loaded
    # machine, a request sent just as the server closes its connection is reset (as with any HTTP/1.1 pair).
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY, keepalive_expiry=2.0)
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, trust_env=False) as client:
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} requests failed, e.g. {failures[:5]}"
    return tally, elapsed


# --- the gateway at rest ------------------------------------------------------------------------------


@dataclass
class Rest:
    state: GatewayState
    fds: int
    upstream_connections: int  # the gateway's ESTABLISHED connections to the upstream fake
    gateway_tcp: Counter[str]
    upstream_tcp: Counter[str]
    rss: int
    objects: Counter[str]
    waited_s: float


def at_rest(
    app: Any, loop: asyncio.AbstractEventLoop, gateway_port: int, upstream_port: int, baseline: Rest | None
) -> Rest:
    """Wait (up to SETTLE_S) until the gateway is idle: nothing in flight, nothing checked out, the pool's
    idle connections expired and, after a run, tasks and descriptors back to the baseline's; then read it."""
    started = time.monotonic()
    while True:
        gc.collect()  # sockets dropped without close are closed by their finalizers
        state = on_loop(loop, lambda: gateway_state(app))
        fds = open_fds()
        upstream = client_connections_to(upstream_port)
        quiet = (
            not any(state.in_flight.values())
            and state.pool_acquired in (0, None)
            and upstream == 0
            and (baseline is None or (len(state.tasks) <= len(baseline.state.tasks) and fds <= baseline.fds))
        )
        if quiet or time.monotonic() - started > SETTLE_S:
            break
        time.sleep(0.1)
    waited = time.monotonic() - started
    return Rest(
        state=state,
        fds=fds,
        upstream_connections=upstream,
        gateway_tcp=tcp_states(gateway_port),
        upstream_tcp=tcp_states(upstream_port),
        rss=rss_bytes(),
        objects=live_objects(CENSUS),
        waited_s=waited,
    )


def grown(before: Counter[str], after: Counter[str]) -> dict[str, tuple[int, int]]:
    return {name: (before[name], after[name]) for name in sorted(set(after)) if after[name] > before[name]}


@pytest.mark.timeout(240)  # it runs for ~50 s by design; slow machines get room
def test_ten_thousand_requests_with_disconnects_leave_nothing_behind(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="llm_gateway")
    upstream = LeanUpstream()
    with ServerThread(upstream.app) as upstream_server:
        app = create_app(parse_config(gateway_config(upstream_server.url), "leaks.yaml"))
        with ServerThread(app) as gateway:
            loop = gateway.loop
            assert loop is not None
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                warm_tally, warm_s = runner.run(load(gateway.url, WARM_UP, seed=1))
                baseline = at_rest(app, loop, gateway.port, upstream_server.port, None)
                tally, run_s = runner.run(load(gateway.url, REQUESTS, seed=2))
                ended = time.monotonic()
                upstream_calls = upstream.calls
                after = at_rest(app, loop, gateway.port, upstream_server.port, baseline)
            # By now every keep-alive timer of a reset connection has fired: no server connection object
            # may remain, neither the gateway's nor the upstream fake's (both have no connection open).
            time.sleep(max(ended + KEEP_ALIVE_S + 0.5 - time.monotonic(), 0.0))
            uvicorn_objects = live_objects(("uvicorn.protocols.",), coroutines=False)

    unhandled = Counter(
        str(record.args[0]) if isinstance(record.args, tuple) and record.args else record.getMessage()
        for record in caplog.records
        if record.name == "llm_gateway" and record.getMessage().startswith("unhandled")
    )
    base_state, state = baseline.state, after.state
    objects_grown = grown(baseline.objects, after.objects)
    rate = REQUESTS / run_s
    print(f"\n--- leak check: {REQUESTS} requests in {run_s:.1f} s ({rate:.0f}/s), concurrency {CONCURRENCY}")
    print(f"  warm-up: {WARM_UP} requests in {warm_s:.1f} s: {dict(warm_tally)}")
    print(f"  run: {dict(tally)}; upstream fake got {upstream_calls} calls in all")
    print(f"  came to rest in {baseline.waited_s:.1f} s (baseline) and {after.waited_s:.1f} s (after)")
    print(f"  tasks on the gateway loop: {len(base_state.tasks)} -> {len(state.tasks)}: {sorted(state.tasks)}")
    print(f"  in flight: {state.in_flight}")
    probes = {key: b["probes_in_flight"] for key, b in state.breakers.items()}
    print(f"  breakers: { ({key: b['state'] for key, b in state.breakers.items()}) }, probes in flight {probes}")
    print(
        f"  upstream pool: acquired {base_state.pool_acquired} -> {state.pool_acquired}, "
        f"idle {base_state.pool_idle} -> {state.pool_idle}; "
        f"connections to the upstream {baseline.upstream_connections} -> {after.upstream_connections}"
    )
    print(f"  tcp at the gateway's port: {dict(baseline.gateway_tcp)} -> {dict(after.gateway_tcp)}")
    print(f"  tcp at the upstream's port: {dict(baseline.upstream_tcp)} -> {dict(after.upstream_tcp)}")
    print(f"  open fds: {baseline.fds} -> {after.fds}")
    print(
        f"  RSS: {baseline.rss / 2**20:.1f} MB -> {after.rss / 2**20:.1f} MB "
        f"({(after.rss - baseline.rss) / 2**20:+.1f} MB)"
    )
    counted = f"{sum(baseline.objects.values())} -> {sum(after.objects.values())}"
    print(f"  live objects counted: {counted}; grown: {objects_grown}")
    print(f"  uvicorn connection objects {KEEP_ALIVE_S:g} s after the run: {dict(uvicorn_objects)}")
    print(f"  logged as unhandled by the gateway: {dict(unhandled)}")

    cut = tally["cut_before_headers"] + tally["cut_mid_answer"] + tally["cut_after_chunks"]
    assert sum(tally.values()) - tally["hedge_won"] - tally["hedge_fired"] == REQUESTS
    assert tally["hedge_fired"] >= 300, tally  # hedges raced, and their losers were cancelled
    assert cut >= 0.15 * REQUESTS, tally  # the disconnects really happened, at every stage
    assert tally["cut_before_headers"] >= 200 and tally["cut_after_chunks"] >= 500, tally
    assert upstream_calls >= 0.3 * REQUESTS  # real upstream traffic, not just the mock

    assert sorted(state.tasks) == sorted(base_state.tasks), "tasks left on the gateway's loop"
    assert all(count == 0 for count in state.in_flight.values()), state.in_flight
    assert all(b["probes_in_flight"] == 0 for b in state.breakers.values()), state.breakers
    assert all(b["state"] == "closed" for b in state.breakers.values()), state.breakers
    assert state.pool_acquired == 0, "upstream connections checked out and never released"
    assert after.upstream_connections <= baseline.upstream_connections
    assert after.fds <= baseline.fds + FD_SLACK
    assert not objects_grown, objects_grown
    assert after.rss - baseline.rss < MAX_RSS_GROWTH
    assert not uvicorn_objects, uvicorn_objects
    assert not unhandled, unhandled
