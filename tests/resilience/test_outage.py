"""An outage of one provider for 30 s under steady load: for the app it is a non-event.

An alias has two deployments, `primary` (fake upstream A) and `secondary` (fake upstream B), tried in
order. Steady open-loop traffic (30 requests/s, half of them streamed) runs through three phases:
A healthy for 3 s, A answering 503 to everything for 30 s, A healthy again for 9 s.

What must hold:
- every client request succeeds (200, and a stream that ends with `[DONE]` and no error event);
- during the outage A is asked only a handful of times: the calls that trip its breaker, the retries
  its retry budget allows, and one half-open probe per cooldown; far fewer than the client requests
  of the outage (what A would have received without a breaker);
- during the outage the traffic is served by B;
- the breaker is open during the outage; after it, a probe half-opens it and closes it, and A serves
  the traffic again.

The breaker's state is sampled every 0.5 s, both from `GET /admin/deployments` (when that endpoint
reports a circuit: it is being added) and from the breaker itself, read on the gateway's loop. The first
answer A gives after the outage is delayed by 1 s, so the half-open state (one probe in flight) lasts
long enough to be seen by the sampler. Counts and the timeline are printed (run with -s).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvloop

from gateway.app import create_app
from gateway.config import parse_config
from tests.fakes.openai_upstream import Error, FakeOpenAI, Reply
from tests.support.introspection import breaker_snapshot, on_loop_async
from tests.support.server import ServerThread

ADMIN_KEY = "outage-admin-key"
ADMIN = {"x-admin-key": ADMIN_KEY}
PRIMARY, SECONDARY = "primary/model-a", "secondary/model-b"
MESSAGES = [{"role": "user", "content": "Say something about outages."}]

RATE_PER_S = 30
HEALTHY_S, OUTAGE_S, RECOVERY_S = 3.0, 30.0, 9.0
FINAL_S = 3.0  # the last seconds of the recovery, in which A must serve (nearly) everything again
SAMPLE_EVERY_S = 0.5
PROBE_DELAY_S = 1.0  # A's first answer after the outage: keeps the breaker visibly half-open

# Resilience settings, chosen so each phase is visible within the test's 42 s.
ATTEMPTS_PER_DEPLOYMENT = 2
CONSECUTIVE_FAILURES = 5
COOLDOWN_S, MAX_COOLDOWN_S = 2.0, 4.0
HALF_OPEN_PROBES = 1
BUDGET_RATIO, BUDGET_WINDOW_S, BUDGET_MIN = 0.2, 10.0, 3


def gateway_config(a_url: str, b_url: str) -> str:
    timeouts = "{connect_s: 2, first_token_s: 10, idle_s: 10, total_s: 20}"
    return f"""
admin: {{api_key_sha256: {hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}}}
server:
  watch_config: false
  resilience:
    retry: {{attempts_per_deployment: {ATTEMPTS_PER_DEPLOYMENT}, max_attempts: 4, backoff_base_ms: 20,
             backoff_max_ms: 100}}
    retry_budget: {{ratio: {BUDGET_RATIO}, window_s: {BUDGET_WINDOW_S}, min_per_window: {BUDGET_MIN}}}
    circuit_breaker: {{enabled: true, consecutive_failures: {CONSECUTIVE_FAILURES}, error_rate: 0.5, min_calls: 20,
                      window_s: 10, cooldown_s: {COOLDOWN_S}, max_cooldown_s: {MAX_COOLDOWN_S},
                      half_open_probes: {HALF_OPEN_PROBES}}}
providers:
  primary: {{type: openai, base_url: "{a_url}/v1", api_key: sk-primary-1}}
  secondary: {{type: openai, base_url: "{b_url}/v1", api_key: sk-secondary-2}}
models:
  chat:
    strategy: ordered
    deployments:
      - {{provider: primary, model: model-a, timeouts: {timeouts}}}
      - {{provider: secondary, model: model-b, timeouts: {timeouts}}}
