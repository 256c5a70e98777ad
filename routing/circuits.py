"""Circuit breakers, one per deployment: stop sending traffic to a deployment that keeps failing.

A breaker is *closed* (calls flow) until the deployment fails `consecutive_failures` times in a row, or
`error_rate` of at least `min_calls` calls in the last `window_s` fail. It then *opens*: the router skips
the deployment, so requests go elsewhere at once instead of each paying a timeout. After `cooldown_s`
it is *half-open*: up to `half_open_probes` real calls go through; a success closes it, a failure opens
it again for twice as long (up to `max_cooldown_s`), so a dead provider is probed ever more rarely.

A rate limit is not a failure: the deployment is healthy but full. It *cools down* for the provider's
`retry-after` (capped) and then takes traffic again, with its failure counts untouched.

State lives in this process and is kept across config reloads (keyed by `provider/model`). It is read
by the router on every request, so `blocked` is O(1) and never allocates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from providers.errors import ErrorKind
from routing.config import CircuitBreakerPolicy
from routing.windows import SlidingPair

#: Failures that say the deployment is unwell. The request's own faults (invalid_request,
#: context_window, content_filter) say it is alive and answering.
HEALTH_FAILURES = frozenset(
    {ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL, ErrorKind.TIMEOUT, ErrorKind.AUTH, ErrorKind.NOT_FOUND}
)


def _window(span_s: float) -> SlidingPair:
    """Calls (first) and failures (second) in one-second buckets."""
    return SlidingPair(span_s, int(span_s))


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class Ticket:
    """One admitted call. A probe holds one of the half-open slots until it is settled or released; a
    slot belongs to one half-open spell (`generation`), so a late settlement never frees a newer one."""

    probe: bool
    generation: int
    holding: bool


class Breaker:
    """One deployment's breaker. Every admitted call's ticket must be settled: `succeeded`, `failed`
    or `release` (the call was abandoned and says nothing); settling twice is harmless for the slots."""

    def __init__(self, policy: CircuitBreakerPolicy) -> None:
        self.policy = policy
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.window = _window(policy.window_s)
        self.cooldown_s = policy.cooldown_s
        self.retry_at = 0.0  # open: when probing may start
        self.rate_limited_until = 0.0
        self.probes_in_flight = 0
        self.generation = 0  # bumped on every open and close
        self.times_opened = 0
        self.open_reason = ""  # why it opened, for the router's explanation and the admin view

    def blocked(self, now: float) -> str | None:
        """Why no call may start now, or None."""
        if not self.policy.enabled:
            return None
        if now < self.rate_limited_until:
            return f"rate limited by the provider: resting for {self.rate_limited_until - now:.1f} s more"
        if self.state is CircuitState.OPEN:
            if now < self.retry_at:
                return f"its circuit breaker is open ({self.open_reason}); probing in {self.retry_at - now:.1f} s"
            return None  # cooldown over: the next call is a probe
        if self.state is CircuitState.HALF_OPEN and self.probes_in_flight >= self.policy.half_open_probes:
            return "its circuit breaker is half-open and its probe calls are in flight"
        return None

    def admit(self, now: float) -> Ticket | None:
        """Claim the right to call; None when blocked. While half-open, the ticket holds a probe slot."""
        if self.blocked(now) is not None:
            return None
        if self.state is CircuitState.OPEN:
            self.state = CircuitState.HALF_OPEN
        if self.state is CircuitState.HALF_OPEN:
            self.probes_in_flight += 1
            return Ticket(probe=True, generation=self.generation, holding=True)
        return Ticket(probe=False, generation=self.generation, holding=False)

    def answering(self, ticket: Ticket) -> None:
        """A probe's stream sent its first chunk: the deployment answers again, so the breaker closes; the
        stream's outcome is counted when it ends (`succeeded` or `failed`)."""
        if self._holds(ticket):
            self._close()
        ticket.holding = False

    def succeeded(self, now: float, ticket: Ticket | None = None) -> None:
        self.window.add(now, first=1)
        self.consecutive_failures = 0
        if ticket is not None and self._holds(ticket):
            self._close()
        if ticket is not None:
            ticket.holding = False

    def failed(
        self, now: float, kind: ErrorKind, retry_after_s: float | None = None, ticket: Ticket | None = None
    ) -> None:
        if kind is ErrorKind.RATE_LIMITED:
            # Healthy but full: rest for as long as it asked (without a retry-after, backoff will do).
            if retry_after_s:
                rest = min(retry_after_s, self.policy.max_rate_limit_cooldown_s)
                self.rate_limited_until = max(self.rate_limited_until, now + rest)
            self.release(ticket)
            return
        if kind not in HEALTH_FAILURES:
            self.succeeded(now, ticket)  # it answered: the request, not the deployment, was at fault
            return
        self.window.add(now, first=1, second=1)
        self.consecutive_failures += 1
        if ticket is not None and self._holds(ticket):
            ticket.holding = False
            self.cooldown_s = min(self.cooldown_s * 2, self.policy.max_cooldown_s)
            self._open(now, f"a probe call failed: {kind.value}")
            return
        if ticket is not None:
            ticket.holding = False
        if self.state is CircuitState.CLOSED:
            reason = self._trip_reason(now, kind)
            if reason is not None:
                self._open(now, reason)

    def release(self, ticket: Ticket | None) -> None:
        """The call ended without a verdict (abandoned): free its probe slot, if it still holds one."""
        if ticket is not None and self._holds(ticket):
            self.probes_in_flight = max(self.probes_in_flight - 1, 0)
        if ticket is not None:
            ticket.holding = False

    def _holds(self, ticket: Ticket) -> bool:
        return ticket.holding and ticket.generation == self.generation and self.state is CircuitState.HALF_OPEN

    def _close(self) -> None:
        self.state = CircuitState.CLOSED
        self.consecutive_failures = 0
        self.generation += 1
        self.probes_in_flight = 0
        self.cooldown_s = self.policy.cooldown_s
        self.window.clear()  # the old failures are history: judge the recovered deployment afresh

    def _trip_reason(self, now: float, kind: ErrorKind) -> str | None:
        if self.consecutive_failures >= self.policy.consecutive_failures:
            return f"{self.consecutive_failures} failures in a row, the last {kind.value}"
        calls, failures = self.window.totals(now)
        if calls >= self.policy.min_calls and failures / calls >= self.policy.error_rate:
            return f"{failures} of {calls} calls in {self.policy.window_s:g} s failed"
        return None

    def _open(self, now: float, reason: str) -> None:
        self.state = CircuitState.OPEN
        self.generation += 1
        self.probes_in_flight = 0
        self.open_reason = reason
        self.retry_at = now + self.cooldown_s
        self.times_opened += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        calls, failures = self.window.totals(now)
        state = self.state
        if state is CircuitState.OPEN and now >= self.retry_at:
            state = CircuitState.HALF_OPEN  # what the next call will find
        return {
            "state": state.value,
            "blocked": self.blocked(now),
            "open_reason": self.open_reason or None,
            "consecutive_failures": self.consecutive_failures,
            "window_calls": calls,
            "window_failures": failures,
            "times_opened": self.times_opened,
            "cooldown_s": self.cooldown_s,
            "probing_in_s": max(self.retry_at - now, 0.0) if self.state is CircuitState.OPEN else None,
            "rate_limited_for_s": max(self.rate_limited_until - now, 0.0) or None,
        }


