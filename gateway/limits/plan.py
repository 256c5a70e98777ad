"""Which budgets and rate limits apply to one request, under which store keys, and how a refusal reads.

Both stores (Redis and memory) take the same plan and answer with the same flat list of numbers, so
everything about naming, periods, units and messages lives here once. Amounts are integer
micro-dollars: sums of floats drift, and Redis counts integers atomically.

Every key of a tenant carries `{tenant}` as its hash tag, so one script call touching the tenant's, its
team's and its key's counters stays in one Redis Cluster slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import quote

from gateway.limits.api import LimitExceeded, RateKind, RateState, format_duration
from gateway.tenancy import Budgets, Caller, RateLimits

WINDOW_MS = 60_000
DAY_TTL_S = 2 * 86_400
MONTH_TTL_S = 35 * 86_400
KEY_PREFIX = "llmgw:lim"


def to_micro(usd: float) -> int:
    return max(0, round(usd * 1_000_000))


def usd_text(micro: int) -> str:
    if micro % 10_000 == 0:
        return f"${micro / 1_000_000:,.2f}"
    return f"${micro / 1_000_000:,.6f}".rstrip("0")


@dataclass(frozen=True, slots=True)
class BudgetCheck:
    key: str  # a hash: spent, reserved, one field per reservation; `key + ":res"` orders reservations by expiry
    who: str  # "tenant 'acme'", "team 'growth' of tenant 'acme'"
    period: Literal["daily", "monthly"]
    period_label: str  # "2025-01-31", "2025-01"
    limit: int  # micro-dollars
    soft: int  # micro-dollars; spend at or past this logs one warning per period
    soft_ratio: float
    ttl_s: int
    resets_at: float  # epoch seconds of the next UTC day or month

    @property
    def reservations_key(self) -> str:
        return self.key + ":res"


@dataclass(frozen=True, slots=True)
class RateCheck:
    key: str  # requests: a sorted set of admissions by time; tokens: a hash of one-second buckets
    who: str
    kind: RateKind
    limit: int


@dataclass(frozen=True, slots=True)
class Plan:
    tenant: str
    budgets: tuple[BudgetCheck, ...]
    rates: tuple[RateCheck, ...]
    fail_open: bool

    @property
    def token_rates(self) -> tuple[RateCheck, ...]:
        return tuple(rate for rate in self.rates if rate.kind == "tokens")

    def rate_states(self, values: list[int]) -> tuple[RateState, ...]:
        """Store answer (per budget: spent, reserved; per rate: used, reset ms) → header states."""
        offset = 2 * len(self.budgets)
        return tuple(
            RateState(
                kind=rate.kind,
                limit=rate.limit,
                remaining=max(0, rate.limit - values[offset + 2 * i]),
                reset_s=max(0, values[offset + 2 * i + 1]) / 1000,
            )
            for i, rate in enumerate(self.rates)
        )

    def refusal(
        self, failed: int, retry_ms: int, values: list[int], cost: int, tokens: int, now: float
    ) -> LimitExceeded:
        """The 429 for check number `failed` (budgets first, then rates, 0-based)."""
        rates = self.rate_states(values)
        if failed < len(self.budgets):
            budget = self.budgets[failed]
            spent, reserved = values[2 * failed], values[2 * failed + 1]
            wait = max(0.0, budget.resets_at - now)
            held = f", {usd_text(reserved)} held by requests in flight" if reserved else ""
            message = (
                f"The {budget.period} budget of {usd_text(budget.limit)} for {budget.who} cannot cover this request "
                f"({usd_text(spent)} spent{held}; this request needs up to {usd_text(cost)}). "
                f"It resets in {format_duration(wait)}."
            )
            return LimitExceeded(status=429, code="budget_exceeded", message=message, retry_after_s=wait, rates=rates)
        index = failed - len(self.budgets)
        rate = self.rates[index]
        wait = max(0, retry_ms) / 1000
        if rate.kind == "tokens" and tokens > rate.limit:
            message = (
                f"This request needs about {tokens} tokens, more than the limit of {rate.limit} tokens per "
                f"minute for {rate.who}; it cannot be admitted."
            )
        else:
            needs = f" (this request needs about {tokens})" if rate.kind == "tokens" else ""
            message = (
                f"Rate limit of {rate.limit} {rate.kind} per minute reached for {rate.who}{needs}. "
                f"Retry in {format_duration(wait)}."
            )
        return LimitExceeded(
            status=429,
            code="rate_limit_exceeded",
            message=message,
            retry_after_s=wait,
            rates=rates,
            failed_rate=index,
        )

    def unavailable(self) -> LimitExceeded:
        message = (
            f"Limits for tenant '{self.tenant}' cannot be checked right now (the limits store is unreachable), "
            "and this tenant is configured to refuse requests then (on_redis_failure: closed)."
        )
        return LimitExceeded(status=503, code="limits_unavailable", message=message, retry_after_s=1.0)


def plan_for(caller: Caller, team: str | None, now: float) -> Plan | None:
    """The checks for `caller` (and `team`, if the tenant configures it) at `now`; None if none apply."""
    config = caller.config
    if config is None or caller.tenant is None:
        return None
    tenant = caller.tenant
    prefix = f"{KEY_PREFIX}:{{{_part(tenant)}}}"
    moment = datetime.fromtimestamp(now, UTC)
    budgets: list[BudgetCheck] = []
    _add_budgets(budgets, config.budgets, f"{prefix}:tenant", f"tenant '{tenant}'", moment)
    if team is not None and team in config.teams:
        team_who = f"team '{team}' of tenant '{tenant}'"
        _add_budgets(budgets, config.teams[team].budgets, f"{prefix}:team:{_part(team)}", team_who, moment)
    rates: list[RateCheck] = []
    _add_rates(rates, config.rate_limits, f"{prefix}:tenant", f"tenant '{tenant}'")
    key = next((key for key in config.keys if key.name == caller.key_name), None)
    if key is not None:
        key_who = f"key '{key.name}' of tenant '{tenant}'"
        _add_rates(rates, key.rate_limits, f"{prefix}:key:{_part(key.name)}", key_who)
    if not budgets and not rates:
        return None
    return Plan(tenant=tenant, budgets=tuple(budgets), rates=tuple(rates), fail_open=config.on_redis_failure == "open")


def _part(name: str) -> str:
    """A name as one key segment: no `:` to blur segments, no braces to move the hash tag."""
    return quote(name, safe="")


def _add_budgets(out: list[BudgetCheck], budgets: Budgets | None, base: str, who: str, moment: datetime) -> None:
    if budgets is None:
        return
    if budgets.daily_usd is not None:
        day = moment.date()
        next_day = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
        out.append(
            _budget(
                f"{base}:d:{day:%Y%m%d}",
                who,
                "daily",
                f"{day:%Y-%m-%d}",
                budgets.daily_usd,
                budgets.soft_ratio,
                DAY_TTL_S,
                next_day,
            )
        )
    if budgets.monthly_usd is not None:
        year, month = moment.year, moment.month
        next_month = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        out.append(
            _budget(
                f"{base}:m:{year:04d}{month:02d}",
                who,
                "monthly",
                f"{year:04d}-{month:02d}",
                budgets.monthly_usd,
                budgets.soft_ratio,
                MONTH_TTL_S,
                next_month,
            )
        )


def _budget(
    key: str,
    who: str,
    period: Literal["daily", "monthly"],
    label: str,
    usd: float,
    ratio: float,
    ttl: int,
    resets: datetime,
) -> BudgetCheck:
    limit = to_micro(usd)
    return BudgetCheck(
        key=key,
        who=who,
        period=period,
        period_label=label,
        limit=limit,
        soft=round(limit * ratio),
        soft_ratio=ratio,
        ttl_s=ttl,
        resets_at=resets.timestamp(),
    )


def _add_rates(out: list[RateCheck], limits: RateLimits | None, base: str, who: str) -> None:
    if limits is None:
        return
    if limits.rpm is not None:
        out.append(RateCheck(key=f"{base}:rpm", who=who, kind="requests", limit=limits.rpm))
    if limits.tpm is not None:
        out.append(RateCheck(key=f"{base}:tpm", who=who, kind="tokens", limit=limits.tpm))
