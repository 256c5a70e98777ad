"""Budgets, on both stores: reserve and settle arithmetic, day and month, teams, concurrency bounds,
reservations that are never settled, and the soft threshold."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from gateway.limits import Admission, LimitExceeded, RedisLimits
from gateway.limits.base import BaseLimits
from gateway.tenancy import ANONYMOUS
from tests.limits.conftest import FakeClock, make_caller, refused, spent_micro


async def test_reserve_then_settle_charges_the_actual(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    first = await limits.admit(caller, None, 0.60, 10)
    assert first.reserved_usd == pytest.approx(0.60)
    # $0.60 is held, so $0.50 more does not fit, though nothing is spent yet.
    error = await refused(limits, caller, None, 0.50, 10)
    assert (error.status, error.code) == (429, "budget_exceeded")
    assert "$0.60 held by requests in flight" in error.message
    await limits.settle(first, 0.30, 10)  # the hold becomes $0.30 spent
    assert spent_micro(limits, caller, None, clock()) == 300_000
    second = await limits.admit(caller, None, 0.70, 10)  # 0.30 + 0.70 == 1.00: exactly fits
    await limits.settle(second, 0.70, 10)
    assert spent_micro(limits, caller, None, clock()) == 1_000_000
    error = await refused(limits, caller, None, 0.01, 10)
    assert "$1.00 spent" in error.message and "tenant '" + tenant + "'" in error.message


async def test_settle_twice_charges_once(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    admission = await limits.admit(caller, None, 0.10, 10)
    await limits.settle(admission, 0.25, 10)
    await limits.settle(admission, 0.25, 10)
    assert admission.settled
    assert spent_micro(limits, caller, None, clock()) == 250_000


async def test_daily_and_monthly_reset_at_utc_boundaries(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 1.0, "monthly_usd": 1.5})
    await limits.settle(await limits.admit(caller, None, 1.0, 1), 1.0, 1)
    error = await refused(limits, caller, None, 0.5, 1)
    assert "daily budget" in error.message
    assert error.retry_after_s == pytest.approx(12 * 3600)  # from 12:00 to midnight UTC

    clock.advance(12 * 3600)  # 2025-01-16 00:00: a new day, the same month
    await limits.settle(await limits.admit(caller, None, 0.5, 1), 0.5, 1)
    error = await refused(limits, caller, None, 0.01, 1)
    assert "monthly budget" in error.message
    until_february = datetime(2025, 2, 1, tzinfo=UTC).timestamp() - clock()
    assert error.retry_after_s == pytest.approx(until_february)
    assert error.headers() == {}  # no rate limits configured: no x-ratelimit-* headers

    clock.now = datetime(2025, 2, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    await limits.admit(caller, None, 1.0, 1)


async def test_team_budget_applies_with_the_tenant_budget(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(
        tenant,
        budgets={"daily_usd": 10.0},
        teams={"growth": {"budgets": {"daily_usd": 1.0}}, "search": {}},
    )
    await limits.settle(await limits.admit(caller, "growth", 0.9, 1), 0.9, 1)
    error = await refused(limits, caller, "growth", 0.2, 1)
    assert f"team 'growth' of tenant '{tenant}'" in error.message
    # The team's spend counts for the tenant too; other teams and no team only see the tenant budget.
    assert spent_micro(limits, caller, None, clock()) == 900_000
    for team in (None, "search", "not-configured"):
        await limits.settle(await limits.admit(caller, team, 0.2, 1), 0.2, 1)
    assert spent_micro(limits, caller, None, clock()) == 1_500_000
    assert spent_micro(limits, caller, "growth", clock(), index=1) == 900_000


async def test_concurrent_admissions_never_overspend_when_estimates_hold(
    limits: BaseLimits, tenant: str, clock: FakeClock
) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})

    async def one() -> bool:
        try:
            admission = await limits.admit(caller, None, 0.01, 10)
        except LimitExceeded:
            return False
        await asyncio.sleep(random.uniform(0, 0.005))
        await limits.settle(admission, 0.01, 10)
        return True

    results = await asyncio.gather(*(one() for _ in range(200)))
    assert sum(results) == 100
    assert spent_micro(limits, caller, None, clock()) == 1_000_000


async def test_overspend_is_bounded_by_requests_in_flight(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    """Actual cost above the estimate can overspend, but only by what was in flight at once."""
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    in_flight = peak = admitted = 0
    estimate, actual = 0.01, 0.015

    async def worker() -> None:
        nonlocal in_flight, peak, admitted
        while True:
            try:
                admission = await limits.admit(caller, None, estimate, 10)
            except LimitExceeded:
                return
            admitted += 1
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(random.uniform(0, 0.003))
            in_flight -= 1
            await limits.settle(admission, actual, 10)

    await asyncio.gather(*(worker() for _ in range(20)))
    spent = spent_micro(limits, caller, None, clock())
    assert spent == admitted * 15_000
    assert spent - 1_000_000 <= peak * 5_000
    assert admitted * 10_000 <= 1_000_000  # every admission fitted its estimate when it was made


async def test_unsettled_reservations_expire(
    make_limits: Callable[..., BaseLimits], tenant: str, clock: FakeClock
) -> None:
    limits = make_limits(reservation_ttl_s=60)
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    await limits.admit(caller, None, 0.8, 1)  # the replica "crashes": never settled
    await refused(limits, caller, None, 0.5, 1)
    clock.advance(59)
    await refused(limits, caller, None, 0.5, 1)
    clock.advance(1)
    late = await limits.admit(caller, None, 0.5, 1)
    await limits.settle(late, 0.5, 1)
    assert spent_micro(limits, caller, None, clock()) == 500_000


async def test_settling_an_expired_reservation_still_charges_it_once(
    make_limits: Callable[..., BaseLimits], tenant: str, clock: FakeClock
) -> None:
    limits = make_limits(reservation_ttl_s=60)
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    slow = await limits.admit(caller, None, 0.4, 1)
    clock.advance(120)
    other = await limits.admit(caller, None, 0.2, 1)  # purges the expired hold
    await limits.settle(slow, 0.4, 1)
    await limits.settle(other, 0.2, 1)
    assert spent_micro(limits, caller, None, clock()) == 600_000
    await limits.settle(await limits.admit(caller, None, 0.4, 1), 0.4, 1)  # holds were not double-released
    await refused(limits, caller, None, 0.01, 1)


async def test_soft_threshold_logs_once_per_budget_per_period(
    limits: BaseLimits, tenant: str, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 1.0, "monthly_usd": 100.0, "soft_ratio": 0.8})
    caplog.set_level(logging.WARNING, logger="llm_gateway.limits")
    for cost in (0.5, 0.2, 0.15, 0.1):  # crosses $0.80 at the third request
        await limits.settle(await limits.admit(caller, None, cost, 1), cost, 1)
    lines = [r.getMessage() for r in caplog.records if "soft threshold" in r.getMessage()]
    assert lines == [
        f"Tenant '{tenant}' has spent $0.85 of its daily budget of $1.00 for 2025-01-15, past the 80% soft threshold"
    ]
    assert limits.soft_threshold_crossings == 1

    clock.advance(86_400)  # the next day: the daily budget may warn again
    await limits.settle(await limits.admit(caller, None, 0.9, 1), 0.9, 1)
    assert limits.soft_threshold_crossings == 2
    assert "for 2025-01-16" in caplog.records[-1].getMessage()


async def test_anonymous_and_unlimited_callers_are_never_limited(limits: BaseLimits, tenant: str) -> None:
    for caller in (ANONYMOUS, make_caller(tenant)):
        for _ in range(3):
            admission = await limits.admit(caller, "any-team", 1_000_000.0, 10**9)
            assert isinstance(admission, Admission) and admission.plan is None
            assert admission.headers() == {}
            await limits.settle(admission, 1_000_000.0, 10**9)


async def test_refusals_name_the_budget_holder_and_never_a_key(limits: BaseLimits, tenant: str) -> None:
    caller = make_caller(tenant, budgets={"daily_usd": 0.0})
    error = await refused(limits, caller, None, 0.01, 1)
    assert error.code == "budget_exceeded" and f"tenant '{tenant}'" in error.message
    for key in caller.config.keys:  # type: ignore[union-attr]
        assert key.sha256 not in error.message


async def test_soft_threshold_logs_once_across_replicas(redis_url: str, tenant: str, clock: FakeClock) -> None:
    """The flag lives in Redis: two replicas that both push spend past the threshold log it once in all."""
    replicas = [RedisLimits(redis_url, clock=clock), RedisLimits(redis_url, clock=clock)]
    caller = make_caller(tenant, budgets={"daily_usd": 1.0, "soft_ratio": 0.5})
    try:
        for round_ in range(4):
            replica = replicas[round_ % 2]
            await replica.settle(await replica.admit(caller, None, 0.2, 1), 0.2, 1)
        assert [replica.soft_threshold_crossings for replica in replicas] == [1, 0]  # the 3rd call: $0.60
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_settle_finishes_when_its_caller_is_cancelled(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    """A client that disconnects while its request settles must not leave the spend uncharged."""
    caller = make_caller(tenant, budgets={"daily_usd": 1.0})
    admission = await limits.admit(caller, None, 0.1, 1)
    settling = asyncio.create_task(limits.settle(admission, 0.3, 1))
    await asyncio.sleep(0)  # settle has begun
    settling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await settling
    for _ in range(200):
        if spent_micro(limits, caller, None, clock()) == 300_000:
            break
        await asyncio.sleep(0.01)
    assert spent_micro(limits, caller, None, clock()) == 300_000
