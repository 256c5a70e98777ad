"""Live statistics: quantile accuracy, decay, trust, and exactly-once accounting of calls."""

from __future__ import annotations

import pytest

from routing.stats import MIN_OBSERVATIONS, CallRecord, DecayingQuantiles, DeploymentStats


@pytest.mark.parametrize("value", [0.012, 0.27, 1.9, 45.0])
def test_quantiles_are_within_a_few_percent_of_the_truth(value: float) -> None:
    quantiles = DecayingQuantiles()
    for i in range(200):
        quantiles.observe(value * (1 + (i % 10) / 1000), now=1.0)  # values within 1% of `value`
    assert quantiles.quantile(0.95, now=1.0) == pytest.approx(value, rel=0.05)
    assert quantiles.quantile(0.5, now=1.0) == pytest.approx(value, rel=0.05)


def test_mixed_values_give_ordered_quantiles() -> None:
    quantiles = DecayingQuantiles()
    for i in range(1000):
        quantiles.observe(0.1 if i % 10 else 2.0, now=0.0)  # 10% slow tail
    p50, p95 = quantiles.quantile(0.5, 0.0), quantiles.quantile(0.95, 0.0)
    assert p50 == pytest.approx(0.1, rel=0.1) and p95 == pytest.approx(2.0, rel=0.25)


def test_old_evidence_decays_and_a_quiet_deployment_is_re_checked() -> None:
    stats = DeploymentStats()
    for i in range(MIN_OBSERVATIONS + 5):
        record = CallRecord(stats, now=float(i), was_cold=False)
        record.end(float(i) + 0.1, ok=True)
    assert stats.trusted
    stats.latency.quantile(0.5, now=20 + 3000.0)  # ten half-lives with no traffic
    assert stats.latency.total < 1 and not stats.trusted  # exploration will look at it again


def test_recent_behaviour_dominates_the_quantiles() -> None:
    quantiles = DecayingQuantiles(half_life_s=10)
    for _ in range(100):
        quantiles.observe(2.0, now=0.0)  # a bad spell
    for _ in range(100):
        quantiles.observe(0.1, now=100.0)  # ten half-lives later, healthy again
    assert quantiles.quantile(0.95, now=100.0) == pytest.approx(0.1, rel=0.1)


def test_a_call_is_counted_once_and_in_flight_returns_to_zero() -> None:
    stats = DeploymentStats()
    ok, failed, left = (CallRecord(stats, 0.0, was_cold=False) for _ in range(3))
    assert stats.in_flight == 3
    ok.first_token(0.05)
    ok.end(0.5, ok=True, output_tokens=90)
    ok.end(0.6, ok=True)  # a second end is ignored
    failed.end(0.2, ok=False)
    left.abandon(0.3)
    assert stats.in_flight == 0 and stats.observations == 2
    assert stats.error_rate.value is not None and stats.tokens_per_s.value == pytest.approx(200, rel=0.01)
    assert stats.ttft.quantile(0.5, 1.0) == pytest.approx(0.05, rel=0.05)


def test_a_booting_deployment_stays_cold_until_its_first_answer() -> None:
    stats = DeploymentStats()
    record = CallRecord(stats, now=0.0, was_cold=True)
    assert stats.idle_for(0.5) == float("inf")  # still booting: the next request must not think it warm
    record.end(2.0, ok=True, cold_start=True)
    assert stats.idle_for(2.5) == 0.5 and stats.cold_start_s.value == pytest.approx(2.0)
