"""`llm-gateway usage report`: grouped usage from the ledger store a config names, as a table, CSV or JSON.

It reads the store directly (no running gateway needed), so it sees what was written, not what a
gateway still holds in memory or in its spill file.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Sequence
from typing import Any

from gateway.config import LedgerSettings
from gateway.ledger.sqlite_store import SQLiteStore
from gateway.ledger.store import METRICS, open_store
from gateway.ledger.window import iso


class ReportError(Exception):
    """The report cannot be made; the message says why, for a person."""


def fetch(
    settings: LedgerSettings, since: float, until: float, group_by: Sequence[str], tenant: str | None = None
) -> list[dict[str, Any]]:
    store = open_store(settings.url.get_secret_value())
    if isinstance(store, SQLiteStore) and not store.path.is_file():
        raise ReportError(f"no ledger at {store.path} (relative paths are relative to the current directory)")

    async def run() -> list[dict[str, Any]]:
        try:
            return await store.query(since, until, group_by, tenant=tenant)
        finally:
            await store.aclose()

    return asyncio.run(run())


def render(
    rows: list[dict[str, Any]], group_by: Sequence[str], since: float, until: float, output: str = "table"
) -> str:
    if output == "json":
        body = {"object": "list", "group_by": list(group_by), "from": iso(since), "to": iso(until), "data": rows}
        return json.dumps(body, indent=2)
    if output == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow([*group_by, *METRICS])
        for row in rows:
            writer.writerow(["" if row[name] is None else row[name] for name in (*group_by, *METRICS)])
        return buffer.getvalue().rstrip("\n")
    return _table(rows, group_by, since, until)


def _table(rows: list[dict[str, Any]], group_by: Sequence[str], since: float, until: float) -> str:
    header = [*group_by, *METRICS]
    total = {name: sum(row[name] for row in rows) for name in METRICS}
    lines = [[_cell(row.get(name), name) for name in header] for row in rows]
    if group_by and rows:
        lines.append(["TOTAL", *([""] * (len(group_by) - 1)), *(_cell(total[name], name) for name in METRICS)])
    widths = [max([len(header[i]), *(len(line[i]) for line in lines)]) for i in range(len(header))]
    numeric = [name in METRICS for name in header]

    def format_line(cells: list[str]) -> str:
        parts = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(cells, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [f"usage from {iso(since)} to {iso(until)}", format_line(header), format_line(["-" * w for w in widths])]
    if not rows:
        out.append("(no requests in this window)")
    out.extend(format_line(line) for line in lines)
    return "\n".join(out)


def _cell(value: Any, name: str) -> str:
    if value is None:
        return "-"
    if name == "cost_usd":
        return f"{value:.4f}"
    return str(value)
