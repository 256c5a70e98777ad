"""Retry budgets: retries and hedges a deployment may receive, as a share of its recent requests.

Per-request retry limits do not stop retry storms: when a provider is down, every request retrying
twice triples its load exactly when it can least take it. A budget caps the *extra* calls: over a
sliding window, retries plus hedges sent to a deployment may not exceed `ratio` × the first attempts it
received (plus a small floor so a quiet deployment can still retry). Past the cap, the executor moves
on to the next candidate instead of retrying.
"""

from __future__ import annotations

from typing import Any

from routing.config import RetryBudget
from routing.windows import SlidingPair

_BUCKETS = 10


class RetryBudgets:
    def __init__(self, policy: RetryBudget | None = None) -> None:
        self.policy = policy or RetryBudget()
        self._by_key: dict[str, SlidingPair] = {}  # first attempts (first), retries and hedges (second)
        self.denied = 0  # retries refused by a budget, for the admin view and metrics

    def _counts(self, key: str) -> SlidingPair:
        counts = self._by_key.get(key)
        if counts is None:
            counts = self._by_key[key] = SlidingPair(self.policy.window_s, _BUCKETS)
        return counts

    def first_attempt(self, key: str, now: float) -> None:
        self._counts(key).add(now, first=1)

    def try_spend(self, key: str, now: float) -> bool:
        """Take one retry or hedge from the deployment's budget; False (and nothing taken) when spent."""
        counts = self._counts(key)
        firsts, extras = counts.totals(now)
        if extras + 1 > max(self.policy.ratio * firsts, self.policy.min_per_window):
            self.denied += 1
            return False
        counts.add(now, second=1)
        return True

    def reconfigure(self, policy: RetryBudget, keys: set[str]) -> None:
        """After a reload: the new policy applies; counts restart if the window changed."""
        if policy.window_s != self.policy.window_s:
            self._by_key.clear()
        self.policy = policy
        for key in list(self._by_key):
            if key not in keys:
                del self._by_key[key]

    def snapshot(self, key: str, now: float) -> dict[str, Any]:
        firsts, extras = self._counts(key).totals(now)
        allowed = max(self.policy.ratio * firsts, self.policy.min_per_window)
        return {
            "window_s": self.policy.window_s,
            "first_attempts": firsts,
            "extra_attempts": extras,
            "allowed": allowed,
        }
