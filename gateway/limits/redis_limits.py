"""Limits shared by every replica through Redis: one Lua script call to admit, one to settle.

Redis sits on the request path, so it is given little time: short socket timeouts, no retry beyond one
immediate reconnect (a pooled connection may have died with a Redis restart), and after a failure a
short pause in which calls do not try at all. A request then waits at most one timeout while Redis is
down, and each tenant's `on_redis_failure` decides between admitting unchecked and refusing with 503.
Slowness on our side is not an outage: calls beyond the pool's connections queue (bounded in time).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, NoReturn

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.limits.base import DEFAULT_RESERVATION_TTL_S, BaseLimits, Clock, Settlement, StoreUnavailable, Verdict
from gateway.limits.plan import Plan
from gateway.limits.scripts import ADMIT, SETTLE

log = logging.getLogger("llm_gateway.limits")


class RedisLimits(BaseLimits):
    """Budgets and rate limits that hold across replicas."""

    def __init__(
        self,
        url: str,
        *,
        clock: Clock = time.time,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
        socket_timeout_s: float = 0.3,
        connect_timeout_s: float = 0.5,
        probe_interval_s: float = 0.5,
        max_connections: int = 128,
        queue_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(clock=clock, reservation_ttl_s=reservation_ttl_s)
        # Calls queue on `_slots`, not inside the pool: a queued call can see that Redis went down meanwhile
        # and give up at once, and a burst that outnumbers the connections is not mistaken for an outage.
        self._slots = asyncio.Semaphore(max_connections)
        self._max_connections = max_connections
        self._queue_timeout_s = queue_timeout_s
        self._busy_logged_at = -math.inf
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)
        self._admit_script = self._redis.register_script(ADMIT)
        self._settle_script = self._redis.register_script(SETTLE)
        self._probe_interval_s = probe_interval_s
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._failed_in_outage = 0

    async def _reserve(self, plan: Plan, admission_id: str, now_ms: int, cost: int, tokens: int) -> Verdict:
        keys: list[str] = []
        args: list[Any] = [
            now_ms,
            admission_id,
            cost,
            tokens,
            self._reservation_expiry(now_ms),
            len(plan.budgets),
            len(plan.rates),
        ]
        for budget in plan.budgets:
            keys += [budget.key, budget.reservations_key]
            args += [budget.limit, budget.ttl_s]
        for rate in plan.rates:
            keys.append(rate.key)
            args += ["r" if rate.kind == "requests" else "t", rate.limit]
        raw = await self._call(self._admit_script, keys, args)
        failed = int(raw[0])
        return Verdict(failed=failed - 1 if failed else None, retry_ms=int(raw[1]), values=[int(v) for v in raw[2:]])

    async def _settle(
        self, plan: Plan, admission_id: str, actual: int, bucket: int, delta: int, create: bool
    ) -> Settlement:
        token_rates = plan.token_rates
        keys: list[str] = []
        args: list[Any] = [
            admission_id,
            actual,
            bucket,
            delta,
            "1" if create else "0",
            len(plan.budgets),
            len(token_rates),
        ]
        for budget in plan.budgets:
            keys += [budget.key, budget.reservations_key]
            args += [budget.soft, budget.ttl_s]
        keys += [rate.key for rate in token_rates]
        raw = [int(v) for v in await self._call(self._settle_script, keys, args)]
        return Settlement(spent=raw[0::2], crossed=[index for index, flag in enumerate(raw[1::2]) if flag])

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> list[Any]:
        """One script call, or `StoreUnavailable`; logs once when Redis goes away and once when it is back."""
        self._skip_while_down()
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await self._slots.acquire()
        except TimeoutError:
            self._busy()
        try:
            self._skip_while_down()  # an outage may have begun while this call queued for a connection
            result = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:  # refused, reset, timed out (TimeoutError is an OSError)
            self._failed(exc)
        finally:
            self._slots.release()
        if self._down_since is not None:
            log.warning(
                "limits store reachable again after %.1fs; %d calls went unchecked or were refused meanwhile",
                time.monotonic() - self._down_since,
                self._failed_in_outage,
            )
            self._down_since = None
        return list(result)

    def _skip_while_down(self) -> None:
        """Just after a failure, do not make every request wait on a dead connection to find out again."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            self._failed(None)

    def _busy(self) -> NoReturn:
        """Every connection stayed taken for the whole queue timeout: overloaded, not down (no pause)."""
        self.redis_failures += 1
        now = time.monotonic()
        if now - self._busy_logged_at > 60:
            self._busy_logged_at = now
            log.warning(
                "limits store busy: a call waited %.1fs for one of %d connections; handled as unreachable",
                self._queue_timeout_s,
                self._max_connections,
            )
        raise StoreUnavailable

    def _failed(self, exc: BaseException | None) -> NoReturn:
        self.redis_failures += 1
        self._failed_in_outage += 1
        if exc is not None:
            self._retry_at = time.monotonic() + self._probe_interval_s
            if self._down_since is None:
                self._down_since = time.monotonic()
                self._failed_in_outage = 1
                log.warning(
                    "limits store unreachable (%s: %s): tenants with on_redis_failure=open are admitted "
                    "unchecked, those with closed are refused with 503",
                    type(exc).__name__,
                    exc,
                )
        raise StoreUnavailable from exc

    async def aclose(self) -> None:
        await self._redis.aclose()
