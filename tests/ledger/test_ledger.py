"""The ledger on each store (SQLite and PostgreSQL): batching, sums, volume, shutdown flush, idempotence."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.ledger import Ledger, UsageRecord
from gateway.ledger.sqlite_store import WRITER_NICENESS, SQLiteStore
from gateway.ledger.store import LedgerStore, parse_group_by
from tests.ledger.conftest import T0, record, stored_ids, wait_for


class CountingStore(LedgerStore):
    """A real store that remembers the size of every batch it was asked to write."""

    def __init__(self, inner: LedgerStore) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def open(self) -> None:
        await self.inner.open()

    async def write(self, records: Sequence[UsageRecord]) -> int:
        self.batches.append(len(records))
        return await self.inner.write(records)

    async def query(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return await self.inner.query(*args, **kwargs)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_full_batches_go_at_once_and_aclose_flushes_the_partial_one(
    make_store: Callable[..., LedgerStore], tmp_path: Path
) -> None:
    store = CountingStore(make_store())
    ledger = Ledger(store, batch_size=100, flush_interval_s=30, spill_path=str(tmp_path / "spill.jsonl"))
    await ledger.start()
    for i in range(250):
        ledger.submit(record(i))
    await wait_for(lambda: ledger.written == 200, what="two full batches")
    await asyncio.sleep(0.2)
    assert store.batches == [100, 100]  # the 50 left wait for the 30 s interval...
    assert ledger.stats()["queued"] == 50
    await ledger.aclose()  # ...or for shutdown
    assert store.batches == [100, 100, 50]
    assert sorted(await stored_ids(store.inner)) == [f"req-{i:06d}" for i in range(250)]
    assert ledger.stats() == {
        "queued": 0,
        "written": 250,
        "spilled": 0,
        "replayed": 0,
        "rejected": 0,
        "store_up": True,
    }


async def test_the_interval_flushes_a_partial_batch(make_store: Callable[..., LedgerStore], tmp_path: Path) -> None:
    ledger = Ledger(make_store(), batch_size=500, flush_interval_s=0.1, spill_path=str(tmp_path / "spill.jsonl"))
    await ledger.start()
    ledger.submit(record(1))
    await wait_for(lambda: ledger.written == 1, timeout_s=5, what="the interval flush")
    await ledger.aclose()


async def test_ten_thousand_concurrent_records_are_stored_exactly_once(
    make_store: Callable[..., LedgerStore], tmp_path: Path
) -> None:
    store = CountingStore(make_store())
    ledger = Ledger(store, batch_size=500, flush_interval_s=0.05, spill_path=str(tmp_path / "spill.jsonl"))
    await ledger.start()

    async def client(n: int) -> None:
        for i in range(200):
            ledger.submit(record(n * 200 + i))
            if i % 7 == 0:
                await asyncio.sleep(0)

    await asyncio.gather(*(client(n) for n in range(50)))
    await ledger.aclose()
    ids = await stored_ids(store.inner)
    assert len(ids) == 10_000
    assert len(set(ids)) == 10_000
    assert ledger.written == 10_000 and ledger.spilled == 0
    assert max(store.batches) <= 500
    assert len(store.batches) >= 20


async def test_writing_the_same_records_again_changes_nothing(make_store: Callable[..., LedgerStore]) -> None:
    store = make_store()
    batch = [record(i) for i in range(10)]
    assert await store.write(batch) == 10
    assert await store.write(batch[5:] + [record(10)]) == 1  # only req-10 is new
    assert sorted(await stored_ids(store)) == [f"req-{i:06d}" for i in range(11)]


SEED = [
    # tenant, team, feature, alias, provider, status, prompt, completion, cached, cost, estimated
    ("acme", "search", "autocomplete", "chat", "openai", 200, 100, 20, 10, 0.010, False),
    ("acme", "search", "autocomplete", "chat", "openai", 200, 200, 40, 0, 0.020, True),
    ("acme", "search", "summaries", "chat", "anthropic", 429, 50, 0, 0, 0.0, False),
    ("acme", "growth", "emails", "chat", "anthropic", 200, 300, 100, 50, 0.050, False),
    ("acme", None, None, "embed", "openai", 200, 1000, 0, 0, 0.0001, True),
    ("globex", "ops", "triage", "chat", "openai", 502, 70, 0, 0, 0.0, False),
    ("globex", "ops", "triage", "chat", "openai", 200, 80, 30, 0, 0.007, False),
    (None, None, None, "chat", "openai", 499, 40, 3, 0, 0.0004, True),
]


async def seed(store: LedgerStore) -> None:
    records = []
    for i, (tenant, team, feature, alias, provider, status, *counts, cost, estimated) in enumerate(SEED):
        prompt, completion, cached = counts
        records.append(
            record(
                i,
                tenant=tenant,
                team=team,
                feature=feature,
                alias=alias,
                provider=provider,
                deployment=f"{provider}/m",
                status=status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                cached_tokens=cached,
                cost_usd=cost,
                estimated=estimated,
            )
        )
    records.append(record(100, ts=T0 - 10, tenant="acme", cost_usd=5.0))  # before the window
    records.append(record(101, ts=T0 + 1000, tenant="acme", cost_usd=7.0))  # at its (exclusive) end
    await store.write(records)


def sums(requests: int, errors: int, prompt: int, completion: int, cached: int, cost: float, estimated: int) -> dict:
    return {
        "requests": requests,
        "errors": errors,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "cost_usd": pytest.approx(cost),
        "estimated": estimated,
    }


async def test_query_groups_and_sums(make_store: Callable[..., LedgerStore]) -> None:
    store = make_store()
    await seed(store)
    since, until = T0, T0 + 1000

    assert await store.query(since, until, parse_group_by("tenant")) == [
        {"tenant": "acme", **sums(5, 1, 1650, 160, 60, 0.0801, 2)},
        {"tenant": "globex", **sums(2, 1, 150, 30, 0, 0.007, 0)},
        {"tenant": None, **sums(1, 1, 40, 3, 0, 0.0004, 1)},
    ]
    assert await store.query(since, until, parse_group_by("tenant,team"), tenant="acme") == [
        {"tenant": "acme", "team": "growth", **sums(1, 0, 300, 100, 50, 0.05, 0)},
        {"tenant": "acme", "team": "search", **sums(3, 1, 350, 60, 10, 0.03, 1)},
        {"tenant": "acme", "team": None, **sums(1, 0, 1000, 0, 0, 0.0001, 1)},
    ]
    assert await store.query(since, until, parse_group_by(["provider", "status"])) == [
        {"provider": "anthropic", "status": 200, **sums(1, 0, 300, 100, 50, 0.05, 0)},
        {"provider": "openai", "status": 200, **sums(4, 0, 1380, 90, 10, 0.0371, 1 + 1)},
        {"provider": "openai", "status": 499, **sums(1, 1, 40, 3, 0, 0.0004, 1)},
        {"provider": "anthropic", "status": 429, **sums(1, 1, 50, 0, 0, 0.0, 0)},
        {"provider": "openai", "status": 502, **sums(1, 1, 70, 0, 0, 0.0, 0)},
    ]
    assert await store.query(since, until, ()) == [sums(8, 3, 1840, 193, 60, 0.0875, 3)]
    assert await store.query(since, T0 + 8, ["deployment"], tenant="globex") == [
        {"deployment": "openai/m", **sums(2, 1, 150, 30, 0, 0.007, 0)}
    ]
    assert await store.query(T0 + 500, until, ["tenant"]) == []
    assert await store.query(T0 + 500, until, []) == []


@pytest.mark.parametrize("value", ["tenant,secret", "user", "tenant; DROP TABLE usage_records", "ts"])
def test_group_by_is_allow_listed(value: str) -> None:
    with pytest.raises(ValueError, match="cannot group by"):
        parse_group_by(value)


def test_group_by_keeps_order_and_drops_repeats() -> None:
    assert parse_group_by(" team, tenant,team ,") == ("team", "tenant")


async def test_a_full_queue_spills_and_the_spill_is_replayed(
    make_store: Callable[..., LedgerStore], tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(make_store(), batch_size=50, flush_interval_s=0.05, queue_size=100, spill_path=str(spill))
    for i in range(1000):  # before start: nothing drains, so 900 overflow
        ledger.submit(record(i))
    assert ledger.stats()["queued"] == 1000
    await ledger.start()
    await wait_for(lambda: ledger.written + ledger.replayed == 1000, what="every record stored")
    await ledger.aclose()
    assert ledger.spilled == 900 and ledger.replayed == 900 and ledger.written == 100
    assert sorted(await stored_ids(ledger.store)) == [f"req-{i:06d}" for i in range(1000)]
    assert not spill.exists() and not spill.with_name("spill.jsonl.replaying").exists()


async def test_a_record_the_store_refuses_is_set_aside_not_retried_forever(
    make_store: Callable[..., LedgerStore], tmp_path: Path
) -> None:
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(make_store(), batch_size=10, flush_interval_s=0.05, spill_path=str(spill))
    await ledger.start()
    for i in range(10):
        ledger.submit(record(i, prompt_tokens=2**70 if i == 3 else 10))  # wider than any integer column
    await wait_for(lambda: ledger.written == 9 and ledger.rejected == 1, what="nine written, one set aside")
    await ledger.aclose()
    assert sorted(await stored_ids(ledger.store)) == [f"req-{i:06d}" for i in range(10) if i != 3]
    rejected = (tmp_path / "spill.jsonl.rejected").read_bytes().splitlines()
    assert [UsageRecord.from_json(line).request_id for line in rejected] == ["req-000003"]
    assert not spill.exists()


async def test_nul_characters_do_not_poison_a_batch(make_store: Callable[..., LedgerStore]) -> None:
    store = make_store()
    await store.write([record(1, tenant="ac\x00me", tags={"k\x00": "v\x00"})])
    rows = await store.query(0, 4e9, ["tenant"])
    assert [row["tenant"] for row in rows] in (["ac\x00me"], ["acme"])  # SQLite keeps it; PostgreSQL cannot


async def test_values_of_odd_types_are_stored_as_text(make_store: Callable[..., LedgerStore]) -> None:
    store = make_store()
    odd = record(1, tenant=Path("acme"), tags={"n": 3, "path": Path("x")})  # what a careless caller might pass
    assert await store.write([odd]) == 1
    assert [row["tenant"] for row in await store.query(0, 4e9, ["tenant"])] == ["acme"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread priorities are a Linux feature")
async def test_the_sqlite_writer_thread_runs_below_the_event_loop(tmp_path: Path) -> None:
    """It shares the loop's core; at a lower priority its batches wait for the loop's idle time."""
    store = SQLiteStore(tmp_path / "ledger.sqlite3")
    await store.open()
    try:
        writer = await store._run(threading.get_native_id)
        assert writer != threading.get_native_id()
        assert os.getpriority(os.PRIO_PROCESS, writer) == os.getpriority(os.PRIO_PROCESS, 0) + WRITER_NICENESS
    finally:
        await store.aclose()
