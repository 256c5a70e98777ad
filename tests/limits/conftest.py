"""Fixtures for the limits suite: a clock tests move by hand, tenants built in one line, and `limits`,
run once on the in-memory store and once on a private Redis, since both must behave the same."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from gateway.limits import LimitExceeded
from gateway.limits.base import BaseLimits
from gateway.limits.memory import MemoryLimits
from gateway.limits.plan import plan_for
from gateway.limits.redis_limits import RedisLimits
from gateway.tenancy import Caller, TenantConfig

#: Mid-month, mid-day, on a whole second: windows and periods are easy to reason about from here.
START = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC).timestamp()


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_caller(
    tenant: str,
    *,
    key_name: str = "default",
    budgets: dict[str, Any] | None = None,
    teams: dict[str, Any] | None = None,
    rate_limits: dict[str, Any] | None = None,
    keys: list[dict[str, Any]] | None = None,
    on_redis_failure: str = "open",
) -> Caller:
    """A caller of a fresh tenant; `keys` adds named keys (with their own rate limits) to the default one."""
    key_list = [{"sha256": uuid.uuid4().hex * 2, "name": "default"}, *(keys or [])]
    for entry in key_list:
        entry.setdefault("sha256", uuid.uuid4().hex * 2)
    config = TenantConfig.model_validate(
        {
            "keys": key_list,
            "budgets": budgets,
            "teams": teams or {},
            "rate_limits": rate_limits,
            "on_redis_failure": on_redis_failure,
        }
    )
    return Caller(tenant=tenant, key_name=key_name, config=config)


async def refused(limits: BaseLimits, *args: object) -> LimitExceeded:
    """The refusal `limits.admit(*args)` raises (the test fails if it admits)."""
    with pytest.raises(LimitExceeded) as caught:
        await limits.admit(*args)  # type: ignore[arg-type]
    return caught.value


def as_key(caller: Caller, key_name: str) -> Caller:
    return Caller(tenant=caller.tenant, key_name=key_name, config=caller.config)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses, so tests sharing one Redis never see each other's counters."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["memory", "redis"])
async def make_limits(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[Callable[..., BaseLimits]]:
    """Build limits of this run's kind (memory or Redis) on the test clock; all are closed at the end."""
    made: list[BaseLimits] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(**kwargs: Any) -> BaseLimits:
        kwargs.setdefault("clock", clock)
        if url is None:
            limits: BaseLimits = MemoryLimits(**kwargs)
        else:  # generous timeouts: these tests are about semantics, not a busy machine's latency
            limits = RedisLimits(url, socket_timeout_s=5.0, connect_timeout_s=5.0, **kwargs)
        made.append(limits)
        return limits

    yield make
    for limits in made:
        await limits.aclose()


@pytest.fixture
def limits(make_limits: Callable[..., BaseLimits]) -> BaseLimits:
    return make_limits()


def spent_micro(limits: BaseLimits, caller: Caller, team: str | None, now: float, index: int = 0) -> int:
    """What the store holds as spent on budget number `index` of this caller's plan at `now`."""
    plan = plan_for(caller, team, now)
    assert plan is not None
    key = plan.budgets[index].key
    if isinstance(limits, MemoryLimits):
        state = limits._budgets.get(key)
        return state.spent if state else 0
    assert isinstance(limits, RedisLimits)
    url = limits._redis.connection_pool.connection_kwargs
    with redis.Redis(host=url["host"], port=url["port"], db=url.get("db", 0)) as client:
        return int(client.hget(key, "spent") or 0)
