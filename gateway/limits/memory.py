"""Limits held in this process: the embedded default, exact for one replica.

The same algorithm as the Lua scripts (see `gateway/limits/scripts.py`), step for step, so one test
suite holds both to the same behaviour. Each step runs without an `await` in the middle, which makes it
atomic on the event loop the way a script is atomic in Redis.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from gateway.limits.base import DEFAULT_RESERVATION_TTL_S, BaseLimits, Clock, Settlement, Verdict
from gateway.limits.plan import WINDOW_MS, Plan

_SWEEP_EVERY_MS = 60_000


@dataclass(slots=True)
class _Budget:
    spent: int = 0
    reserved: int = 0
    # admission id -> (micro-dollars, expiry ms); one TTL for all, so insertion order is expiry order
    held: OrderedDict[str, tuple[int, int]] = field(default_factory=OrderedDict)
    soft_warned: bool = False
    expires_ms: int = 0


class MemoryLimits(BaseLimits):
    """Budgets and rate limits for a single replica, with no Redis."""

    def __init__(self, *, clock: Clock = time.time, reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        super().__init__(clock=clock, reservation_ttl_s=reservation_ttl_s)
        self._budgets: dict[str, _Budget] = {}
        self._requests: dict[str, deque[int]] = {}
        self._tokens: dict[str, dict[int, int]] = {}
        self._swept_ms = 0

    async def _reserve(self, plan: Plan, admission_id: str, now_ms: int, cost: int, tokens: int) -> Verdict:
        self._sweep(now_ms)
        failed: int | None = None
        retry_ms = 0
        values: list[int] = []
        budgets = [self._budgets.setdefault(check.key, _Budget()) for check in plan.budgets]
        for index, (check, state) in enumerate(zip(plan.budgets, budgets, strict=True)):
            _release_expired(state, now_ms)
            if failed is None and state.spent + state.reserved + cost > check.limit:
                failed = index
            values += [state.spent, state.reserved]
        for offset, rate in enumerate(plan.rates):
            index = len(plan.budgets) + offset
            if rate.kind == "requests":
                log = self._requests.setdefault(rate.key, deque())
                while log and log[0] <= now_ms - WINDOW_MS:
                    log.popleft()
                used = len(log)
                reset = log[0] + WINDOW_MS - now_ms if log else 0
                if failed is None and used + 1 > rate.limit:
                    failed, retry_ms = index, log[used - rate.limit] + WINDOW_MS - now_ms
            else:
                buckets = self._tokens.setdefault(rate.key, {})
                ordered = _live_buckets(buckets, now_ms)
                used = sum(count for _, count in ordered)
                reset = (ordered[0][0] + 60) * 1000 - now_ms if ordered else 0
                if failed is None and used + tokens > rate.limit:
                    failed, retry_ms = (
                        index,
                        _tokens_free_in(ordered, used + tokens - rate.limit, tokens, rate.limit, now_ms),
                    )
            values += [used, reset]
        if failed is not None:
            return Verdict(failed=failed, retry_ms=retry_ms, values=values)

        expiry = self._reservation_expiry(now_ms)
        for index, (check, state) in enumerate(zip(plan.budgets, budgets, strict=True)):
            if cost > 0:
                state.reserved += cost
                state.held[admission_id] = (cost, expiry)
            state.expires_ms = max(state.expires_ms, now_ms + check.ttl_s * 1000)
            values[2 * index + 1] = state.reserved
        offset = 2 * len(plan.budgets)
        now_s = now_ms // 1000
        for position, rate in enumerate(plan.rates):
            slot = offset + 2 * position
            if rate.kind == "requests":
                log = self._requests[rate.key]
                log.append(now_ms)
                values[slot], values[slot + 1] = len(log), log[0] + WINDOW_MS - now_ms
            else:
                buckets = self._tokens[rate.key]
                if tokens > 0:
                    buckets[now_s] = buckets.get(now_s, 0) + tokens
                values[slot] += tokens
                if buckets:
                    values[slot + 1] = (min(buckets) + 60) * 1000 - now_ms
        return Verdict(failed=None, retry_ms=0, values=values)

    async def _settle(
        self, plan: Plan, admission_id: str, actual: int, bucket: int, delta: int, create: bool
    ) -> Settlement:
        now_ms = round(self._clock() * 1000)
        spent: list[int] = []
        crossed: list[int] = []
        for index, check in enumerate(plan.budgets):
            state = self._budgets.setdefault(check.key, _Budget())
            held = state.held.pop(admission_id, None)
            if held is not None:
                state.reserved -= held[0]
            state.spent += actual
            state.expires_ms = max(state.expires_ms, now_ms + check.ttl_s * 1000)
            if state.spent > 0 and state.spent >= check.soft and not state.soft_warned:
                state.soft_warned = True
                crossed.append(index)
            spent.append(state.spent)
        for rate in plan.token_rates:
            buckets = self._tokens.setdefault(rate.key, {})
            if delta and (create or bucket in buckets):
                buckets[bucket] = max(0, buckets.get(bucket, 0) + delta)
        return Settlement(spent=spent, crossed=crossed)

    def _sweep(self, now_ms: int) -> None:
        """Forget past periods and idle windows, as Redis key expiry would."""
        if now_ms - self._swept_ms < _SWEEP_EVERY_MS:
            return
        self._swept_ms = now_ms
        for key in [key for key, state in self._budgets.items() if state.expires_ms < now_ms]:
            del self._budgets[key]
        for key in [key for key, log in self._requests.items() if not log or log[-1] <= now_ms - WINDOW_MS]:
            del self._requests[key]
        for key in [key for key, buckets in self._tokens.items() if not _live_buckets(buckets, now_ms)]:
            del self._tokens[key]


def _release_expired(state: _Budget, now_ms: int) -> None:
    """Reservations past their expiry (never settled: a crash) give their budget back."""
    while state.held:
        admission_id, (amount, expiry) = next(iter(state.held.items()))
        if expiry > now_ms:
            break
        del state.held[admission_id]
        state.reserved -= amount


def _live_buckets(buckets: dict[int, int], now_ms: int) -> list[tuple[int, int]]:
    """The one-second buckets still inside the window, oldest first; older ones are dropped."""
    oldest = now_ms // 1000 - 59
    for second in [second for second in buckets if second < oldest]:
        del buckets[second]
    return sorted(buckets.items())


def _tokens_free_in(ordered: list[tuple[int, int]], need: int, tokens: int, limit: int, now_ms: int) -> int:
    """Milliseconds until enough buckets leave the window to free `need` tokens (a whole window if the
    request alone is over the limit: it can never fit)."""
    if tokens > limit:
        return WINDOW_MS
    for second, count in ordered:
        need -= count
        if need <= 0:
            return (second + 60) * 1000 - now_ms
    return WINDOW_MS
