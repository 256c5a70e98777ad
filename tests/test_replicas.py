"""Three `llm-gateway serve` processes sharing one Redis, under concurrent load from many clients.

What replicas promise together (gateway/limits/scripts.py): admission is one atomic Lua call, so
- a tenant's budget is overspent by at most what the requests in flight cost above their estimates
  (here the bound is computed from what was measured: concurrency × the largest overrun seen);
- a requests-per-minute limit admits exactly its limit within the window, whichever process is asked.

Each process has its own ledger; they share nothing but Redis. Clients spread their requests round-robin
over the three, mixing plain and streamed answers. Run with `-s` to see the measured numbers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway.costs import estimated_cost_usd
from gateway.limits.plan import plan_for, to_micro
from gateway.tenancy import Caller, TenantConfig
from providers.schema import ChatCompletionRequest
from routing.config import Price
from routing.context import RequestFacts
from tests.support.server import free_port

REPO = Path(__file__).resolve().parent.parent
PROCESSES = 3
CLIENTS = 60  # concurrent client tasks, so at most this many requests are ever in flight
PRICE = Price(input_per_mtok=1000, output_per_mtok=2000)  # absurd prices: each request costs cents
MAX_TOKENS = 40  # every request caps its output, so the gateway's estimate is known here too
BUDGET_USD = 8.0  # about 100 requests at ~$0.07 each
RPM = 300
ADMIN_KEY = f"admin-{uuid.uuid4().hex}"

#: Answers of 10-60 words, so some stop on their own and some at MAX_TOKENS: actual costs vary below
#: the estimate. ~20 ms to the first token and ~20 ms of output keep many requests in flight at once.
CONFIG = """
server: {{watch_config: false, shutdown_grace_s: 5}}
state: {{redis_url: '{redis_url}'}}
admin: {{api_key_sha256: {admin_sha}}}
ledger: {{url: 'sqlite:///{ledger}', spill_path: '{spill}', flush_interval_s: 0.1}}
providers:
  m: {{type: mock, ttft_ms: 20, tokens_per_s: 2000, min_words: 10, max_words: 60}}
models:
  chat:
    deployments:
      - provider: m
        model: mock-chat-1
        price: {{input_per_mtok: {input_price}, output_per_mtok: {output_price}}}
tenants:
  {spender}:
    keys: [{{sha256: {spender_sha}}}]
    budgets: {{daily_usd: {budget}}}
  {burst}:
    keys: [{{sha256: {burst_sha}}}]
    rate_limits: {{rpm: {rpm}}}
"""


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Replicas:
    urls: list[str]
    logs: list[Path]
    redis_url: str
    spender: str  # tenant with a daily budget
    spender_key: str
    burst: str  # tenant with a requests-per-minute limit
    burst_key: str

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- replica {i} ---\n{log.read_text()[-chars:]}" for i, log in enumerate(self.logs))


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> None:
    """/readyz answers 200 once the config is loaded and Redis answers."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited early ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gateway at {url} did not become ready:\n{log.read_text()[-3000:]}")


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM all (they drain in parallel), then kill whatever is still running."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def replicas(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Three gateway processes, identical but for their ledgers, on one private Redis."""
    tmp = tmp_path_factory.mktemp("replicas")
    run = uuid.uuid4().hex[:8]  # fresh tenants: nothing left in Redis by an earlier run counts
    spender, burst = f"spender-{run}", f"burst-{run}"
    spender_key, burst_key = f"sk-{spender}-{uuid.uuid4().hex}", f"sk-{burst}-{uuid.uuid4().hex}"
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    logs: list[Path] = []
    try:
        for index in range(PROCESSES):
            config = tmp / f"gateway-{index}.yaml"
            config.write_text(
                CONFIG.format(
                    redis_url=redis_url,
                    admin_sha=sha(ADMIN_KEY),
                    ledger=tmp / f"ledger-{index}.sqlite3",
                    spill=tmp / f"spill-{index}.jsonl",
                    input_price=PRICE.input_per_mtok,
                    output_price=PRICE.output_per_mtok,
                    spender=spender,
                    spender_sha=sha(spender_key),
                    budget=BUDGET_USD,
                    burst=burst,
                    burst_sha=sha(burst_key),
                    rpm=RPM,
                )
            )
            port = free_port()
            log = tmp / f"gateway-{index}.log"
            with log.open("wb") as sink:  # a file, not a pipe: a full pipe would stall the process
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
                        cwd=REPO,
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        for url, process, log in zip(urls, processes, logs, strict=True):
            _wait_ready(url, process, log)
        yield Replicas(urls, logs, redis_url, spender, spender_key, burst, burst_key)
    finally:
        _stop(processes)


