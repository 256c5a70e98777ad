"""Crash safety of the spill file: whatever point a process dies at, replay loses and doubles nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.ledger import Ledger, UsageRecord
from gateway.ledger.spill import SpillFile
from gateway.ledger.store import LedgerStore
from tests.ledger.conftest import record, stored_ids, wait_for


async def replay_all(ledger: Ledger) -> None:
    await ledger.start()
    await wait_for(lambda: not ledger.spill.pending(), what="the spill to be replayed")
    await ledger.aclose()


@pytest.mark.parametrize("stored_before_crash", [0, 40, 100])
async def test_records_replayed_before_a_crash_are_replayed_again_without_doubling(
    make_store: Callable[..., LedgerStore], tmp_path: Path, stored_before_crash: int
) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([record(i) for i in range(100)])
    # A replay claims the file, stores some or all of it, then the process dies before deleting it.
    replay = spill.claim()
    assert replay is not None
    store = make_store()
    await store.write(replay.read(stored_before_crash) if stored_before_crash else [])
    replay.release()
    assert spill.replaying.exists()
    spill.append([record(i) for i in range(100, 150)])  # spilled meanwhile: a new file beside it

    ledger = Ledger(make_store(), batch_size=30, flush_interval_s=0.05, spill_path=str(spill.path))
    await replay_all(ledger)

    ids = await stored_ids(store)
    assert sorted(ids) == [f"req-{i:06d}" for i in range(150)]  # each once
    assert ledger.replayed == 150
    assert not spill.path.exists() and not spill.replaying.exists()


async def test_a_line_torn_by_a_crash_is_skipped_and_the_rest_replayed(
    make_store: Callable[..., LedgerStore], tmp_path: Path
) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([record(i) for i in range(10)])
    tear(spill.path, record(10).to_json()[:40])  # the process died mid-append (never fsynced, never counted)
    ledger = Ledger(make_store(), batch_size=4, flush_interval_s=0.05, spill_path=str(spill.path))
    await replay_all(ledger)
    assert sorted(await stored_ids(ledger.store)) == [f"req-{i:06d}" for i in range(10)]
    assert not spill.path.exists() and not spill.replaying.exists()


def tear(path: Path, partial_line: bytes) -> None:
    with open(path, "ab") as file:
        file.write(partial_line)


def test_appends_after_a_claim_go_to_a_new_file(tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    assert spill.claim() is None and not spill.pending()
    spill.append([record(1), record(2)])
    replay = spill.claim()
    assert replay is not None
    spill.append([record(3)])  # while the replay reads the claimed file
    assert [r.request_id for r in replay.read(10)] == ["req-000001", "req-000002"]
    assert replay.read(10) == []
    replay.done()
    assert spill.pending()
    second = spill.claim()
    assert second is not None
    assert [r.request_id for r in second.read(10)] == ["req-000003"]
    second.done()
    assert not spill.pending()


def test_one_replay_at_a_time_across_processes(tmp_path: Path) -> None:
    """Two SpillFile objects on one path stand for two worker processes: the lock is an flock on a
    file, which excludes separate opens even within one process."""
    spill, other = SpillFile(tmp_path / "spill.jsonl"), SpillFile(tmp_path / "spill.jsonl")
    spill.append([record(1)])
    replay = spill.claim()
    assert replay is not None
    assert other.claim() is None
    replay.release()
    again = other.claim()
    assert again is not None
    assert [r.request_id for r in again.read(10)] == ["req-000001"]
    again.done()


def test_a_record_survives_its_json_line() -> None:
    original = record(7, tags={"team": "search", "ü": "✓"}, ttft_ms=None, estimated=True, stream=True, status=499)
    assert UsageRecord.from_json(original.to_json()) == original
    newer = original.to_json().replace(b"{", b'{"added_later":1,', 1)
    assert UsageRecord.from_json(newer) == original
    for broken in (b"[1]", b'{"ts": 1}', b'{"request_id": "x"', b"\xff"):
        with pytest.raises(ValueError):
            UsageRecord.from_json(broken)


async def test_shutdown_in_the_middle_of_a_replay_keeps_the_unreplayed_records_for_the_next_start(
    tmp_path: Path,
) -> None:
    """Shutdown stops a replay between batches: what was not stored yet must stay in the spill file."""

    class SlowStore(LedgerStore):
        def __init__(self) -> None:
            self.rows: dict[str, UsageRecord] = {}

        async def open(self) -> None:
            return None

        async def write(self, records: list[UsageRecord]) -> int:
            await asyncio.sleep(0.2)
            new = [r for r in records if r.request_id not in self.rows]
            self.rows.update((r.request_id, r) for r in records)
            return len(new)

        async def query(self, *args: object, **kwargs: object) -> list[dict[str, object]]:
            return []

        async def aclose(self) -> None:
            return None

    path = tmp_path / "spill.jsonl"
    SpillFile(str(path)).append([UsageRecord(request_id=f"r{i}", ts=1.0) for i in range(30)])
    store = SlowStore()
    ledger = Ledger(store, batch_size=10, spill_path=str(path))
    await ledger.start()
    await asyncio.sleep(0.1)  # the replay is writing its first batch of three
    await ledger.aclose()
    assert SpillFile(str(path)).pending(), "records not yet replayed must wait for the next start"

    again = Ledger(store, batch_size=10, spill_path=str(path))
    await again.start()
    for _ in range(50):
        if len(store.rows) == 30:
            break
        await asyncio.sleep(0.1)
    await again.aclose()
    assert sorted(store.rows) == sorted(f"r{i}" for i in range(30))
