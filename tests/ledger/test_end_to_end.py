"""The ledger end to end, through the running gateway: one record per authenticated request, exactly once.

A load run of mixed requests (served plain and streamed, refused with 400/403/404, failed upstream
with 503, streams abandoned by their client after the first chunk) goes through a gateway whose
ledger writes to PostgreSQL behind a TCP proxy; the proxy is cut for ~3 s mid-run. Afterwards the
table holds exactly one row per authenticated request id, with the status the client saw (499 for
an abandoned stream): nothing lost to the outage, nothing doubled by the spill-and-replay. Requests
refused with 401 are nobody's, and are not recorded.

Then `llm-gateway serve` as a process: SIGTERM writes what the ledger still holds before exiting 0,
and when the store cannot take it then (SQLite locked by another connection), it lands in the spill
file and the next start replays it, each record once.

The gateway has no response cache yet, so there are no cache hits to account for here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from gateway.ledger.sqlite_store import SQLiteStore
from tests.ledger.proxy import CuttableProxy
from tests.support.server import free_port
from tests.test_cli_serve import wait_until_healthy

ADMIN_KEY = "admin-key-for-the-ledger-e2e"
KEYS = {"acme-key": ("acme", "ci"), "acme-key-2": ("acme", "laptop"), "globex-key": ("globex", "default")}
MESSAGES = [{"role": "user", "content": "Count my usage, once."}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


LOAD_CONFIG = f"""
server: {{resilience: {{retry: {{attempts_per_deployment: 1}}, circuit_breaker: {{enabled: false}}}}}}
admin: {{api_key_sha256: {sha(ADMIN_KEY)}}}
ledger: {{url: '{{url}}', spill_path: '{{spill}}', flush_interval_s: 0.05, batch_size: 50}}
providers:
  m: {{type: mock, min_words: 8, max_words: 8}}
  slow: {{type: mock, tokens_per_s: 20, min_words: 60, max_words: 60}}
  broken: {{type: mock, failure_rate: 1.0}}
models:
  chat: {{deployments: [{{provider: m, model: mock-chat-1, price: {{input_per_mtok: 1, output_per_mtok: 2}}}}]}}
  other: {{deployments: [{{provider: m, model: mock-chat-2}}]}}
  slow-chat: {{deployments: [{{provider: slow, model: mock-chat-1}}]}}
  broken-chat: {{deployments: [{{provider: broken, model: mock-chat-1}}]}}
  vectors: {{mode: embeddings, deployments: [{{provider: m, model: mock-embedding-1}}]}}
tenants:
  acme:
    keys: [{{sha256: {sha("acme-key")}, name: ci}}, {{sha256: {sha("acme-key-2")}, name: laptop}}]
    allowed_models: [chat, slow-chat, vectors]
  globex:
    keys: [{{sha256: {sha("globex-key")}}}]