# --- clients -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    replica: int
    stream: bool
    status: int
    estimate_micro: int  # what the gateway reserved at admission (computed as `_admit` does)
    headers: httpx.Headers
    cost_micro: int | None = None  # 200: the actual cost, from the header or the stream's comment
    code: str | None = None  # refused: the error code


@dataclass(frozen=True)
class Variant:
    body: dict[str, Any]
    estimate_micro: int

    @classmethod
    def of(cls, prompt: str, *, stream: bool, usage_chunk: bool = False) -> Variant:
        body: dict[str, Any] = {
            "model": "chat",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
        }
        if stream:
            body["stream"] = True
            if usage_chunk:
                body["stream_options"] = {"include_usage": True}
        facts = RequestFacts.of_chat(ChatCompletionRequest.model_validate(body), body)
        estimate = estimated_cost_usd(PRICE, facts.prompt_tokens, facts.requested_output_tokens)
        return cls(body=body, estimate_micro=to_micro(estimate))


#: Prompts of different lengths, plain and streamed (with and without the usage chunk).
VARIANTS = [
    Variant.of("Say something short.", stream=False),
    Variant.of("Explain how a gateway keeps a budget across replicas, in detail please.", stream=True),
    Variant.of("What is a sliding window?", stream=True, usage_chunk=True),
    Variant.of("Summarize the day " * 12, stream=False),
    Variant.of("Hello", stream=True),
]


@dataclass
class Load:
    """What clients saw; `in_flight` counts requests sent and not yet fully answered."""

    outcomes: list[Outcome] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0


async def send(client: httpx.AsyncClient, url: str, replica: int, key: str, variant: Variant, load: Load) -> Outcome:
    """One request, read to its end; a 200 stream must end with its cost comment and [DONE]."""
    stream = bool(variant.body.get("stream"))
    load.in_flight += 1
    load.peak_in_flight = max(load.peak_in_flight, load.in_flight)
    try:
        async with client.stream(
            "POST", url + "/v1/chat/completions", json=variant.body, headers={"authorization": f"Bearer {key}"}
        ) as response:
            outcome = Outcome(replica, stream, response.status_code, variant.estimate_micro, response.headers)
            if response.status_code != 200:
                outcome.code = json.loads(await response.aread())["error"]["code"]
            elif not stream:
                await response.aread()
                outcome.cost_micro = to_micro(float(response.headers["x-gateway-cost-usd"]))
            else:
                lines = [line async for line in response.aiter_lines() if line]
                comments = [line for line in lines if line.startswith(": x-gateway-cost-usd=")]
                assert lines[-1] == "data: [DONE]" and len(comments) == 1, lines[-3:]
                assert not any('"error"' in line for line in lines if line.startswith("data: ")), lines[-3:]
                outcome.cost_micro = to_micro(float(comments[0].partition("=")[2]))
    finally:
        load.in_flight -= 1
    load.outcomes.append(outcome)
    return outcome


def http_client() -> httpx.AsyncClient:
    pool = httpx.Limits(max_connections=CLIENTS * 2, max_keepalive_connections=CLIENTS * 2)
    return httpx.AsyncClient(timeout=30, limits=pool)


# --- budget ------------------------------------------------------------------------------------------


