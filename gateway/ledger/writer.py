"""The ledger: usage records leave the request path at once and reach the store in batches.

`submit` only appends to an in-memory queue (no I/O, no await, no exception), so recording usage costs
a request next to nothing. A flusher task writes the queue in batches of `batch_size`, at least every
`flush_interval_s`. No record is dropped on the way:

- the store fails: the batch goes to the spill file (fsynced) and, until the store is back, so does
  every later batch; a replayer retries with exponential backoff by replaying the spill file, which
  cannot double a record (see gateway/ledger/spill.py);
- the queue is full (`queue_size`): new records go to the spill file, by the flusher, off the loop;
- shutdown: `aclose` writes whatever is queued, or spills it, before it returns. The app's lifespan
  calls it after uvicorn drained in-flight requests, so SIGTERM loses nothing either.

Only a crash of the process (SIGKILL, power loss) loses records: those still in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import deque
from collections.abc import Sequence
from typing import Any

from gateway.config import LedgerSettings
from gateway.ledger.record import UsageRecord
from gateway.ledger.spill import SpillFile
from gateway.ledger.store import LedgerStore, RecordsRejected, open_store

log = logging.getLogger("llm_gateway.ledger")

#: How often the replayer looks for spill files it was not told about (another process, an old run).
_SPILL_CHECK_S = 30.0


class Ledger:
    def __init__(
        self,
        store: LedgerStore,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        queue_size: int = 100_000,
        spill_path: str = "data/ledger-spill.jsonl",
        settings: LedgerSettings | None = None,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 10.0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_size = queue_size
        self.spill = SpillFile(spill_path)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.written = 0  # records the flusher stored
        self.spilled = 0  # records appended to the spill file
        self.replayed = 0  # records stored from the spill file
        self.rejected = 0  # records the store refused as data, kept in the `.rejected` file
        self.store_up = True  # False from a failed write until a replay succeeds; meanwhile batches spill
        self._queue: deque[UsageRecord] = deque()
        self._overflow: list[UsageRecord] = []  # arrived while the queue was full: to the spill file
        self._wake = asyncio.Event()
        self._spill_waiting = asyncio.Event()
        self._stop = asyncio.Event()
        self._close_started = False
        self._closing = False  # the tasks are to finish: drain everything, then stop
        self._closed = False  # the tasks are done: later records go straight to the spill file
        self._successor: Ledger | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._predecessors: set[asyncio.Task[None]] = set()  # older ledgers closing after a hand-over

    @classmethod
    def from_settings(cls, settings: LedgerSettings) -> Ledger:
        """A ledger for `settings`; it does no I/O until started."""
        return cls(
            open_store(settings.url.get_secret_value()),
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
            queue_size=settings.queue_size,
            spill_path=settings.spill_path,
            settings=settings,
        )

    async def start(self) -> None:
        """Start the flusher and the replayer (which first replays what an earlier run left spilled)."""
        self._launch()

    def submit(self, record: UsageRecord) -> None:
        """Queue one record. Never blocks, never raises; call it from the event loop's thread."""
        try:
            if self._successor is not None:
                self._successor.submit(record)
            elif self._closed:
                self._spill_after_close(record)
            elif len(self._queue) >= self.queue_size:
                self._overflow.append(record)
                self._wake.set()
            else:
                self._queue.append(record)
                if len(self._queue) >= self.batch_size and not self._wake.is_set():
                    self._wake.set()
        except Exception:
            log.exception("ledger: could not queue usage record %s", getattr(record, "request_id", "?"))

    def stats(self) -> dict[str, Any]:
        """Counters for /admin and metrics."""
        return {
            "queued": len(self._queue) + len(self._overflow),
            "written": self.written,
            "spilled": self.spilled,
            "replayed": self.replayed,
            "rejected": self.rejected,
            "store_up": self.store_up,
        }

    async def query(
        self, since: float, until: float, group_by: Sequence[str], tenant: str | None = None
    ) -> list[dict[str, Any]]:
        """Grouped sums from the store (records still queued or spilled are not in them yet)."""
        return await self.store.query(since, until, group_by, tenant=tenant)

    async def aclose(self) -> None:
        """Write (or spill) everything queued, stop the tasks, close the store. Later submits are
        appended straight to the spill file, for the next run to replay."""
        if self._close_started:
            return
        self._close_started = True
        for predecessor in list(self._predecessors):  # they may still be writing; let them finish first
            with contextlib.suppress(Exception):
                await predecessor
        self._closing = True
        self._stop.set()
        self._wake.set()
        for task in self._tasks:
            try:
                await task
            except Exception:  # a bug in a task must not keep the rest of shutdown from running
                log.exception("ledger: %s failed", task.get_name())
        if self._queue or self._overflow:  # never started, or a record came in as the flusher ended
            await self._drain()
        self._closed = True
        try:
            await self.store.aclose()
        except Exception:
            log.exception("ledger: closing the store failed")

    def hand_over(self, successor: Ledger) -> None:
        """A config reload replaced this ledger: from now on records go to `successor` (started here),
        while this one writes what it holds and closes. Needs a running event loop."""
        loop = asyncio.get_running_loop()
        self._successor = successor
        successor._launch()
        task = loop.create_task(self.aclose())
        successor._predecessors.add(task)  # also keeps the task referenced until it is done
        task.add_done_callback(successor._predecessors.discard)

    def _launch(self) -> None:
        if self._tasks or self._closing:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._flush_loop(), name="ledger-flusher"),
            loop.create_task(self._replay_loop(), name="ledger-replayer"),
        ]
        self._spill_waiting.set()  # look for leftovers of an earlier run at once

    async def _flush_loop(self) -> None:
        while True:
            try:
                if await self._flush_once():
                    return
            except Exception:  # a bug here must not stop the ledger: the queue would only grow
                log.exception("ledger: flush failed")
                await asyncio.sleep(self.flush_interval_s)

    async def _flush_once(self) -> bool:
        """Wait for a full batch or the interval, then write; True once closing and nothing is left."""
        timed_out = False
        if not self._closing and len(self._queue) < self.batch_size and not self._overflow:
            try:
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                timed_out = True
        self._wake.clear()
        # A full batch goes at once; a partial one waits for the interval (or shutdown) to pass.
        if not await self._drain(partial=timed_out or self._closing) and not self._closing:
            with contextlib.suppress(TimeoutError):  # neither store nor disk: pause, then try again
                async with asyncio.timeout(self.flush_interval_s):
                    await self._stop.wait()
        return self._closing and not self._queue and not self._overflow

    async def _drain(self, *, partial: bool = True) -> bool:
        """Write or spill the queue a batch at a time (the last one partial, if `partial`); False when
        records could go nowhere."""
        if self._overflow:
            overflow, self._overflow = self._overflow, []
            if not await self._spill_records(overflow):
                return False
        while self._queue and (partial or len(self._queue) >= self.batch_size):
            count = min(self.batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(count)]
            if self.store_up:
                try:
                    self.written += await self._store(batch)
                    continue
                except Exception as exc:
                    self.store_up = False
                    log.warning("ledger: store unavailable, spilling to %s: %s", self.spill.path, exc)
            if not await self._spill_records(batch):
                return False
        return True

    async def _store(self, records: list[UsageRecord]) -> int:
        """Write a batch; returns how many records were stored. When the store refuses the data, the
        records are written one by one and the refused ones kept aside: a poisoned record must not
        hold its batch back forever."""
        try:
            await self.store.write(records)
            return len(records)
        except RecordsRejected:
            refused = []
            for record in records:
                try:
                    await self.store.write([record])
                except RecordsRejected as exc:
                    log.error(
                        "ledger: store refused record %s, kept in %s: %s", record.request_id, self.spill.rejected, exc
                    )
                    refused.append(record)
            if refused:
                await asyncio.to_thread(self.spill.reject, refused)
                self.rejected += len(refused)
            return len(records) - len(refused)

    async def _spill_records(self, records: list[UsageRecord]) -> bool:
        try:
            await asyncio.to_thread(self.spill.append, records)
        except Exception as exc:
            # Neither the store nor the disk takes them: memory is all that is left. Keep them queued
            # (beyond queue_size), and let the next flush try the store again; only a crash loses them.
            self._queue.extendleft(reversed(records))
            self.store_up = True
            log.error(
                "ledger: cannot write spill file %s (%s); %d records held in memory",
                self.spill.path,
                exc,
                len(self._queue),
            )
            if self._closing:
                log.error("ledger: shutting down with %d usage records unwritten", len(self._queue))
                self._queue.clear()
            return False
        self.spilled += len(records)
        self._spill_waiting.set()
        return True

    def _spill_after_close(self, record: UsageRecord) -> None:
        """A record submitted after aclose (a request that outlived the shutdown): straight to disk.
        This blocks, but only in a process that is shutting down."""
        try:
            self.spill.append([record])
            self.spilled += 1
        except OSError:
            log.error("ledger: closed, and cannot spill usage record %s", record.request_id)

    async def _replay_loop(self) -> None:
        delay = self.retry_initial_s
        while not self._closing:
            if not self._spill_waiting.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_SPILL_CHECK_S):
                        await self._any(self._spill_waiting, self._stop)
                if self._closing:
                    return
                if not self._spill_waiting.is_set() and not await asyncio.to_thread(self.spill.pending):
                    continue
            self._spill_waiting.clear()  # an append from now on sets it again
            try:
                await self._replay()
                delay = self.retry_initial_s
            except Exception as exc:
                if not isinstance(exc, OSError):  # the store failed, not the spill file
                    self.store_up = False
                self._spill_waiting.set()
                wait = random.uniform(delay / 2, delay)
                log.warning("ledger: replay failed (%s); next try in %.1f s", exc, wait)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._stop.wait()
                delay = min(delay * 2, self.retry_max_s)

    async def _replay(self) -> None:
        """Write spilled records to the store until no spill file is left (or shutdown begins)."""
        while not self._closing:
            replay = await asyncio.to_thread(self.spill.claim)
            if replay is None:
                return
            finished = False
            try:
                while not self._closing:
                    records = await asyncio.to_thread(replay.read, self.batch_size)
                    if not records:
                        finished = True
                        break
                    self.replayed += await self._store(records)
                    self.store_up = True  # the flusher may write directly again
            finally:
                if not finished:
                    replay.release()  # the file stays, whole, for the next try or the next run
            if not finished:
                return  # shutdown began mid-replay: the rest is replayed at the next start
            await asyncio.to_thread(replay.done)

    @staticmethod
    async def _any(*events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