"""


@dataclass(frozen=True)
class Kind:
    """One sort of request in the load run: how many, how it is sent, what the ledger must say."""

    name: str
    count: int
    key: str | None  # None: no Authorization header at all
    body: dict[str, Any]
    answer: int  # the HTTP status the client gets
    recorded: int | None  # the status in the ledger; None: no record (refused before authentication)
    cancel: bool = False  # read the first chunk, then hang up


KINDS = [
    Kind("plain", 280, "acme-key", {"model": "chat", "messages": MESSAGES}, 200, 200),
    Kind("streamed", 150, "acme-key-2", {"model": "chat", "messages": MESSAGES, "stream": True}, 200, 200),
    Kind("embedding", 50, "globex-key", {"model": "vectors", "input": "embed me"}, 200, 200),
    Kind("unknown-model", 80, "globex-key", {"model": "no-such-model", "messages": MESSAGES}, 404, 404),
    Kind("model-not-allowed", 80, "acme-key", {"model": "other", "messages": MESSAGES}, 403, 403),
    Kind("invalid-body", 80, "acme-key-2", {"model": "chat"}, 400, 400),
    Kind("upstream-error", 80, "globex-key", {"model": "broken-chat", "messages": MESSAGES}, 503, 503),
    Kind(
        "cancelled-stream",
        100,
        "acme-key",
        {"model": "slow-chat", "messages": MESSAGES, "stream": True},
        200,
        499,
        cancel=True,
    ),
    Kind("no-key", 50, None, {"model": "chat", "messages": MESSAGES}, 401, None),
    Kind("wrong-key", 50, "not-a-key", {"model": "chat", "messages": MESSAGES}, 401, None),
]


@dataclass
class Outcome:
    request_id: str
    kind: Kind
    status: int | None = None  # what the client saw
    echoed_id: str | None = None
    finished_at: float = 0.0
    error: str | None = None


async def send(client: httpx.AsyncClient, outcome: Outcome) -> None:
    kind = outcome.kind
    headers = {"x-request-id": outcome.request_id}
    if kind.key is not None:
        headers["authorization"] = f"Bearer {kind.key}"
    try:
        path = "/v1/embeddings" if "input" in kind.body else "/v1/chat/completions"
        async with client.stream("POST", path, json=kind.body, headers=headers) as response:
            outcome.status = response.status_code
            outcome.echoed_id = response.headers.get("x-request-id")
            if kind.cancel:
                async for line in response.aiter_lines():
                    if line.startswith("data: "):
                        break  # leaving the block closes the connection mid-stream
                else:
                    outcome.error = "the stream ended before its first chunk"
            else:
                text = (await response.aread()).decode()
                if kind.body.get("stream") and response.status_code == 200 and not text.endswith("data: [DONE]\n\n"):
                    outcome.error = "a streamed answer did not end with [DONE]"
    except httpx.HTTPError as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    outcome.finished_at = time.monotonic()


async def load_run(url: str, outcomes: list[Outcome], rate_per_s: float, concurrency: int) -> None:
    """Send every request, started at a steady rate, at most `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(outcome: Outcome) -> None:
        async with gate:
            await send(client, outcome)

    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        tasks = []
        for index, outcome in enumerate(outcomes):
            delay = started + index / rate_per_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(outcome)))
        await asyncio.gather(*tasks)


async def ledger_stats(url: str) -> dict[str, Any] | None:
    """The ledger's counters, from /admin/usage (None while its store cannot answer the report)."""
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get(
            "/admin/usage", params={"group_by": "status", "from": "1h"}, headers={"x-admin-key": ADMIN_KEY}
        )
    return response.json()["ledger"] if response.status_code == 200 else None


def spill_leftovers(spill: Path) -> list[str]:
    """Spill files with records in them (empty lock files do not count)."""
    names = (spill.name, spill.name + ".replaying", spill.name + ".rejected")
    return [name for name in names if (spill.parent / name).exists() and (spill.parent / name).stat().st_size]


@pytest.mark.timeout(180)
async def test_every_request_of_a_load_run_has_exactly_one_record_across_a_store_outage(
    postgres_url: str, gateway_factory: Callable[[str], str], tmp_path: Path
) -> None:
    # postgres_url first: its schema is dropped after the gateway has stopped
    proxy = CuttableProxy("127.0.0.1", 5432)
    await proxy.start()
    try:
        spill = tmp_path / "spill.jsonl"
        via_proxy = postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        assert via_proxy != postgres_url
        url = gateway_factory(LOAD_CONFIG.replace("{url}", via_proxy).replace("{spill}", str(spill)))

        run_id = uuid.uuid4().hex[:8]
        kinds = [kind for kind in KINDS for _ in range(kind.count)]
        random.Random(20240611).shuffle(kinds)
        outcomes = [Outcome(f"e2e-{run_id}-{i:04d}-{kind.name}", kind) for i, kind in enumerate(kinds)]
        assert len(outcomes) == 1000

        began = time.monotonic()
        load = asyncio.create_task(load_run(url, outcomes, rate_per_s=160, concurrency=32))
        await asyncio.sleep(1.5)
        cut_at = time.monotonic()
        await proxy.cut()
        await asyncio.sleep(3.0)
        spilled_during_cut = (await ledger_stats(url) or {}).get("spilled")  # the report itself may 503 here
        await proxy.restore()
        restored_at = time.monotonic()
        await asyncio.wait_for(load, timeout=90)
        load_s = time.monotonic() - began

        expected = {o.request_id: o for o in outcomes if o.kind.recorded is not None}
        stats: dict[str, Any] | None = None
        deadline = time.monotonic() + 60
        while True:
            stats = await ledger_stats(url)
            if (
                stats is not None
                and stats["queued"] == 0
                and stats["store_up"]
                and stats["written"] + stats["replayed"] >= len(expected)
                and not spill_leftovers(spill)
            ):
                break
            assert time.monotonic() < deadline, f"the ledger never settled: {stats}, spill: {spill_leftovers(spill)}"
            await asyncio.sleep(0.1)
        settle_s = time.monotonic() - began - load_s

        async with await psycopg.AsyncConnection.connect(postgres_url) as connection:  # straight, not via the proxy
            cursor = await connection.execute(
                'SELECT "client_request_id", "status", "tenant", "key_name" FROM usage_records'
            )
            rows = await cursor.fetchall()
    finally:
        await proxy.aclose()

    # Every request got the answer its kind calls for, its own id echoed back.
    wrong = [(o.request_id, o.status, o.error) for o in outcomes if o.status != o.kind.answer or o.error]
    assert not wrong, f"{len(wrong)} requests were not answered as expected, e.g. {wrong[:5]}"
    assert all(o.echoed_id == o.request_id for o in outcomes)
    in_cut = sum(cut_at <= o.finished_at <= restored_at for o in outcomes)
    assert in_cut > 100, "too few requests ended while the store was away: the cut was not mid-run"

    # Exactly one record per authenticated request: none missing, none doubled, none for a 401.
    counts = Counter(row[0] for row in rows)
    doubled = sorted(rid for rid, n in counts.items() if n > 1)
    missing = sorted(set(expected) - set(counts))
    unexpected = sorted(set(counts) - set(expected))
    assert not doubled, f"{len(doubled)} request ids recorded more than once, e.g. {doubled[:5]}"
    assert not missing, f"{len(missing)} requests have no record, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} records of requests that must not have one, e.g. {unexpected[:5]}"
    assert len(rows) == len(expected)

    # Each record says how the request ended, and whose it was.
    for request_id, status, tenant, key_name in rows:
        outcome = expected[request_id]
        assert status == outcome.kind.recorded, (request_id, status)
        assert outcome.kind.key is not None and (tenant, key_name) == KEYS[outcome.kind.key], (request_id, tenant)

    # The outage really happened: records were spilled meanwhile and replayed after.
    assert stats is not None and stats["spilled"] > 0 and stats["replayed"] > 0, stats
    # The table's primary key would hide a request submitted twice; the ledger's counters do not: each
    # record is stored once, either by the flusher or by the replay (no replay failed part-way here).
    assert stats["written"] + stats["replayed"] == len(expected) and stats["rejected"] == 0, stats
    assert spilled_during_cut is None or spilled_during_cut > 0
    by_status = Counter(status for _, status, _, _ in rows)
    print(
        f"\nload run: {len(outcomes)} requests in {load_s:.1f} s ({in_cut} ended during the 3 s cut), "
        f"ledger settled {settle_s:.1f} s later; {len(rows)} rows {dict(sorted(by_status.items()))}; "
        f"written {stats['written']}, spilled {stats['spilled']}, replayed {stats['replayed']}; "
        f"{len(outcomes) - len(expected)} 401s unrecorded"
    )


def test_an_authenticated_request_whose_body_is_unreadable_is_recorded(
    gateway_factory: Callable[[str], str], tmp_path: Path
) -> None:
    db, spill = tmp_path / "l.sqlite3", tmp_path / "spill.jsonl"
    url = gateway_factory(LOAD_CONFIG.replace("{url}", f"sqlite:///{db}").replace("{spill}", str(spill)))
    run_id = uuid.uuid4().hex[:8]
    cases = {  # request id: (body, content type, status)
        f"unreadable-{run_id}-json": (b"{not json", "application/json", 400),
        f"unreadable-{run_id}-empty": (b"", "application/json", 400),
        f"unreadable-{run_id}-array": (b"[1]", "application/json", 400),
        f"unreadable-{run_id}-media": (b"model=chat", "application/x-www-form-urlencoded", 415),
    }
    with httpx.Client(base_url=url, timeout=10) as client:
        for request_id, (body, content_type, status) in cases.items():
            headers = {"authorization": "Bearer acme-key", "x-request-id": request_id, "content-type": content_type}
            response = client.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code == status, response.text
        marker = f"marker-{run_id}"  # a readable request after them: once it is stored, so are they
        headers = {"authorization": "Bearer acme-key", "x-request-id": marker}
        assert client.post("/v1/chat/completions", json={"model": "chat"}, headers=headers).status_code == 400
    deadline = time.monotonic() + 10
    while marker not in (ids := sqlite_ids(db)):
        assert time.monotonic() < deadline, "the readable request was never recorded"
        time.sleep(0.05)
    assert sorted(rid for rid in ids if rid.startswith("unreadable-")) == sorted(cases)


# --- `llm-gateway serve` and SIGTERM ---------------------------------------------------------------------

SERVE_CONFIG = """
server: {{watch_config: false, shutdown_grace_s: 10}}
ledger: {{url: 'sqlite:///{db}', spill_path: '{spill}', flush_interval_s: 30, batch_size: 10000}}
providers: {{m: {{type: mock, min_words: 8, max_words: 8}}}}
models: {{chat: {{deployments: [{{provider: m, model: mock-chat-1}}]}}}}
"""


@contextmanager
def serve(tmp_path: Path, db: Path, spill: Path, name: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A `llm-gateway serve` process on a free port; yields (process, base URL). Killed if a test leaves it."""
    config = tmp_path / "gateway.yaml"
    config.write_text(SERVE_CONFIG.format(db=db, spill=spill))
    port = free_port()
    log = open(tmp_path / f"{name}.log", "w")  # a file, not a pipe: a full pipe would block the server
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until_healthy(f"http://127.0.0.1:{port}", process)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)
        log.close()


def make_requests(url: str, prefix: str, count: int) -> list[str]:
    """`count` served requests, every fifth streamed; their request ids."""
    ids = [f"{prefix}-{uuid.uuid4().hex[:8]}-{i:03d}" for i in range(count)]
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, request_id in enumerate(ids):
            body = {"model": "chat", "messages": MESSAGES, "stream": i % 5 == 0}
            response = client.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == request_id
    return ids


def terminate(process: subprocess.Popen[str], log: Path, timeout_s: float = 30) -> float:
    """SIGTERM, then wait for exit status 0; returns how long the exit took."""
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    returncode = process.wait(timeout=timeout_s)
    took = time.monotonic() - signalled
    assert returncode == 0, log.read_text()
    assert "Traceback" not in log.read_text()
    return took


def sqlite_ids(db: Path) -> list[str]:
    """Every request_id in the SQLite ledger, duplicates included; none when there is no file or table yet."""
    if not db.exists():
        return []
    connection = sqlite3.connect(db.as_uri() + "?mode=ro", uri=True, timeout=10)
    try:
        return [row[0] for row in connection.execute('SELECT "client_request_id" FROM "usage_records"')]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        connection.close()


def spilled_ids(spill: Path) -> list[str]:
    if not spill.exists():
        return []
    return [json.loads(line)["client_request_id"] for line in spill.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(90)
def test_sigterm_writes_every_queued_record_before_the_process_exits(tmp_path: Path) -> None:
    db, spill = tmp_path / "l.sqlite3", tmp_path / "spill.jsonl"
    with serve(tmp_path, db, spill, "serve") as (process, url):
        ids = make_requests(url, "sigterm", 50)
        assert sqlite_ids(db) == []  # a 30 s interval and a 10,000 batch: all 50 are still queued
        took = terminate(process, tmp_path / "serve.log")

    stored = sqlite_ids(db)
    assert sorted(stored) == sorted(ids)  # each once
    assert spill_leftovers(spill) == []
    print(f"\nSIGTERM: {len(stored)} records written at shutdown; exit took {took:.2f} s")


@pytest.mark.timeout(120)
def test_records_the_store_refuses_at_shutdown_are_spilled_and_replayed_once_at_the_next_start(
    tmp_path: Path,
) -> None:
    db, spill = tmp_path / "l.sqlite3", tmp_path / "spill.jsonl"

    async def create_ledger() -> None:  # the file exists, in WAL mode with its table, before it is locked
        store = SQLiteStore(db)
        await store.open()
        await store.aclose()

    asyncio.run(create_ledger())

    with serve(tmp_path, db, spill, "first") as (process, url):
        first_ids = make_requests(url, "before-stop", 40)
        locker = sqlite3.connect(db, isolation_level=None, timeout=5)
        try:
            locker.execute("BEGIN EXCLUSIVE")  # a backup tool, a stuck process: every writer waits, then fails
            took = terminate(process, tmp_path / "first.log", timeout_s=60)
            assert [row[0] for row in locker.execute('SELECT COUNT(*) FROM "usage_records"')] == [0]
        finally:
            locker.execute("COMMIT")
            locker.close()
    assert sorted(spilled_ids(spill)) == sorted(first_ids)
    assert sqlite_ids(db) == []

    with serve(tmp_path, db, spill, "second") as (process, url):
        deadline = time.monotonic() + 30
        while spill_leftovers(spill):  # the replay at start-up
            assert time.monotonic() < deadline, f"the spill was never replayed: {spill_leftovers(spill)}"
            time.sleep(0.05)
        assert sorted(sqlite_ids(db)) == sorted(first_ids)
        second_ids = make_requests(url, "after-restart", 10)
        terminate(process, tmp_path / "second.log")

    stored = sqlite_ids(db)
    assert len(stored) == len(set(stored)) == 50
    assert sorted(stored) == sorted(first_ids + second_ids)
    assert spill_leftovers(spill) == []
    print(f"\nstore locked at SIGTERM: 40 records spilled (exit took {took:.2f} s), replayed once at the next start")