async def spend_until_refused(replicas: Replicas, load: Load, deadline: float) -> None:
    """CLIENTS tasks send round-robin across the replicas until each replica has refused several in a row."""
    consecutive_refusals = [0] * PROCESSES

    async def client_task(client: httpx.AsyncClient, number: int) -> None:
        sent = 0
        while min(consecutive_refusals) < 5:
            assert time.monotonic() < deadline, "the budget never stopped the load"
            replica = (number + sent) % PROCESSES
            variant = VARIANTS[(number * 7 + sent) % len(VARIANTS)]
            sent += 1
            outcome = await send(client, replicas.urls[replica], replica, replicas.spender_key, variant, load)
            if outcome.status == 200:
                consecutive_refusals[replica] = 0
            else:
                consecutive_refusals[replica] += 1

    async with http_client() as client, asyncio.TaskGroup() as group:
        for number in range(CLIENTS):
            group.create_task(client_task(client, number))


async def probe_every_replica(replicas: Replicas, load: Load) -> bool:
    """With nothing in flight, every request shape at every replica; True if all were refused."""
    all_refused = True
    async with http_client() as client:
        for replica, url in enumerate(replicas.urls):
            for variant in VARIANTS:
                outcome = await send(client, url, replica, replicas.spender_key, variant, load)
                all_refused = all_refused and outcome.status != 200
    return all_refused


def budget_state(replicas: Replicas) -> tuple[int, int]:
    """(spent, reserved) in micro-dollars, as Redis holds them for the spender's daily budget."""
    config = TenantConfig.model_validate({"keys": [{"sha256": sha(replicas.spender_key)}], "budgets": {"daily_usd": 1}})
    plan = plan_for(Caller(replicas.spender, "default", config), None, time.time())
    assert plan is not None
    with redis.Redis.from_url(replicas.redis_url) as store:
        spent, reserved = store.hmget(plan.budgets[0].key, "spent", "reserved")
    return int(spent or 0), int(reserved or 0)


def ledger_spend(replicas: Replicas) -> list[tuple[int, float]]:
    """Per replica, from its own ledger: (answers with status 200, their cost)."""
    per_replica = []
    for url in replicas.urls:
        response = httpx.get(
            url + "/admin/usage",
            params={"group_by": "tenant,status", "from": "1h", "tenant": replicas.spender},
            headers={"x-admin-key": ADMIN_KEY},
        )
        assert response.status_code == 200, response.text
        served = [row for row in response.json()["data"] if row["status"] == 200]
        per_replica.append((sum(row["requests"] for row in served), sum(row["cost_usd"] for row in served)))
    return per_replica


@pytest.mark.timeout(180)
async def test_a_budget_shared_by_three_replicas_is_overspent_by_at_most_the_in_flight_overruns(
    replicas: Replicas,
) -> None:
    day = datetime.now(UTC).date()
    load = Load()
    started = time.monotonic()
    deadline = started + 60
    rounds = 0
    while True:  # the stop rule is a heuristic; a quiet probe of every replica is the proof
        rounds += 1
        await spend_until_refused(replicas, load, deadline)
        if await probe_every_replica(replicas, load):
            break
        assert rounds < 5, "requests were still admitted after five rounds of load"
    elapsed = time.monotonic() - started
    if datetime.now(UTC).date() != day:
        pytest.skip("the run crossed UTC midnight, where the daily budget starts afresh")

    served = [o for o in load.outcomes if o.status == 200]
    refused = [o for o in load.outcomes if o.status != 200]
    assert all(o.cost_micro is not None for o in served)
    spent = sum(o.cost_micro or 0 for o in served)
    budget = to_micro(BUDGET_USD)
    overrun = max(0, max((o.cost_micro or 0) - o.estimate_micro for o in served))  # actual above estimate
    bound = budget + CLIENTS * overrun
    smallest_estimate = min(variant.estimate_micro for variant in VARIANTS)
    largest_cost = max(o.cost_micro or 0 for o in served)
    print(
        f"\nbudget: {len(served)} served, {len(refused)} refused in {elapsed:.1f}s ({rounds} round(s)); "
        f"spent ${spent / 1e6:.6f} of ${BUDGET_USD:.2f} ({spent / budget:.1%}); bound ${bound / 1e6:.6f} "
        f"(largest overrun over estimate ${overrun / 1e6:.6f} x {CLIENTS} clients); "
        f"peak in flight {load.peak_in_flight}; costs ${min(o.cost_micro or 0 for o in served) / 1e6:.4f}"
        f"-${largest_cost / 1e6:.4f}, estimates ${smallest_estimate / 1e6:.4f}"
        f"-${max(v.estimate_micro for v in VARIANTS) / 1e6:.4f}"
    )

    assert "limits store unreachable" not in replicas.log_tail(100_000), "Redis calls failed: admitted unchecked"
    # max_tokens caps every answer, so admission's estimate is an upper bound of each cost: the bound
    # must not widen with the estimator it is meant to check.
    assert overrun == 0, f"a request cost ${overrun / 1e6:.6f} more than admission reserved for it"
    assert spent <= bound, f"spent ${spent / 1e6:.6f}, more than the bound ${bound / 1e6:.6f}"
    # The budget was the binding limit: spend stopped only when no request shape fit any more.
    assert spent >= 0.9 * budget
    assert spent > budget - smallest_estimate
    assert load.peak_in_flight > 20, "requests hardly overlapped: the test proves little about concurrency"
    for outcome in refused:
        assert outcome.status == 429 and outcome.code == "budget_exceeded", (outcome.status, outcome.code)
        assert 1 <= int(outcome.headers["retry-after"]) <= 86_400  # until the next UTC day
    for replica in range(PROCESSES):  # every replica took part in spending and in refusing
        assert any(o.replica == replica for o in served) and any(o.replica == replica for o in refused)

    # Redis holds exactly what the answers said they cost, with nothing left reserved.
    assert budget_state(replicas) == (spent, 0)
    # Each replica's own ledger has its share; together they add up to the spend.
    await asyncio.sleep(0.5)  # ledgers write every 0.1 s here
    ledgers = ledger_spend(replicas)
    assert [count for count, _ in ledgers] == [
        sum(1 for o in served if o.replica == replica) for replica in range(PROCESSES)
    ]
    assert sum(cost for _, cost in ledgers) == pytest.approx(spent / 1e6, abs=1e-5)


