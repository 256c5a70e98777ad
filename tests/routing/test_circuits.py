"""Circuit breakers and retry budgets, driven with explicit clocks (no sleeping, no servers)."""

from __future__ import annotations

from providers.errors import ErrorKind
from routing.circuits import Breaker, CircuitBreakers, CircuitState
from routing.config import CircuitBreakerPolicy, RetryBudget
from routing.retry_budget import RetryBudgets

POLICY = CircuitBreakerPolicy(
    consecutive_failures=3, error_rate=0.5, min_calls=10, window_s=10, cooldown_s=5, max_cooldown_s=20
)


def fail(breaker: Breaker, now: float, kind: ErrorKind = ErrorKind.UNAVAILABLE) -> None:
    ticket = breaker.admit(now)
    assert ticket is not None
    breaker.failed(now, kind, ticket=ticket)


def ok(breaker: Breaker, now: float) -> None:
    ticket = breaker.admit(now)
    assert ticket is not None
    breaker.succeeded(now, ticket)


def test_consecutive_failures_open_the_breaker_which_rejects_until_the_cooldown() -> None:
    breaker = Breaker(POLICY)
    for second in range(2):
        fail(breaker, 100.0 + second)
    assert breaker.state is CircuitState.CLOSED and breaker.blocked(102.0) is None
    fail(breaker, 102.0)
    assert breaker.state is CircuitState.OPEN
    reason = breaker.blocked(103.0)
    assert reason is not None and "3 failures in a row" in reason and "unavailable" in reason
    assert not breaker.admit(106.9)  # cooldown 5 s from t=102


def test_half_open_lets_a_limited_number_of_probes_through_and_a_success_closes() -> None:
    breaker = Breaker(POLICY.model_copy(update={"half_open_probes": 2}))
    for second in range(3):
        fail(breaker, 100.0 + second)
    first = breaker.admit(107.0)
    assert first is not None and first.probe and breaker.state is CircuitState.HALF_OPEN
    second = breaker.admit(107.0)
    assert second is not None
    assert breaker.admit(107.0) is None, "only two probes at once"
    assert "half-open" in (breaker.blocked(107.0) or "")
    breaker.succeeded(107.5, first)
    assert breaker.state is CircuitState.CLOSED
    breaker.release(second)  # a late settlement of the other probe frees nothing it no longer holds
    assert breaker.probes_in_flight == 0
    assert breaker.blocked(107.5) is None
    assert breaker.consecutive_failures == 0


def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_maximum() -> None:
    breaker = Breaker(POLICY)
    for second in range(3):
        fail(breaker, 100.0 + second)
    now = 102.0
    cooldowns = []
    for _ in range(4):
        now = breaker.retry_at
        fail(breaker, now)  # the probe fails
        assert breaker.state is CircuitState.OPEN
        cooldowns.append(breaker.retry_at - now)
    assert cooldowns == [10.0, 20.0, 20.0, 20.0]
    # Recovery resets the cooldown for the next outage.
    ok(breaker, breaker.retry_at)
    assert breaker.state is CircuitState.CLOSED and breaker.cooldown_s == 5.0


def test_error_rate_over_the_window_opens_without_consecutive_failures() -> None:
    breaker = Breaker(POLICY)
    now = 100.0
    for index in range(10):  # ok, fail, ok, fail...: never 3 in a row, but 50% of 10 calls
        now += 0.1
        if index % 2:
            fail(breaker, now)
        else:
            ok(breaker, now)
    assert breaker.state is CircuitState.OPEN
    assert "5 of 10 calls" in (breaker.blocked(now) or "")


def test_old_failures_slide_out_of_the_window() -> None:
    breaker = Breaker(POLICY.model_copy(update={"consecutive_failures": 100}))
    for index in range(9):
        fail(breaker, 100.0 + index * 0.01)
    ok(breaker, 130.0)  # 30 s later the 9 failures are outside the 10 s window
    for index in range(9):
        ok(breaker, 130.1 + index * 0.01)
    assert breaker.state is CircuitState.CLOSED
    assert breaker.snapshot(130.2)["window_failures"] == 0


def test_a_rate_limit_rests_the_deployment_for_its_retry_after_without_counting_a_failure() -> None:
    breaker = Breaker(POLICY)
    breaker.failed(100.0, ErrorKind.RATE_LIMITED, retry_after_s=2.0, ticket=breaker.admit(100.0))
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 0
    assert "rate limited" in (breaker.blocked(101.0) or "")
    assert breaker.blocked(102.01) is None
    # A huge retry-after is capped.
    breaker.failed(103.0, ErrorKind.RATE_LIMITED, retry_after_s=3600.0)
    assert breaker.rate_limited_until == 103.0 + POLICY.max_rate_limit_cooldown_s


def test_request_faults_say_the_deployment_is_alive() -> None:
    breaker = Breaker(POLICY)
    fail(breaker, 100.0)
    fail(breaker, 100.1)
    for kind in (ErrorKind.INVALID_REQUEST, ErrorKind.CONTEXT_WINDOW, ErrorKind.CONTENT_FILTER):
        fail(breaker, 100.2, kind)
    assert breaker.consecutive_failures == 0
    # And they close a half-open breaker like a success would.
    for second in range(3):
        fail(breaker, 101.0 + second)
    probe = breaker.admit(110.0)
    breaker.failed(110.0, ErrorKind.CONTEXT_WINDOW, ticket=probe)
    assert breaker.state is CircuitState.CLOSED


