"""The shared ledger store: PostgreSQL through psycopg 3, two async connections per process.

No pool is needed: writes are batches from a single flusher, on one connection, and reports get the
other, so a long report never holds writes back. Each is opened on first use and dropped after any
failure, so the next call reconnects; a call that hangs (a network black hole) is bounded by
`timeout_s`. Table creation takes an advisory lock, because every worker of every replica may try it
at the same moment on an empty database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg

from gateway.ledger.record import COLUMNS, UsageRecord, tags_json
from gateway.ledger.store import TABLE, LedgerStore, RecordsRejected, StoreUnavailable, group_rows, select_sql

T = TypeVar("T")

_TYPES = {
    "request_id": "TEXT PRIMARY KEY",
    "ts": "DOUBLE PRECISION NOT NULL",
    "tags": "JSONB",
    "stream": "BOOLEAN",
    "prompt_tokens": "BIGINT",
    "completion_tokens": "BIGINT",
    "cached_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT",
    "cost_usd": "DOUBLE PRECISION",
    "estimated": "BOOLEAN",
    "latency_ms": "DOUBLE PRECISION",
    "ttft_ms": "DOUBLE PRECISION",
    "cache_hit": "BOOLEAN",
    "attempts": "INTEGER",
    "status": "INTEGER",
}

#: pg_advisory_xact_lock key serializing schema creation across processes ("llmgwldg" in ASCII).
_SCHEMA_LOCK = 0x6C6C6D67776C6467


class _Slot:
    """One connection and the lock that keeps its protocol to one operation at a time."""

    def __init__(self) -> None:
        self.connection: psycopg.AsyncConnection[Any] | None = None
        self.lock = asyncio.Lock()


class PostgresStore(LedgerStore):
    def __init__(self, url: str, *, timeout_s: float = 10.0, table: str = TABLE) -> None:
        if not table.isidentifier():
            raise ValueError(f"not a table name: {table!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.table = table
        self._writer = _Slot()
        self._reader = _Slot()
        columns = ", ".join(f'"{name}"' for name in COLUMNS)
        marks = ", ".join("%s::jsonb" if name == "tags" else "%s" for name in COLUMNS)
        self._insert = f'INSERT INTO "{table}" ({columns}) VALUES ({marks}) ON CONFLICT ("request_id") DO NOTHING'

    async def open(self) -> None:
        async def connected(connection: psycopg.AsyncConnection[Any]) -> None:
            return None

        await self._guarded(self._writer, connected)

    async def write(self, records: Sequence[UsageRecord]) -> int:
        rows = [_row(record) for record in records]

        async def insert(connection: psycopg.AsyncConnection[Any]) -> int:
            async with connection.transaction(), connection.cursor() as cursor:
                await cursor.executemany(self._insert, rows)  # pipelined: one round trip per batch
                return max(cursor.rowcount, 0)

        return await self._guarded(self._writer, insert)

    async def query(
        self, since: float, until: float, group_by: Sequence[str], tenant: str | None = None
    ) -> list[dict[str, Any]]:
        sql = select_sql(self.table, group_by, tenant=tenant is not None, placeholder="%s")
        params = (since, until) if tenant is None else (since, until, tenant)

        async def select(connection: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cursor = await connection.execute(sql, params)
            return await cursor.fetchall()

        return group_rows(await self._guarded(self._reader, select), group_by)

    async def aclose(self) -> None:
        for slot in (self._writer, self._reader):
            async with slot.lock:
                await _drop(slot)

    async def _guarded(self, slot: _Slot, operation: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]) -> T:
        """Run one operation on the slot's connection, within the time limit; on failure, drop the
        connection and say which kind of failure it was."""
        async with slot.lock:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if slot.connection is None or slot.connection.closed:
                        slot.connection = await self._connect()
                    return await operation(slot.connection)
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                raise RecordsRejected(str(exc)) from exc  # the transaction rolled back; the connection is fine
            except (psycopg.Error, OSError, TimeoutError) as exc:
                await _drop(slot)
                raise StoreUnavailable(f"{type(exc).__name__}: {' '.join(str(exc).split())}") from exc
            except BaseException:
                await _drop(slot)  # cancelled mid-protocol: the connection's state is unknown
                raise

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        connection = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            connect_timeout=max(1, round(self.timeout_s)),
            application_name="llm-gateway-ledger",
            prepare_threshold=None,  # no server-side prepared statements: they break behind PgBouncer
        )
        try:
            columns = ", ".join(f'"{name}" {_TYPES.get(name, "TEXT")}' for name in COLUMNS)
            async with connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                await connection.execute(f'CREATE TABLE IF NOT EXISTS "{self.table}" ({columns})')
                await connection.execute(f'CREATE INDEX IF NOT EXISTS "{self.table}_ts" ON "{self.table}" ("ts")')
                await connection.execute(
                    f'CREATE INDEX IF NOT EXISTS "{self.table}_tenant_ts" ON "{self.table}" ("tenant", "ts")'
                )
        except BaseException:
            await connection.close()
            raise
        return connection


async def _drop(slot: _Slot) -> None:
    connection, slot.connection = slot.connection, None
    if connection is not None:
        try:
            await connection.close()
        except Exception:  # closing a broken connection may fail too; it is gone either way
            pass


def _row(record: UsageRecord) -> tuple[Any, ...]:
    """The record's values for PostgreSQL, which refuses NUL characters in text and JSON, and types it
    cannot adapt: those are made plain text, so one odd header or metadata value cannot make a whole
    batch unwritable (it would be spilled and replayed forever)."""
    values = []
    for name in COLUMNS:
        value = getattr(record, name)
        if name == "tags":
            value = tags_json({_clean(k): _clean(v) for k, v in value.items()} if isinstance(value, dict) else value)
        values.append(_clean(value))
    return tuple(values)


def _clean(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else str(value)
    return text.replace("\x00", "") if "\x00" in text else text