# --- requests per minute -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
async def test_a_requests_per_minute_limit_admits_its_limit_across_three_replicas(replicas: Replicas) -> None:
    attempts_wanted = 2 * RPM
    load = Load()
    attempts = 0

    async def client_task(client: httpx.AsyncClient, number: int) -> None:
        nonlocal attempts
        while attempts < attempts_wanted:
            attempts += 1
            replica = attempts % PROCESSES
            variant = VARIANTS[(number + attempts) % len(VARIANTS)]
            await send(client, replicas.urls[replica], replica, replicas.burst_key, variant, load)

    started = time.monotonic()
    async with http_client() as client, asyncio.TaskGroup() as group:
        for number in range(CLIENTS):
            group.create_task(client_task(client, number))
    elapsed = time.monotonic() - started

    admitted = [o for o in load.outcomes if o.status == 200]
    refused = [o for o in load.outcomes if o.status != 200]
    print(
        f"\nrpm: {len(admitted)} admitted of {len(load.outcomes)} attempts in {elapsed:.1f}s "
        f"(limit {RPM}/min; per replica {[sum(1 for o in admitted if o.replica == r) for r in range(PROCESSES)]}); "
        f"peak in flight {load.peak_in_flight}"
    )

    assert "limits store unreachable" not in replicas.log_tail(100_000), "Redis calls failed: admitted unchecked"
    assert elapsed < 45, "the burst must fit well inside one window, or earlier admissions leave it"
    assert len(load.outcomes) >= attempts_wanted
    assert 0.99 * RPM <= len(admitted) <= RPM
    for outcome in admitted:
        assert outcome.headers["x-ratelimit-limit-requests"] == str(RPM)
    # Each admission saw the count of the ones before it, whichever replica made them: one atomic log.
    remaining = sorted(int(o.headers["x-ratelimit-remaining-requests"]) for o in admitted)
    assert remaining == list(range(RPM - len(admitted), RPM))
    for outcome in refused:
        assert outcome.status == 429 and outcome.code == "rate_limit_exceeded", (outcome.status, outcome.code)
        headers = outcome.headers
        assert headers["x-ratelimit-limit-requests"] == str(RPM)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert headers["x-ratelimit-reset-requests"]
        assert 1 <= int(headers["retry-after"]) <= 60
    for replica in range(PROCESSES):
        assert any(o.replica == replica for o in admitted) and any(o.replica == replica for o in refused)
