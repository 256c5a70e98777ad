"""The executor: turns the router's ranked candidates into one answer, surviving what providers do.

For each request it walks the plan. On one deployment it retries retryable failures (tenacity, full
jitter exponential backoff, or exactly the provider's `retry-after` when that is short enough), within
the deployment's retry budget. Then it moves to the next candidate, then to the alias's fallback chain
for the last error's kind (`context_window` → longer-context aliases, `content_filter` → a configured
alternative or nothing, others → the default chain). A request's own fault (`invalid_request`) fails
fast; a deployment that timed out is never tried again for the same request.

Every call passes its deployment's circuit breaker and feeds it, and feeds the live stats the router
ranks by. With hedging on, a second candidate starts when the first has not answered in time; the
first to answer wins and the other is cancelled (its connection closed, its stats abandoned).

The executor is generic over what "answer" means: `begin(deployment, options)` is a whole completion for
plain calls, and "the stream is open and its first chunk arrived" for streams (see `routing.resume`).
Nothing here knows HTTP, so the same code is driven by the gateway and by tests with fakes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from providers.base import CallOptions
from providers.errors import ErrorKind, ProviderError
from routing.circuits import CircuitBreakers, CircuitState, Ticket
from routing.config import Hedge, Resilience, RetryPolicy
from routing.context import RequestContext, RequestFacts
from routing.retry_budget import RetryBudgets
from routing.router import Deployment, NoDeploymentAvailable, Plan, Router
from routing.stats import CallRecord

T = TypeVar("T")

Begin = Callable[[Deployment, CallOptions], Awaitable[T]]
OptionsFor = Callable[[Deployment], CallOptions]
Discard = Callable[[T], Awaitable[None]]


@dataclass(slots=True)
class Attempt:
    """One call to one deployment, as the request's path records it."""

    deployment: str
    alias: str
    why: str  # first | retry | next | fallback:<kind> | hedge | continuation
    started: float
    outcome: str = "pending"  # ok | <error kind> | cancelled (lost a hedge, or the client left)

    def describe(self) -> str:
        return f"{self.deployment} ({self.why}): {self.outcome}"


@dataclass
class Journey:
    """One request's way through the deployments: its facts, its plan and every attempt made."""

    facts: RequestFacts
    context: RequestContext
    plan: Plan
    options_for: OptionsFor
    streaming: bool = False  # a stream's health verdict waits for its end, not its first chunk
    attempts: list[Attempt] = field(default_factory=list)
    fallback_reason: str | None = None  # why the first-ranked deployment did not serve
    timed_out: set[str] = field(default_factory=set)  # deployments not to ask again for this request
    start_error: ProviderError | None = None  # the alias could not serve at all: start at its fallbacks

    def headers(self) -> dict[str, str]:
        headers = {"x-gateway-attempts": str(len(self.attempts))}
        if self.fallback_reason is not None:
            headers["x-gateway-fallback-reason"] = self.fallback_reason
        return headers


@dataclass(slots=True)
class Served(Generic[T]):
    """What answered: the value, the deployment, its stats record (the caller ends it with the usage)."""

    value: T
    deployment: Deployment
    record: CallRecord
    attempt: Attempt
    ticket: Ticket  # its breaker admission: a stream settles it when it ends