def test_an_abandoned_probe_frees_its_slot_without_a_verdict() -> None:
    breaker = Breaker(POLICY)
    for second in range(3):
        fail(breaker, 100.0 + second)
    probe = breaker.admit(110.0)
    assert probe is not None
    assert breaker.admit(110.0) is None
    breaker.release(probe)
    breaker.release(probe)  # settling twice frees one slot, once
    assert breaker.state is CircuitState.HALF_OPEN and breaker.probes_in_flight == 0
    assert breaker.admit(110.0) is not None


def test_a_disabled_breaker_never_blocks() -> None:
    breaker = Breaker(POLICY.model_copy(update={"enabled": False}))
    for second in range(10):
        fail(breaker, 100.0 + second)
    breaker.failed(111.0, ErrorKind.RATE_LIMITED, retry_after_s=30)
    assert breaker.blocked(112.0) is None


def test_breakers_are_kept_across_a_reconfigure_and_forgotten_when_their_deployment_goes() -> None:
    breakers = CircuitBreakers(POLICY)
    for second in range(3):
        fail(breakers.get("a/m"), 100.0 + second)
    breakers.get("b/m")
    breakers.reconfigure(POLICY.model_copy(update={"cooldown_s": 1.0}), {"a/m"})
    assert breakers.blocked("a/m", 103.0) is not None, "an open breaker stays open across a reload"
    assert breakers.get("a/m").policy.cooldown_s == 1.0
    assert breakers.blocked("b/m", 103.0) is None
    assert "b/m" not in breakers._by_key


def test_retry_budget_caps_extra_attempts_at_a_share_of_first_attempts() -> None:
    budgets = RetryBudgets(RetryBudget(ratio=0.2, window_s=10, min_per_window=2))
    now = 1000.0
    assert budgets.try_spend("a", now) and budgets.try_spend("a", now), "the floor allows a quiet deployment two"
    assert not budgets.try_spend("a", now)
    for _ in range(50):
        budgets.first_attempt("a", now)
    allowed = sum(budgets.try_spend("a", now) for _ in range(100))
    assert allowed == 8  # 20% of 50 first attempts = 10 in the window, 2 already spent
    assert budgets.denied == 93
    # Budgets are per deployment.
    assert budgets.try_spend("b", now)


def test_retry_budget_window_slides() -> None:
    budgets = RetryBudgets(RetryBudget(ratio=0.5, window_s=10, min_per_window=0))
    for _ in range(10):
        budgets.first_attempt("a", 1000.0)
    assert sum(budgets.try_spend("a", 1000.0) for _ in range(10)) == 5
    assert not budgets.try_spend("a", 1005.0)
    assert not budgets.try_spend("a", 1011.0), "no first attempts in the new window: no retries"
    for _ in range(4):
        budgets.first_attempt("a", 1011.0)
    assert budgets.try_spend("a", 1011.0) and budgets.try_spend("a", 1011.0)
    assert not budgets.try_spend("a", 1011.0)


def test_a_rate_limit_without_retry_after_does_not_rest_the_deployment() -> None:
    breaker = Breaker(POLICY)
    breaker.failed(100.0, ErrorKind.RATE_LIMITED, retry_after_s=None, ticket=breaker.admit(100.0))
    assert breaker.blocked(100.0) is None  # backoff paces the retry instead


def test_a_stale_probe_cannot_free_a_slot_of_a_later_half_open_spell() -> None:
    breaker = Breaker(POLICY.model_copy(update={"half_open_probes": 2}))
    for second in range(3):
        fail(breaker, 100.0 + second)
    old_probe = breaker.admit(110.0)
    fail(breaker, 110.0)  # another probe fails: open again, a new spell begins
    assert breaker.state is CircuitState.OPEN and breaker.probes_in_flight == 0
    new_probe = breaker.admit(breaker.retry_at)
    assert new_probe is not None
    breaker.release(old_probe)
    assert breaker.probes_in_flight == 1, "the old ticket belongs to an earlier spell"


def test_a_streaming_probe_closes_the_breaker_at_its_first_chunk_and_counts_at_its_end() -> None:
    breaker = Breaker(POLICY)
    for second in range(3):
        fail(breaker, 100.0 + second)
    probe = breaker.admit(110.0)
    assert probe is not None
    breaker.answering(probe)
    assert breaker.state is CircuitState.CLOSED
    breaker.failed(111.0, ErrorKind.INTERNAL, ticket=probe)  # it died mid-answer: a failure, counted once
    assert breaker.consecutive_failures == 1 and breaker.state is CircuitState.CLOSED


def test_reconfigure_resizes_windows_and_caps_cooldowns() -> None:
    breakers = CircuitBreakers(POLICY)
    breaker = breakers.get("a/m")
    breaker.cooldown_s = 20.0
    breakers.reconfigure(POLICY.model_copy(update={"window_s": 5.0, "max_cooldown_s": 8.0}), {"a/m"})
    assert breaker.window.buckets == len(breaker.window.first) == 5
    assert breaker.cooldown_s == 8.0
