"""What the request path sees of limits: `Limits.admit` before a call, `settle` after, and the two results.

An `Admission` is the receipt for what was reserved (budget micro-dollars, rate-limit tokens); settling
it swaps the estimate for the actual. `LimitExceeded` is the refusal, shaped so the edge can answer
with OpenAI's status, code and `x-ratelimit-*` headers without knowing which store decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from gateway.tenancy import Caller

if TYPE_CHECKING:
    from gateway.limits.plan import Plan

RateKind = Literal["requests", "tokens"]


@dataclass(frozen=True, slots=True)
class RateState:
    """One rate limit as seen by one admission: how much of it is left, and when more frees up."""

    kind: RateKind
    limit: int
    remaining: int
    reset_s: float  # until the oldest use in the window leaves it (capacity next grows)


@dataclass(eq=False, slots=True)
class Admission:
    """What one admitted request holds until it is settled."""

    caller: Caller
    team: str | None
    reserved_micro_usd: int  # held on every budget that applies
    estimated_tokens: int  # charged to every tokens-per-minute limit that applies
    admission_id: str = ""
    admitted_ms: int = 0
    plan: Plan | None = None  # None: nothing applies (anonymous or unlimited caller)
    rates: tuple[RateState, ...] = ()
    degraded: bool = False  # admitted without the store (it was unreachable and the tenant fails open)
    settled: bool = field(default=False)

    @property
    def reserved_usd(self) -> float:
        return self.reserved_micro_usd / 1_000_000

    def headers(self) -> dict[str, str]:
        return rate_headers(self.rates)


class LimitExceeded(Exception):
    """A refusal: 429 `budget_exceeded` / `rate_limit_exceeded`, or 503 `limits_unavailable`."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        retry_after_s: float,
        rates: tuple[RateState, ...] = (),
        failed_rate: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self._rates = rates
        self._failed_rate = failed_rate

    def headers(self) -> dict[str, str]:
        return rate_headers(self._rates, prefer=self._failed_rate)


class Limits(Protocol):
    """Budgets and rate limits, shared by every replica (Redis) or held in this process (memory)."""

    soft_threshold_crossings: int  # budgets that passed their soft ratio, one per budget per period
    redis_failures: int  # admissions and settlements that could not reach the store

    async def admit(
        self, caller: Caller, team: str | None, estimated_cost_usd: float, estimated_tokens: int
    ) -> Admission:
        """Reserve the estimate on every budget and rate limit that applies, or raise `LimitExceeded`."""
        ...

    async def settle(self, admission: Admission, actual_cost_usd: float, actual_tokens: int) -> None:
        """Release the reservation and charge the actual; a second call for the same admission does nothing."""
        ...

    async def aclose(self) -> None: ...


def rate_headers(rates: tuple[RateState, ...], prefer: int | None = None) -> dict[str, str]:
    """OpenAI's `x-ratelimit-*` headers, for the tightest configured limit of each kind (or the one that
    refused the request)."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        candidates = [state for state in rates if state.kind == kind]
        if not candidates:
            continue
        chosen = min(candidates, key=lambda state: (state.remaining, state.limit))
        if prefer is not None and rates[prefer].kind == kind:
            chosen = rates[prefer]
        headers[f"x-ratelimit-limit-{kind}"] = str(chosen.limit)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, chosen.remaining))
        headers[f"x-ratelimit-reset-{kind}"] = format_duration(chosen.reset_s)
    return headers


def format_duration(seconds: float) -> str:
    """Go's duration style, as OpenAI sends it: `20ms`, `1s`, `1.5s`, `6m0s`, `1h2m3s`."""
    millis = max(0, round(seconds * 1000))
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