class Exhausted(Exception):
    """Every permitted attempt failed; `error` is the one to show the client."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


class _Skipped(Exception):
    """The deployment refused the call before it started (breaker open, probe slots taken)."""


class Executor:
    def __init__(
        self,
        router: Router,
        resilience: Resilience,
        circuits: CircuitBreakers,
        budgets: RetryBudgets,
        rng: random.Random | None = None,
    ) -> None:
        self.router = router
        self.resilience = resilience
        self.circuits = circuits
        self.budgets = budgets
        self.rng = rng or random.Random()

    # --- planning ------------------------------------------------------------------------------

    def start(
        self, facts: RequestFacts, context: RequestContext, options_for: OptionsFor, *, streaming: bool = False
    ) -> Journey:
        """Plan the request. Raises the router's errors, except when the alias cannot serve for a reason
        its fallbacks address: every deployment resting (open breakers, rate limits), or too short a
        context window for this prompt with a `context_window` chain configured."""
        try:
            plan = self.router.plan(facts, context)
        except NoDeploymentAvailable as exc:
            journey = Journey(facts, context, exc.plan, options_for, streaming=streaming)
            if exc.resting:
                journey.start_error = self._resting_error(exc.plan)
                journey.fallback_reason = "circuit_open"
                return journey
            chain = self.router.models[exc.plan.alias].fallbacks.for_kind(ErrorKind.CONTEXT_WINDOW)
            if chain and any(r.too_long for r in exc.plan.rejected) and not exc.policy:
                journey.start_error = ProviderError(
                    ErrorKind.CONTEXT_WINDOW, str(exc), provider="gateway", param="messages"
                )
                journey.fallback_reason = ErrorKind.CONTEXT_WINDOW.value
                return journey
            raise
        return Journey(facts, context, plan, options_for, streaming=streaming)

    def _resting_error(self, plan: Plan) -> ProviderError:
        """What the client hears when every deployment is resting: come back when the first one wakes.
        Rate limits alone say "slow down" (429); an open breaker says "unavailable" (503)."""
        now = time.monotonic()
        resting = [self.circuits.get(r.deployment.key) for r in plan.rejected if r.resting]
        waits = [max(b.retry_at - now, b.rate_limited_until - now, 0.0) for b in resting]
        only_rate_limits = all(b.rate_limited_until > now and b.state is CircuitState.CLOSED for b in resting)
        return ProviderError(
            ErrorKind.RATE_LIMITED if only_rate_limits else ErrorKind.UNAVAILABLE,
            f"every deployment of '{plan.alias}' is resting: "
            + "; ".join(f"{r.deployment.key}: {r.reason}" for r in plan.rejected),
            provider="gateway",
            retry_after_s=min(waits) if waits else None,
        )

    # --- running -------------------------------------------------------------------------------

    async def run(
        self,
        journey: Journey,
        begin: Begin[T],
        *,
        discard: Discard[T] | None = None,
        candidates: Iterable[Deployment] | None = None,
        usable: Callable[[Deployment], bool] | None = None,
        why: str = "first",
        chain_kind: ErrorKind | None = None,
        fail_fast: bool = True,
    ) -> Served[T]:
        """The first successful `begin` along the plan (or `candidates`), then the fallback chain.

        Raises Exhausted with the error the client should see. `usable` narrows the deployments (a
        continuation needs prefill); `discard` releases a result that lost a hedge race. `chain_kind`
        fixes which fallback chain is used (else the last error's kind picks it); without `fail_fast`,
        a request error moves on instead of ending the request (a continuation's prefill refused).
        """
        ordered = journey.plan.deployments if candidates is None else list(candidates)
        queue: deque[tuple[Deployment, str]] = deque((d, why if i == 0 else "next") for i, d in enumerate(ordered))
        visited = {journey.plan.alias}
        last_error = journey.start_error
        fallbacks = self.router.models[journey.plan.alias].fallbacks
        if last_error is not None and last_error.kind in _OWN_CHAINS:
            chain_kind = chain_kind or last_error.kind
        while True:
            if not queue:
                kind = chain_kind or (last_error.kind if last_error else None)
                next_alias = self._next_fallback(fallbacks.for_kind(kind) if kind else [], visited)
                if next_alias is None:
                    raise Exhausted(last_error or self._nothing_left(journey))
                visited.add(next_alias)
                queue.extend(self._fallback_candidates(journey, next_alias, last_error))
                continue
            deployment, reason = queue.popleft()
            if _ruled_out(journey, deployment, usable):
                continue
            if len(journey.attempts) >= self._retry_policy(journey).max_attempts:
                raise Exhausted(last_error or self._nothing_left(journey))
            if journey.options_for(deployment).remaining_s() <= 0.001:
                # The request's own deadline passed: no deployment is to blame, and none is asked.
                raise Exhausted(last_error or _deadline_passed())
            try:
                return await self._on_deployment(journey, deployment, reason, begin, discard, queue, usable)
            except _Skipped:
                continue
            except ProviderError as error:
                last_error = error
                if journey.fallback_reason is None:
                    journey.fallback_reason = error.kind.value
                if error.kind is ErrorKind.INVALID_REQUEST and fail_fast:
                    raise Exhausted(error) from None  # another provider would say the same
                if error.kind in _OWN_CHAINS:
                    # Siblings serve the same model: go straight to the chain for this kind, and stay on
                    # it (a long-context alias failing otherwise must not fall back to short ones).
                    queue.clear()
                    chain_kind = chain_kind or error.kind

    def _next_fallback(self, chain: list[str], visited: set[str]) -> str | None:
        return next((alias for alias in chain if alias not in visited), None)

    def _fallback_candidates(
        self, journey: Journey, alias: str, last_error: ProviderError | None
    ) -> list[tuple[Deployment, str]]:
        kind = last_error.kind.value if last_error is not None else "unavailable"
        try:
            plan = self.router.plan(journey.facts, journey.context, alias=alias)
        except NoDeploymentAvailable:
            return []
        return [(d, f"fallback:{kind}") for d in plan.deployments]

    def _nothing_left(self, journey: Journey) -> ProviderError:
        return ProviderError(
            ErrorKind.UNAVAILABLE,
            f"no deployment of '{journey.plan.alias}' could take the request",
            provider="gateway",
        )

    def _retry_policy(self, journey: Journey) -> RetryPolicy:
        return self.router.models[journey.plan.alias].retry or self.resilience.retry

    # --- one deployment: retries -----------------------------------------------------------------

    async def _on_deployment(
        self,
        journey: Journey,
        deployment: Deployment,
        why: str,
        begin: Begin[T],
        discard: Discard[T] | None,
        queue: deque[tuple[Deployment, str]],
        usable: Callable[[Deployment], bool] | None,
    ) -> Served[T]:
        # The first call runs outside tenacity: most calls succeed, and they should not pay for the
        # retry machinery (about 15 µs a call). Its failure is then handed to tenacity as attempt 1.
        hedge = self.router.models[deployment.alias].hedge
        try:
            if hedge is None:
                return await self._call(journey, deployment, why, begin)
            return await self._hedged(journey, deployment, why, begin, discard, hedge, queue, usable)
        except ProviderError as error:
            if not _worth_retrying(error):
                raise
            first_failure = error
        policy = self._retry_policy(journey)
        key = deployment.key

        def wait(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            retry_after = getattr(error, "retry_after_s", None)
            if retry_after is not None:
                return retry_after * (1 + 0.1 * self.rng.random())  # a little spread, never sooner
            ceiling = min(policy.backoff_max_ms, policy.backoff_base_ms * 2 ** (state.attempt_number - 1))
            return self.rng.uniform(0, ceiling) / 1000.0  # full jitter

        def stop(state: RetryCallState) -> bool:
            error = state.outcome.exception() if state.outcome else None
            retry_after = getattr(error, "retry_after_s", None)
            now = time.monotonic()
            if state.attempt_number >= policy.attempts_per_deployment:
                return True
            if len(journey.attempts) >= policy.max_attempts:
                return True
            if retry_after is not None and retry_after > policy.max_retry_after_s:
                return True  # a long wait here: someone else can answer sooner
            options = journey.options_for(deployment)
            if options.remaining_s() <= state.upcoming_sleep:
                return True
            if self.circuits.get(key).blocked(now + state.upcoming_sleep) is not None:
                return True
            return not self.budgets.try_spend(key, now)

        retrying = AsyncRetrying(
            retry=retry_if_exception(_worth_retrying),
            wait=wait,
            stop=stop,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first_failure  # tenacity decides from it whether, and after how long, to retry
                return await self._call(journey, deployment, "retry", begin)
        raise AssertionError("unreachable: tenacity either returns or re-raises")

    # --- one call --------------------------------------------------------------------------------

    async def _call(self, journey: Journey, deployment: Deployment, why: str, begin: Begin[T]) -> Served[T]:
        """One attempt: admitted by the breaker, recorded in the path, the stats and the budget."""
        now = time.monotonic()
        breaker = self.circuits.get(deployment.key)
        ticket = breaker.admit(now)
        if ticket is None:
            raise _Skipped()
        if why != "retry" and why != "hedge":
            self.budgets.first_attempt(deployment.key, now)
        attempt = Attempt(deployment.key, deployment.alias, why, now)
        journey.attempts.append(attempt)
        record = self.router.begin_call(deployment, now)
        try:
            value = await begin(deployment, journey.options_for(deployment))
        except ProviderError as error:
            attempt.outcome = error.kind.value
            if request_deadline_passed(journey, deployment, error):
                # Cut by the client's deadline, not the deployment's limits: no verdict on its health or speed.
                record.abandon(time.monotonic())
                breaker.release(ticket)
                raise
            if error.kind is ErrorKind.TIMEOUT:
                journey.timed_out.add(deployment.key)  # hedges included: never ask it again for this request
            record.end(time.monotonic(), ok=False)
            breaker.failed(time.monotonic(), error.kind, error.retry_after_s, ticket)
            raise
        except BaseException:
            attempt.outcome = "cancelled"
            record.abandon(time.monotonic())
            breaker.release(ticket)
            raise
        attempt.outcome = "ok"
        if journey.streaming:
            breaker.answering(ticket)  # the verdict comes when the stream ends
        else:
            breaker.succeeded(time.monotonic(), ticket)
        return Served(value, deployment, record, attempt, ticket)

    # --- hedging ---------------------------------------------------------------------------------

    def _hedge_delay(self, journey: Journey, deployment: Deployment, hedge: Hedge) -> float | None:
        if hedge.after_ms is not None:
            return max(hedge.after_ms, hedge.min_after_ms) / 1000.0
        stats = self.router.stats.get(deployment.key)
        if not stats.trusted:
            return None  # no p95 to go by yet: do not guess
        now = time.monotonic()
        # A stream is won by its first token; a plain call only by its whole answer.
        p95 = stats.ttft_bound(0.95, now) if journey.streaming else stats.latency.quantile(0.95, now)
        return None if p95 is None else max(p95, hedge.min_after_ms / 1000.0)

    async def _hedged(
        self,
        journey: Journey,
        deployment: Deployment,
        why: str,
        begin: Begin[T],
        discard: Discard[T] | None,
        hedge: Hedge,
        queue: deque[tuple[Deployment, str]],
        usable: Callable[[Deployment], bool] | None,
    ) -> Served[T]:
        """Race the first call against a later-started second candidate; the first success wins."""
        delay = self._hedge_delay(journey, deployment, hedge)
        primary = asyncio.ensure_future(self._call(journey, deployment, why, begin))
        racers = [primary]
        winner: asyncio.Future[Served[T]] | None = None
        try:
            if delay is not None:
                done, _ = await asyncio.wait(racers, timeout=delay)
                if not done:
                    second = self._hedge_target(journey, queue, usable)
                    if second is not None:
                        racers.append(asyncio.ensure_future(self._call(journey, second, "hedge", begin)))
            pending = set(racers)
            while pending and winner is None:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                # The primary wins a tie: it is the deployment the router preferred.
                winner = next((task for task in racers if task.done() and _succeeded(task)), None)
            if winner is not None:
                if winner is not primary:
                    journey.fallback_reason = journey.fallback_reason or "hedge"
                return winner.result()
            # Nobody won: report the primary's failure, unless it never started (breaker) and the hedge did.
            errors = [task.exception() for task in racers if not task.cancelled()]
            real = [error for error in errors if error is not None and not isinstance(error, _Skipped)]
            raise real[0] if real else _Skipped()
        finally:
            await self._stop_racers(racers, winner, discard)

    async def _stop_racers(
        self,
        racers: list[asyncio.Future[Served[T]]],
        winner: asyncio.Future[Served[T]] | None,
        discard: Discard[T] | None,
    ) -> None:
        """Cancel the racers still running and release the ones that answered but lost (in the same
        instant, or while being cancelled). Finishes even if the request is cancelled meanwhile; then
        the winner is released too, since nobody will take it."""
        pending = [task for task in racers if not task.done()]
        for task in pending:
            task.cancel()
        cancelled = False
        while any(not task.done() for task in pending):
            try:
                await asyncio.wait(pending)
            except asyncio.CancelledError:
                cancelled = True
        for task in racers:
            if (task is not winner or cancelled) and _succeeded(task):
                await self.abandon(task.result(), discard)
        if cancelled:
            raise asyncio.CancelledError()

    def _hedge_target(
        self,
        journey: Journey,
        queue: deque[tuple[Deployment, str]],
        usable: Callable[[Deployment], bool] | None,
    ) -> Deployment | None:
        """The next candidate able and allowed (by breaker and retry budget) to take a hedge, taken off the queue."""
        if len(journey.attempts) >= self._retry_policy(journey).max_attempts:
            return None
        now = time.monotonic()
        for index, (candidate, _) in enumerate(queue):
            if _ruled_out(journey, candidate, usable):
                continue
            if journey.options_for(candidate).remaining_s() <= 0.001:
                continue
            if self.circuits.blocked(candidate.key, now) is not None:
                continue
            if not self.budgets.try_spend(candidate.key, now):
                continue
            del queue[index]
            return candidate
        return None

    async def abandon(self, served: Served[Any], discard: Discard[Any] | None) -> None:
        """An answer nobody will take (it lost a hedge race, or its request was cancelled): mark it,
        settle its stats and breaker admission without a verdict, and release what it holds."""
        served.attempt.outcome = "cancelled"
        served.record.abandon(time.monotonic())
        self.circuits.get(served.deployment.key).release(served.ticket)
        if discard is not None:
            await discard(served.value)


#: Error kinds with a fallback chain of their own (`fallbacks.context_window`, `fallbacks.content_filter`).
_OWN_CHAINS = (ErrorKind.CONTEXT_WINDOW, ErrorKind.CONTENT_FILTER)


def request_deadline_passed(journey: Journey, deployment: Deployment, error: ProviderError) -> bool:
    """A timeout that the request's own deadline (`x-gateway-timeout-ms`, a client read timeout) explains:
    the limits computed now leave nothing, so the deadline that fired was the request's, not the deployment's."""
    return error.kind is ErrorKind.TIMEOUT and journey.options_for(deployment).remaining_s() <= 0.01


def _ruled_out(journey: Journey, deployment: Deployment, usable: Callable[[Deployment], bool] | None) -> bool:
    """Not to be asked for this request: it timed out on it already, or cannot do what this call needs."""
    return deployment.key in journey.timed_out or (usable is not None and not usable(deployment))


def _deadline_passed() -> ProviderError:
    return ProviderError(ErrorKind.TIMEOUT, "the request's deadline passed before an answer", provider="gateway")


def _succeeded(task: asyncio.Future[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def _worth_retrying(error: BaseException) -> bool:
    """Retry the same deployment for transient kinds, except a timeout: a deployment that did not answer
    in time is not asked again for this request (retrying a silent provider only multiplies the wait)."""
    return isinstance(error, ProviderError) and error.retryable and error.kind is not ErrorKind.TIMEOUT
