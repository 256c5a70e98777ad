"""The ledger across config reloads: kept when its settings stay, handed over (nothing lost) when they change."""

from __future__ import annotations

from pathlib import Path

from gateway.config import parse_config
from gateway.runtime import Runtime
from tests.ledger.conftest import record, stored_ids

CONFIG = """
providers: {{p: {{type: mock}}}}
models: {{chat: {{deployments: [{{provider: p, model: {model}}}]}}}}
ledger: {{url: "sqlite:///{db}", spill_path: "{spill}", batch_size: {batch}, flush_interval_s: 30}}
"""


def config(tmp_path: Path, *, model: str = "m", batch: int = 100, db: str = "ledger.sqlite3") -> str:
    return CONFIG.format(model=model, batch=batch, db=tmp_path / db, spill=tmp_path / "spill.jsonl")


async def test_a_reload_keeps_the_ledger_or_hands_it_over(tmp_path: Path) -> None:
    first = Runtime.build(parse_config(config(tmp_path), "a.yaml"), started_at=0)
    await first.ledger.start()
    try:
        same = Runtime.build(parse_config(config(tmp_path, model="n"), "a.yaml"), 0, previous=first, http=first.http)
        assert same.ledger is first.ledger and same.replaced_ledger is None
        same.adopt_state()

        changed = Runtime.build(
            parse_config(config(tmp_path, batch=50, db="other.sqlite3"), "a.yaml"), 0, previous=same, http=first.http
        )
        assert changed.ledger is not first.ledger
        first.ledger.submit(record(1))  # queued in the old ledger before the swap: written to the old store
        changed.adopt_state()
        first.ledger.submit(record(2))  # from a request still running on the old runtime: goes to the new one
        changed.ledger.submit(record(3))
        await changed.ledger.aclose()  # waits for the old ledger to finish closing, too
        assert await stored_ids(first.ledger.store) == ["req-000001"]
        assert sorted(await stored_ids(changed.ledger.store)) == ["req-000002", "req-000003"]
    finally:
        await first.aclose()
