"""Ledger fixtures: records, a store on each backend (a temporary SQLite file, a fresh PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.ledger.record import UsageRecord
from gateway.ledger.store import LedgerStore, open_store

#: The PostgreSQL server the tests use (trust auth); each test gets its own schema in it.
POSTGRES_URL = os.environ.get("LEDGER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

T0 = 1_790_000_000.0  # a fixed "now" for seeded records


def record(i: int, **overrides: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "request_id": f"req-{i:06d}",
        "ts": T0 + i,
        "tenant": "acme",
        "key_name": "default",
        "team": "search",
        "feature": "autocomplete",
        "tags": {"team": "search"},
        "alias": "chat",
        "provider": "openai",
        "deployment": "openai/gpt-4o-mini",
        "model": "gpt-4o-mini",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "cost_usd": 0.001,
        "latency_ms": 120.0,
        "ttft_ms": 80.0,
    }
    values.update(overrides)
    return UsageRecord(**values)


@pytest.fixture(scope="session")
def postgres_base() -> str:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); set LEDGER_TEST_POSTGRES_URL")
    return POSTGRES_URL


@pytest.fixture
def postgres_url(postgres_base: str) -> Iterator[str]:
    """A ledger URL whose tables land in a schema of their own, dropped when the test ends."""
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_base, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_base}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(postgres_base, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite3'}"  # absolute: sqlite:////tmp/...
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def make_store(ledger_url: str) -> AsyncIterator[Callable[..., LedgerStore]]:
    """New store objects on the test's database; the ones a test leaves open are closed after it."""
    stores: list[LedgerStore] = []

    def make(**options: Any) -> LedgerStore:
        store = open_store(ledger_url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


async def stored_ids(store: LedgerStore) -> list[str]:
    """Every request_id in the store, duplicates included (there must be none), read past the store."""
    from gateway.ledger.postgres_store import PostgresStore
    from gateway.ledger.sqlite_store import SQLiteStore

    if isinstance(store, SQLiteStore):
        import sqlite3

        with sqlite3.connect(store.path) as connection:
            return [row[0] for row in connection.execute('SELECT "request_id" FROM "usage_records"')]
    assert isinstance(store, PostgresStore)
    async with await psycopg.AsyncConnection.connect(store.url) as connection:
        cursor = await connection.execute('SELECT "request_id" FROM "usage_records"')
        return [row[0] for row in await cursor.fetchall()]


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