"""


# --- what the driver records ---------------------------------------------------------------------------


@dataclass
class Result:
    started: float  # seconds since the load began
    stream: bool
    ok: bool = False
    status: int = 0
    served_by: str | None = None  # x-gateway-provider
    attempts: int = 0  # x-gateway-attempts
    detail: str = ""


@dataclass
class Sample:
    at: float
    internal: str  # the breaker's state as its snapshot reports it (open past its cooldown reads half_open)
    raw: str  # the breaker's state field itself
    times_opened: int
    admin: str | None  # the state `GET /admin/deployments` reports for A, None when it reports none


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)  # phase boundaries, seconds since the load began
    a_calls: dict[str, int] = field(default_factory=dict)  # A's request count at each boundary
    b_calls: dict[str, int] = field(default_factory=dict)
    admin_keys: set[str] = field(default_factory=set)  # the fields the admin endpoint reports per deployment


async def one_request(client: httpx.AsyncClient, result: Result) -> None:
    body: dict[str, Any] = {"model": "chat", "messages": MESSAGES}
    try:
        if result.stream:
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
                result.status = response.status_code
                result.served_by = response.headers.get("x-gateway-provider")
                result.attempts = int(response.headers.get("x-gateway-attempts", "0"))
                payloads = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
            errors = [p for p in payloads if p != "[DONE]" and "error" in json.loads(p)]
            result.ok = result.status == 200 and bool(payloads) and payloads[-1] == "[DONE]" and not errors
            if not result.ok:
                result.detail = f"stream {result.status}: {payloads[-2:]!r}"
        else:
            response = await client.post("/v1/chat/completions", json=body)
            result.status = response.status_code
            result.served_by = response.headers.get("x-gateway-provider")
            result.attempts = int(response.headers.get("x-gateway-attempts", "0"))
            result.ok = result.status == 200 and bool(response.json()["choices"][0]["message"]["content"])
            if not result.ok:
                result.detail = f"{result.status}: {response.text[:200]}"
    except Exception as exc:  # the client saw a broken answer: report it, do not crash the load
        result.detail = f"{type(exc).__name__}: {exc}"


def admin_state(payload: dict[str, Any], run: Run) -> str | None:
    for entry in payload.get("data", []):
        run.admin_keys.update(entry)
        if entry.get("deployment") != PRIMARY:
            continue
        circuit = entry.get("circuit")
        if isinstance(circuit, dict):
            return str(circuit.get("state"))
        if isinstance(circuit, str):
            return circuit
    return None


async def sample_states(
    client: httpx.AsyncClient, app: Any, loop: asyncio.AbstractEventLoop, run: Run, t0: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        at = time.monotonic() - t0
        snapshot = await on_loop_async(loop, lambda: breaker_snapshot(app, PRIMARY))
        response = await client.get("/admin/deployments", headers=ADMIN)
        assert response.status_code == 200, response.text
        admin = admin_state(response.json(), run)
        run.samples.append(Sample(at, snapshot["state"], snapshot["raw_state"], snapshot["times_opened"], admin))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY_S)
        except TimeoutError:
            pass


async def drive(url: str, app: Any, loop: asyncio.AbstractEventLoop, a: FakeOpenAI, b: FakeOpenAI) -> Run:
    run = Run()
    rng = random.Random(20240601)
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits, trust_env=False) as client:
        t0 = time.monotonic()
        stop_sampling = asyncio.Event()
        sampler = asyncio.create_task(sample_states(client, app, loop, run, t0, stop_sampling))
        pending: set[asyncio.Task[None]] = set()
        schedule = [
            ("outage", HEALTHY_S),
            ("recovery", HEALTHY_S + OUTAGE_S),
            ("final", HEALTHY_S + OUTAGE_S + RECOVERY_S - FINAL_S),
            ("end", HEALTHY_S + OUTAGE_S + RECOVERY_S),
        ]
        run.marks["start"], run.a_calls["start"], run.b_calls["start"] = 0.0, len(a.requests), len(b.requests)
        sent = 0
        for mark, at in schedule:
            # Open-loop load: request n starts at n / RATE, whatever the answers are doing.
            while sent / RATE_PER_S < at:
                delay = t0 + sent / RATE_PER_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                result = Result(started=time.monotonic() - t0, stream=rng.random() < 0.5)
                run.results.append(result)
                task = asyncio.create_task(one_request(client, result))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            run.marks[mark] = time.monotonic() - t0
            run.a_calls[mark], run.b_calls[mark] = len(a.requests), len(b.requests)
            if mark == "outage":
                a.script_forever(Error(503))
            elif mark == "recovery":
                a.script(Reply(delay_s=PROBE_DELAY_S))  # the first call after the outage: the probe
                a.script_forever(Reply())
        if pending:
            await asyncio.wait(pending, timeout=30)
        run.a_calls["drained"], run.b_calls["drained"] = len(a.requests), len(b.requests)
        stop_sampling.set()
        await sampler
    return run


# --- the expected bound --------------------------------------------------------------------------------


def probes_within(seconds: float) -> int:
    """Half-open probes an always-failing deployment gets in `seconds` after its breaker opened: one per
    cooldown, the cooldown doubling from `cooldown_s` up to `max_cooldown_s`; +1 for a probe falling on
    the boundary (timers and the request schedule are not exact)."""
    elapsed, cooldown, probes = 0.0, COOLDOWN_S, 0
    while elapsed + cooldown <= seconds:
        elapsed += cooldown
        probes += 1
        cooldown = min(cooldown * 2, MAX_COOLDOWN_S)
    return probes + 1


def outage_bound(a_first_attempts_before: int) -> tuple[int, dict[str, int]]:
    """The most calls A may get during the outage, from the settings alone:

    - `consecutive_failures` calls trip the breaker;
    - retries, as the retry budget allows them: per sliding window, `ratio` x the first attempts A received
      in it (the healthy phase's are still in the first window), at least `min_per_window`; the outage
      overlaps ceil(outage / window) + 1 windows;
    - half-open probes, each of which might be retried (`attempts_per_deployment` calls per probe).
    """
    probes = probes_within(OUTAGE_S)
    windows = math.ceil(OUTAGE_S / BUDGET_WINDOW_S) + 1
    firsts = a_first_attempts_before + CONSECUTIVE_FAILURES + probes
    retries = math.ceil(BUDGET_RATIO * firsts) + BUDGET_MIN * windows
    parts = {
        "trip": CONSECUTIVE_FAILURES,
        "budget_retries": retries,
        "probe_calls": probes * HALF_OPEN_PROBES * ATTEMPTS_PER_DEPLOYMENT,
    }
    return sum(parts.values()), parts


# --- the test ------------------------------------------------------------------------------------------


def states_between(samples: list[Sample], start: float, end: float, attr: str) -> list[str | None]:
    return [getattr(s, attr) for s in samples if start <= s.at < end]


def collapse(states: list[Any]) -> list[Any]:
    """The state sequence with repeats removed: closed, open, half_open, open, ... ."""
    out: list[Any] = []
    for state in states:
        if not out or out[-1] != state:
            out.append(state)
    return out


@pytest.mark.timeout(150)  # it runs for ~45 s by design; slow machines get room
def test_an_outage_of_the_primary_is_a_non_event_for_the_app() -> None:
    a, b = FakeOpenAI(), FakeOpenAI()
    with ServerThread(a.app) as upstream_a, ServerThread(b.app) as upstream_b:
        app = create_app(parse_config(gateway_config(upstream_a.url, upstream_b.url), "outage.yaml"))
        with ServerThread(app) as gateway:
            assert gateway.loop is not None
            started = time.monotonic()
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                run = runner.run(drive(gateway.url, app, gateway.loop, a, b))
            elapsed = time.monotonic() - started

    marks, results, samples = run.marks, run.results, run.samples

    def phase_of(result: Result) -> str:
        if result.started < marks["outage"]:
            return "healthy"
        if result.started < marks["recovery"]:
            return "outage"
        return "recovery"

    by_phase: dict[str, list[Result]] = {"healthy": [], "outage": [], "recovery": []}
    for result in results:
        by_phase[phase_of(result)].append(result)
    a_healthy = run.a_calls["outage"] - run.a_calls["start"]
    a_outage = run.a_calls["recovery"] - run.a_calls["outage"]
    a_recovery = run.a_calls["drained"] - run.a_calls["recovery"]
    b_outage = run.b_calls["recovery"] - run.b_calls["outage"]
    bound, parts = outage_bound(a_healthy)
    final = [r for r in results if r.started >= marks["final"]]
    final_by_a = sum(r.served_by == "primary" for r in final)
    internal = collapse([s.internal for s in samples])
    raw = collapse([s.raw for s in samples])
    admin_states = [s.admin for s in samples]
    admin_reports_circuit = any(state is not None for state in admin_states)

    print(f"\n--- outage under load: {len(results)} requests in {elapsed:.1f} s ({RATE_PER_S}/s, half streamed)")
    for name, group in by_phase.items():
        served = Counter(r.served_by for r in group)
        attempts = Counter(r.attempts for r in group)
        print(
            f"  {name:9s} client requests {len(group):4d}  ok {sum(r.ok for r in group):4d}  "
            f"served by {dict(served)}  x-gateway-attempts {dict(sorted(attempts.items()))}"
        )
    print(f"  A's calls: healthy {a_healthy}, outage {a_outage} (bound {bound}: {parts}), recovery {a_recovery}")
    print(f"  B's calls during the outage: {b_outage}")
    print(f"  final {FINAL_S:g} s: {final_by_a}/{len(final)} served by A")
    print(f"  breaker timeline (snapshot): {internal}")
    print(f"  breaker timeline (state field): {raw}; opened {samples[-1].times_opened} times")
    print(
        "  timeline: "
        + " ".join(f"{s.at:.1f}:{s.internal[0].upper()}{'' if s.admin is None else '/' + s.admin[0]}" for s in samples)
    )
    if admin_reports_circuit:
        print(f"  admin /deployments circuit timeline: {collapse(admin_states)}")
    else:
        print(f"  admin /deployments reports no circuit state yet (fields per deployment: {sorted(run.admin_keys)})")

    # 1. The outage is a non-event for the app: every request succeeded.
    failed = [r for r in results if not r.ok]
    assert not failed, f"{len(failed)} client requests failed, e.g. {[(r.started, r.detail) for r in failed[:5]]}"
    assert len(by_phase["outage"]) >= RATE_PER_S * OUTAGE_S * 0.95

    # 2. A was spared: a handful of calls (trip, budgeted retries, probes), nothing like one per request.
    assert a_outage <= bound, f"A got {a_outage} calls during the outage; the settings allow at most {bound}"
    without_breaker = len(by_phase["outage"])  # at least one call per client request
    assert bound <= without_breaker / 10
    assert a_outage <= without_breaker / 20
    assert a_outage >= CONSECUTIVE_FAILURES + 3  # it did trip, and was probed again and again

    # 3. B carried the outage.
    interior = [r for r in by_phase["outage"] if r.started < marks["recovery"] - 0.5]
    assert all(r.served_by == "secondary" for r in interior), Counter(r.served_by for r in interior)
    assert b_outage >= len(interior)
    # Once the breaker is open, requests go to B at once: one attempt, no retry on A first.
    settled = [r for r in interior if r.started >= marks["outage"] + 1.0]
    assert sum(r.attempts == 1 for r in settled) >= 0.95 * len(settled)

    # 4. The breaker: open during the outage, then half-open and closed after it.
    during = states_between(samples, marks["outage"] + 0.5, marks["recovery"], "raw")
    assert during and during.count("open") >= 0.8 * len(during), during
    after = collapse(states_between(samples, marks["recovery"], math.inf, "internal"))
    assert "half_open" in after and after[-1] == "closed", after
    assert after.index("half_open") < len(after) - 1 - after[::-1].index("closed")
    assert samples[-1].times_opened >= 3  # the trip, and at least two failed probes re-opened it
    if admin_reports_circuit:
        admin_during = states_between(samples, marks["outage"] + 0.5, marks["recovery"], "admin")
        assert admin_during.count("open") + admin_during.count("half_open") == len(admin_during), admin_during
        assert "open" in admin_during
        admin_after = collapse(states_between(samples, marks["recovery"], math.inf, "admin"))
        assert "half_open" in admin_after and admin_after[-1] == "closed", admin_after

    # 5. A serves again: a healthy primary is preferred as soon as its breaker closed.
    assert a_recovery >= 0.5 * len(by_phase["recovery"])
    assert final_by_a >= 0.9 * len(final), Counter(r.served_by for r in final)