class CircuitBreakers:
    """The breakers of every deployment this process has called; the router's `CircuitView`."""

    def __init__(self, policy: CircuitBreakerPolicy | None = None) -> None:
        self.policy = policy or CircuitBreakerPolicy()
        self._by_key: dict[str, Breaker] = {}

    def get(self, key: str) -> Breaker:
        breaker = self._by_key.get(key)
        if breaker is None:
            breaker = self._by_key[key] = Breaker(self.policy)
        return breaker

    def blocked(self, key: str, now: float | None = None) -> str | None:
        breaker = self._by_key.get(key)
        if breaker is None:
            return None
        return breaker.blocked(time.monotonic() if now is None else now)

    def reconfigure(self, policy: CircuitBreakerPolicy, keys: set[str]) -> None:
        """After a reload: new thresholds apply from now on, state is kept, removed deployments are forgotten."""
        self.policy = policy
        for key in list(self._by_key):
            if key not in keys:
                del self._by_key[key]
                continue
            breaker = self._by_key[key]
            if policy.window_s != breaker.policy.window_s:
                breaker.window = _window(policy.window_s)  # counts in the old window's buckets do not carry
            breaker.cooldown_s = min(max(breaker.cooldown_s, policy.cooldown_s), policy.max_cooldown_s)
            breaker.policy = policy

    def snapshot(self, key: str, now: float) -> dict[str, Any]:
        return self.get(key).snapshot(now)
