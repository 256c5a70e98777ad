"""What the ledger needs from a database: idempotent batch writes and grouped sums.

Writes must be idempotent (`request_id` is the primary key, conflicts are ignored): a batch whose
commit was not acknowledged is spilled and replayed, so the same record may reach the store twice,
and it must count once. Failures come in two kinds the writer treats differently: `StoreUnavailable`
(retry later, spill meanwhile) and `RecordsRejected` (the data itself is refused; retrying the same
batch would loop forever).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from gateway.ledger.record import UsageRecord

#: Columns a report may group by. Only these names ever reach SQL as identifiers.
GROUP_COLUMNS: tuple[str, ...] = (
    "tenant",
    "team",
    "feature",
    "alias",
    "provider",
    "deployment",
    "model",
    "status",
    "key_name",
)

#: The sums each group gets, in output order.
METRICS: tuple[str, ...] = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "cost_usd",
    "estimated",
)

TABLE = "usage_records"


class StoreUnavailable(Exception):
    """The store cannot be reached or cannot write now; the same call may succeed later."""


class RecordsRejected(Exception):
    """The store refused the data itself (a value it cannot hold); retrying unchanged cannot help."""


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"tenant,team"` or a list → validated column names, in order, duplicates dropped.

    Raises ValueError naming the unknown ones, so callers can answer 400 with it.
    """
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = [part.strip() for part in parts if part.strip()]
    unknown = [name for name in names if name not in GROUP_COLUMNS]
    if unknown:
        raise ValueError(f"cannot group by {', '.join(unknown)} (known: {', '.join(GROUP_COLUMNS)})")
    # Map to our own constants: what reaches SQL never is the caller's string.
    return tuple(GROUP_COLUMNS[GROUP_COLUMNS.index(name)] for name in dict.fromkeys(names))


def sort_groups(rows: list[dict[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Costliest first, then by group values (None last): the same order whatever the database."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        values = tuple((row[name] is None, "" if row[name] is None else str(row[name])) for name in group_by)
        return (-row["cost_usd"], -row["requests"], *values)

    return sorted(rows, key=key)


def select_sql(table: str, group_by: Sequence[str], *, tenant: bool, placeholder: str) -> str:
    """The grouped-sums query, the same for SQLite and PostgreSQL but for the placeholder style.

    Identifiers are our constants (`parse_group_by` maps to them), double-quoted; values are parameters:
    since, until, then the tenant when `tenant` is true."""
    for name in (table, *group_by):
        if not name.isidentifier() or (name != table and name not in GROUP_COLUMNS):
            raise ValueError(f"not a ledger column: {name!r}")
    groups = ", ".join(f'"{name}"' for name in group_by)
    sums = (
        'COUNT(*), SUM(CASE WHEN "status" >= 400 THEN 1 ELSE 0 END), SUM("prompt_tokens"), '
        'SUM("completion_tokens"), SUM("cached_tokens"), SUM("cost_usd"), SUM(CASE WHEN "estimated" THEN 1 ELSE 0 END)'
    )
    where = f'"ts" >= {placeholder} AND "ts" < {placeholder}' + (f' AND "tenant" = {placeholder}' if tenant else "")
    select = f"{groups}, {sums}" if groups else sums
    return f'SELECT {select} FROM "{table}" WHERE {where}' + (f" GROUP BY {groups}" if groups else "")


def group_rows(rows: Sequence[Sequence[Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Result tuples of `select_sql` → dicts (group values, then `METRICS`), sorted by `sort_groups`."""
    out = []
    width = len(group_by)
    for row in rows:
        if not row[width]:  # COUNT(*) = 0: no group at all (an ungrouped query over no records)
            continue
        item = dict(zip(group_by, row[:width], strict=True))
        for name, value in zip(METRICS, row[width:], strict=True):
            item[name] = round(float(value or 0), 9) if name == "cost_usd" else int(value or 0)
        out.append(item)
    return sort_groups(out, group_by)


class LedgerStore(ABC):
    """A database holding usage records. Methods are called from one event loop, never concurrently
    with `aclose`; implementations serialize their own I/O."""

    @abstractmethod
    async def open(self) -> None:
        """Connect and create the table and indexes if missing. Idempotent; raises StoreUnavailable."""

    @abstractmethod
    async def write(self, records: Sequence[UsageRecord]) -> int:
        """Insert the records in one transaction, ignoring request_ids already stored; returns how many
        were new. Raises StoreUnavailable or RecordsRejected (nothing of the batch is written then)."""

    @abstractmethod
    async def query(
        self, since: float, until: float, group_by: Sequence[str], tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Sums per group of the records with since <= ts < until (one row per group, none when empty).

        `group_by` must come from `parse_group_by`. Raises StoreUnavailable."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads; the store may not be used afterwards."""


def open_store(url: str, *, timeout_s: float | None = None) -> LedgerStore:
    """The store a `ledger.url` names; no I/O happens until the first call. Raises ValueError."""
    if url.startswith("sqlite:///"):
        from gateway.ledger.sqlite_store import SQLiteStore

        return SQLiteStore(url.removeprefix("sqlite:///"), **({"timeout_s": timeout_s} if timeout_s else {}))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.ledger.postgres_store import PostgresStore

        return PostgresStore(url, **({"timeout_s": timeout_s} if timeout_s else {}))
    raise ValueError("ledger.url must start with sqlite:/// or postgresql://")
