"""What every limits store shares: planning a request, turning the store's answer into an admission or a
refusal, settling exactly once, failing open or closed, and reporting soft thresholds.

A store implements two atomic steps, `_reserve` and `_settle`, over a `Plan`; each answers with plain
integers, laid out the same way by the Lua scripts and by the in-memory twin.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gateway.limits.api import Admission
from gateway.limits.plan import BudgetCheck, Plan, plan_for, to_micro, usd_text
from gateway.tenancy import Caller

log = logging.getLogger("llm_gateway.limits")

#: A reservation never settled (a crashed replica) stops holding budget after this long.
DEFAULT_RESERVATION_TTL_S = 900.0

Clock = Callable[[], float]


class StoreUnavailable(Exception):
    """The store could not be asked; the tenant's `on_redis_failure` decides what happens."""


@dataclass(frozen=True, slots=True)
class Verdict:
    failed: int | None  # index of the first check that refused (budgets, then rates); None: admitted
    retry_ms: int  # for a refusing rate limit: until enough of its window frees
    values: list[int]  # per budget: spent, reserved; per rate: used, ms until the oldest use leaves


@dataclass(frozen=True, slots=True)
class Settlement:
    spent: list[int]  # per budget, after the charge
    crossed: list[int]  # indexes of budgets whose soft threshold this charge crossed first in the period


class BaseLimits:
    """Admit/settle over a store; subclasses provide `_reserve`, `_settle` and `aclose`."""

    def __init__(self, *, clock: Clock = time.time, reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S) -> None:
        self._clock = clock
        self._reservation_ttl_ms = round(reservation_ttl_s * 1000)
        self.soft_threshold_crossings = 0
        self.redis_failures = 0

    async def admit(
        self, caller: Caller, team: str | None, estimated_cost_usd: float, estimated_tokens: int
    ) -> Admission:
        now = self._clock()
        plan = plan_for(caller, team, now)
        if plan is None:
            return Admission(caller=caller, team=team, reserved_micro_usd=0, estimated_tokens=0)
        cost = to_micro(estimated_cost_usd)
        tokens = max(0, int(estimated_tokens))
        now_ms = round(now * 1000)
        admission = Admission(
            caller=caller,
            team=team,
            reserved_micro_usd=cost,
            estimated_tokens=tokens,
            admission_id=uuid.uuid4().hex,
            admitted_ms=now_ms,
            plan=plan,
        )
        try:
            verdict = await self._reserve(plan, admission.admission_id, now_ms, cost, tokens)
        except StoreUnavailable:
            if not plan.fail_open:
                raise plan.unavailable() from None
            admission.degraded = True
            return admission
        if verdict.failed is not None:
            raise plan.refusal(verdict.failed, verdict.retry_ms, verdict.values, cost, tokens, now)
        admission.rates = plan.rate_states(verdict.values)
        return admission

    async def settle(self, admission: Admission, actual_cost_usd: float, actual_tokens: int) -> None:
        if admission.settled:
            return
        admission.settled = True
        plan = admission.plan
        if plan is None or not (plan.budgets or plan.token_rates):
            return
        actual = to_micro(actual_cost_usd)
        tokens = max(0, int(actual_tokens))
        if admission.degraded:  # nothing was reserved: charge the actual afresh, to the current second
            bucket, delta, create = int(self._clock()), tokens, True
        else:
            bucket, delta, create = admission.admitted_ms // 1000, tokens - admission.estimated_tokens, False
        # Shielded: a client that disconnects while we settle must not leave its spend uncharged.
        work = asyncio.ensure_future(self._settle(plan, admission.admission_id, actual, bucket, delta, create))
        work.add_done_callback(_retrieve)
        try:
            settlement = await asyncio.shield(work)
        except StoreUnavailable:
            return
        for index in settlement.crossed:
            self._report_soft(plan.budgets[index], settlement.spent[index])

    async def aclose(self) -> None:
        return None

    def _report_soft(self, budget: BudgetCheck, spent: int) -> None:
        self.soft_threshold_crossings += 1
        log.warning(
            "%s has spent %s of its %s budget of %s for %s, past the %d%% soft threshold",
            budget.who[:1].upper() + budget.who[1:],
            usd_text(spent),
            budget.period,
            usd_text(budget.limit),
            budget.period_label,
            round(budget.soft_ratio * 100),
        )

    async def _reserve(self, plan: Plan, admission_id: str, now_ms: int, cost: int, tokens: int) -> Verdict:
        raise NotImplementedError

    async def _settle(
        self, plan: Plan, admission_id: str, actual: int, bucket: int, delta: int, create: bool
    ) -> Settlement:
        raise NotImplementedError

    def _reservation_expiry(self, now_ms: int) -> int:
        return now_ms + self._reservation_ttl_ms


def _retrieve(task: asyncio.Future[Settlement]) -> None:
    """Mark a settlement's failure as seen when its caller was cancelled and is no longer waiting for it."""
    if not task.cancelled():
        task.exception()
