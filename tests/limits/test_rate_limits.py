"""Requests and tokens per minute, on both stores: exact sliding windows on a hand-moved clock, tenant
and key limits together, all-or-nothing admission, and the `x-ratelimit-*` headers."""

from __future__ import annotations

import asyncio

import pytest

from gateway.limits import LimitExceeded
from gateway.limits.api import format_duration
from gateway.limits.base import BaseLimits
from tests.limits.conftest import FakeClock, as_key, make_caller, refused


async def test_requests_per_minute_slide(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, rate_limits={"rpm": 5})
    for _ in range(5):  # at t+0 .. t+4
        await limits.admit(caller, None, 0, 1)
        clock.advance(1)
    clock.advance(5)  # t+10
    error = await refused(limits, caller, None, 0, 1)
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.retry_after_s == pytest.approx(50.0)  # the use at t+0 leaves the window at t+60
    assert f"5 requests per minute reached for tenant '{tenant}'" in error.message
    assert error.headers()["x-ratelimit-remaining-requests"] == "0"
    clock.advance(49.999)
    await refused(limits, caller, None, 0, 1)
    clock.advance(0.001)  # t+60
    await limits.admit(caller, None, 0, 1)
    error = await refused(limits, caller, None, 0, 1)
    assert error.retry_after_s == pytest.approx(1.0)  # next: the use at t+1
    clock.advance(60)  # a whole window later everything has left it
    for _ in range(5):
        await limits.admit(caller, None, 0, 1)


async def test_request_headers(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, rate_limits={"rpm": 5})
    first = await limits.admit(caller, None, 0, 1)
    assert first.headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "4",
        "x-ratelimit-reset-requests": "1m0s",
    }
    clock.advance(2.5)
    third = None
    for _ in range(2):
        third = await limits.admit(caller, None, 0, 1)
    assert third is not None
    assert third.headers()["x-ratelimit-remaining-requests"] == "2"
    assert third.headers()["x-ratelimit-reset-requests"] == "57.5s"  # until the first use leaves


async def test_tokens_per_minute_with_settle_corrections(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, rate_limits={"tpm": 1000})
    first = await limits.admit(caller, None, 0, 600)
    assert first.headers() == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    clock.advance(10)
    error = await refused(limits, caller, None, 0, 500)
    assert error.retry_after_s == pytest.approx(50.0)
    assert "1000 tokens per minute" in error.message and "needs about 500" in error.message
    assert error.headers()["x-ratelimit-remaining-tokens"] == "400"
    await limits.settle(first, 0, 300)  # it used 300, not 600: 300 tokens come back at once
    second = await limits.admit(caller, None, 0, 500)
    assert second.headers()["x-ratelimit-remaining-tokens"] == "200"
    assert second.headers()["x-ratelimit-reset-tokens"] == "50s"
    await limits.settle(second, 0, 900)  # and one that used more than it said
    await refused(limits, caller, None, 0, 1)  # 300 + 900 > 1000
    clock.advance(50)  # the first bucket (300) leaves
    error = await refused(limits, caller, None, 0, 200)  # 900 + 200 > 1000
    assert error.retry_after_s == pytest.approx(10.0)
    await limits.admit(caller, None, 0, 100)


async def test_a_request_over_the_token_limit_can_never_fit(limits: BaseLimits, tenant: str) -> None:
    caller = make_caller(tenant, rate_limits={"tpm": 1000})
    error = await refused(limits, caller, None, 0, 1001)
    assert "more than the limit of 1000 tokens per minute" in error.message
    assert error.retry_after_s == pytest.approx(60.0)


async def test_tokens_slide_by_one_second_buckets(limits: BaseLimits, tenant: str, clock: FakeClock) -> None:
    caller = make_caller(tenant, rate_limits={"tpm": 1000})
    await limits.admit(caller, None, 0, 400)  # bucket t
    clock.advance(30.5)
    await limits.admit(caller, None, 0, 400)  # bucket t+30
    clock.advance(0.5)
    error = await refused(limits, caller, None, 0, 400)
    assert error.retry_after_s == pytest.approx(29.0)  # bucket t leaves at t+60
    clock.advance(29)
    await limits.admit(caller, None, 0, 400)


async def test_key_and_tenant_limits_both_apply(limits: BaseLimits, tenant: str) -> None:
    caller = make_caller(
        tenant,
        key_name="ci",
        rate_limits={"rpm": 10},
        keys=[{"name": "ci", "rate_limits": {"rpm": 3, "tpm": 100}}, {"name": "web"}],
    )
    for _ in range(3):
        await limits.admit(caller, None, 0, 10)
    error = await refused(limits, caller, None, 0, 10)
    assert f"key 'ci' of tenant '{tenant}'" in error.message
    assert error.headers()["x-ratelimit-limit-requests"] == "3"  # the limit that refused, not the tenant's
    web = await limits.admit(as_key(caller, "web"), None, 0, 10)
    # The refused call took nothing from the tenant: 3 (ci) + 1 (web) of 10.
    assert web.headers() == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "6",
        "x-ratelimit-reset-requests": "1m0s",
    }


async def test_the_tightest_limit_sets_the_headers(limits: BaseLimits, tenant: str) -> None:
    caller = make_caller(
        tenant, key_name="ci", rate_limits={"rpm": 10, "tpm": 50}, keys=[{"name": "ci", "rate_limits": {"rpm": 3}}]
    )
    admission = await limits.admit(caller, None, 0, 20)
    headers = admission.headers()
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == ("3", "2")
    assert (headers["x-ratelimit-limit-tokens"], headers["x-ratelimit-remaining-tokens"]) == ("50", "30")


async def test_a_refusal_records_nothing_anywhere(limits: BaseLimits, tenant: str) -> None:
    """Budgets are checked with the rate limits in one step: a budget refusal spends no request slot,
    and a rate refusal holds no budget."""
    caller = make_caller(tenant, budgets={"daily_usd": 1.0}, rate_limits={"rpm": 2, "tpm": 100})
    error = await refused(limits, caller, None, 5.0, 10)
    assert error.code == "budget_exceeded"
    assert error.headers()["x-ratelimit-remaining-requests"] == "2"
    error = await refused(limits, caller, None, 0.5, 1000)
    assert error.code == "rate_limit_exceeded"
    first = await limits.admit(caller, None, 1.0, 10)  # the whole budget: nothing was held by the refusals
    assert first.headers()["x-ratelimit-remaining-requests"] == "1"
    assert first.headers()["x-ratelimit-remaining-tokens"] == "90"


async def test_concurrent_requests_admit_exactly_the_limit(limits: BaseLimits, tenant: str) -> None:
    caller = make_caller(tenant, rate_limits={"rpm": 50, "tpm": 100_000})

    async def one() -> bool:
        try:
            await limits.admit(caller, None, 0, 10)
        except LimitExceeded:
            return False
        return True

    assert sum(await asyncio.gather(*(one() for _ in range(120)))) == 50


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.0004, "0s"),
        (0.017, "17ms"),
        (0.999, "999ms"),
        (1, "1s"),
        (1.5, "1.5s"),
        (8.642, "8.642s"),
        (59.9999, "1m0s"),
        (60, "1m0s"),
        (360, "6m0s"),
        (754.25, "12m34.25s"),
        (3600, "1h0m0s"),
        (86_399, "23h59m59s"),
        (-3, "0s"),
    ],
)
def test_durations_read_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
