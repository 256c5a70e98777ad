"""The store goes away mid-run and comes back: every record ends up stored exactly once, no spill left.

PostgreSQL is cut by a TCP proxy (listener and connections closed: resets, then refused connections);
SQLite by another connection holding the write lock (what a backup tool or a stuck process does).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from gateway.ledger import Ledger
from gateway.ledger.postgres_store import PostgresStore
from gateway.ledger.sqlite_store import SQLiteStore
from gateway.ledger.store import LedgerStore
from tests.ledger.conftest import record, stored_ids, wait_for
from tests.ledger.proxy import CuttableProxy


async def steady_stream(ledger: Ledger, duration_s: float, per_tick: int = 5, tick_s: float = 0.01) -> int:
    """Submit records at a steady rate (about 500/s) for `duration_s`; returns how many."""
    count = 0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        for _ in range(per_tick):
            ledger.submit(record(count))
            count += 1
        await asyncio.sleep(tick_s)
    return count


async def settle_and_check(ledger: Ledger, total: int, check_store: LedgerStore, spill: Path) -> None:
    """Wait until everything submitted is stored and the spill is gone, then close and verify."""

    def settled() -> bool:
        stats = ledger.stats()
        return (
            stats["queued"] == 0
            and ledger.written + ledger.replayed >= total
            and not ledger.spill.pending()
            and ledger.store_up
        )

    await wait_for(settled, timeout_s=30, what=f"the ledger to settle ({ledger.stats()})")
    await ledger.aclose()
    ids = await stored_ids(check_store)
    assert len(ids) == total, f"{len(ids)} rows for {total} records"
    assert sorted(set(ids)) == sorted(ids) == [f"req-{i:06d}" for i in range(total)]
    assert ledger.spilled > 0, "the outage did not make the ledger spill: the test proved nothing"
    assert ledger.replayed > 0
    assert leftovers(spill) == []


def leftovers(spill: Path) -> list[str]:
    """Spill files with records in them (lock files stay, empty, and do not count)."""
    names = (spill.name, spill.name + ".replaying", spill.name + ".rejected")
    return [name for name in names if (spill.parent / name).exists() and (spill.parent / name).stat().st_size]


async def test_postgres_cut_and_restored(postgres_url: str, tmp_path: Path) -> None:
    proxy = CuttableProxy("127.0.0.1", 5432)
    await proxy.start()
    spill = tmp_path / "spill.jsonl"
    store = PostgresStore(postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"), timeout_s=2)
    ledger = Ledger(
        store, batch_size=50, flush_interval_s=0.05, spill_path=str(spill), retry_initial_s=0.1, retry_max_s=0.5
    )
    await ledger.start()
    direct = PostgresStore(postgres_url)
    try:
        producer = asyncio.create_task(steady_stream(ledger, duration_s=6.0))
        await asyncio.sleep(1.5)
        await proxy.cut()
        await asyncio.sleep(3.0)
        assert not ledger.store_up and ledger.spilled > 0
        await proxy.restore()
        total = await producer
        await settle_and_check(ledger, total, direct, spill)
    finally:
        await ledger.aclose()
        await direct.aclose()
        await proxy.aclose()


async def test_sqlite_locked_and_released(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    spill = tmp_path / "spill.jsonl"
    store = SQLiteStore(path, timeout_s=0.1)
    await store.open()  # the file exists, in WAL mode, before another connection locks it
    ledger = Ledger(
        store, batch_size=50, flush_interval_s=0.05, spill_path=str(spill), retry_initial_s=0.1, retry_max_s=0.5
    )
    await ledger.start()
    producer = asyncio.create_task(steady_stream(ledger, duration_s=6.0))
    await asyncio.sleep(1.5)
    locker = sqlite3.connect(path, isolation_level=None, timeout=5)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # every writer now waits, then fails after its busy timeout
        await asyncio.sleep(3.0)
        assert not ledger.store_up and ledger.spilled > 0
    finally:
        locker.execute("COMMIT")
        locker.close()
    total = await producer
    await settle_and_check(ledger, total, SQLiteStore(path), spill)
