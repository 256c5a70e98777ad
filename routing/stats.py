"""Live statistics per deployment, fed by every call and read by the router.

Latencies are kept as decaying histograms: log-spaced buckets whose weights halve every `half_life_s`,
so quantiles (p50, p95) follow the deployment's recent behaviour in fixed memory, with no samples kept.
Rates (tokens/s, errors) are exponentially weighted moving averages. All updates are O(buckets) at most
and happen on the event loop, so no locks are needed.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

# 1 ms .. ~20 min, 12 buckets per decade (each ~21% wide): quantile error well under the bucket width.
_BOUNDS = [0.001 * 10 ** (i / 12) for i in range(12 * 6 + 2)]
MIN_OBSERVATIONS = 10  # below this a deployment's estimates are not trusted: it is explored, not judged
_RECENT_EVIDENCE = 3.0  # decayed weight of recent calls below which old estimates are re-checked


class DecayingQuantiles:
    """Each bucket keeps its (decayed) count and the sum of its values, so a quantile is read as the mean
    of the bucket it falls in: exact for values that cluster, within half a bucket (~10%) otherwise."""

    def __init__(self, half_life_s: float = 300.0) -> None:
        self._counts = [0.0] * (len(_BOUNDS) + 1)
        self._sums = [0.0] * (len(_BOUNDS) + 1)
        self._half_life_s = half_life_s
        self._last = 0.0
        self.total = 0.0

    def _decay(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed < 1.0:  # decaying once a second is plenty, and keeps observe() cheap
            return
        factor = 0.5 ** (elapsed / self._half_life_s)
        self._counts = [count * factor for count in self._counts]
        self._sums = [total * factor for total in self._sums]
        self.total *= factor
        self._last = now

    def observe(self, value_s: float, now: float) -> None:
        self._decay(now)
        index = bisect.bisect_left(_BOUNDS, value_s)
        self._counts[index] += 1.0
        self._sums[index] += value_s
        self.total += 1.0

    def quantile(self, q: float, now: float) -> float | None:
        self._decay(now)
        if self.total <= 0:
            return None
        target, running = q * self.total, 0.0
        for count, total in zip(self._counts, self._sums, strict=True):
            if count <= 0:
                continue
            running += count
            if running >= target:
                return total / count
        return _BOUNDS[-1]


@dataclass
class EWMA:
    alpha: float = 0.1
    value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


@dataclass
class DeploymentStats:
    ttft: DecayingQuantiles = field(default_factory=DecayingQuantiles)
    latency: DecayingQuantiles = field(default_factory=DecayingQuantiles)
    tokens_per_s: EWMA = field(default_factory=EWMA)
    output_tokens: EWMA = field(default_factory=EWMA)
    error_rate: EWMA = field(default_factory=lambda: EWMA(alpha=0.05))
    cold_start_s: EWMA = field(default_factory=lambda: EWMA(alpha=0.3))
    in_flight: int = 0
    observations: int = 0
    last_used: float | None = None

    @property
    def trusted(self) -> bool:
        """Enough recent evidence to judge. Evidence decays: a deployment that got no traffic for a long
        while (say, after one bad spell) becomes untrusted again, so exploration re-checks it."""
        return self.observations >= MIN_OBSERVATIONS and self.latency.total >= _RECENT_EVIDENCE

    def ttft_bound(self, q: float, now: float) -> float | None:
        """The q-quantile of time to first token. Without streamed calls, a non-streamed answer's total
        time is used: the first token cannot have come later than the whole answer."""
        value = self.ttft.quantile(q, now)
        return value if value is not None else self.latency.quantile(q, now)

    def idle_for(self, now: float) -> float:
        return math.inf if self.last_used is None else now - self.last_used

    def snapshot(self, now: float) -> dict[str, float | int | None]:
        return {
            "observations": self.observations,
            "in_flight": self.in_flight,
            "ttft_p50_s": self.ttft.quantile(0.5, now),
            "ttft_p95_s": self.ttft.quantile(0.95, now),
            "latency_p50_s": self.latency.quantile(0.5, now),
            "latency_p95_s": self.latency.quantile(0.95, now),
            "tokens_per_s": self.tokens_per_s.value,
            "error_rate": self.error_rate.value,
            "cold_start_s": self.cold_start_s.value,
        }


class CallRecord:
    """One call's contribution to its deployment's stats; `end` or `abandon` must run exactly once."""

    __slots__ = ("_stats", "_started", "_first_token", "_was_cold", "_ended")

    def __init__(self, stats: DeploymentStats, now: float, *, was_cold: bool) -> None:
        self._stats = stats
        self._started = now
        self._first_token: float | None = None
        self._was_cold = was_cold
        self._ended = False
        stats.in_flight += 1
        # `last_used` moves only when a call ends: a deployment still booting for this call is still cold.

    def first_token(self, now: float) -> None:
        if self._first_token is None:
            self._first_token = now

    def abandon(self, now: float) -> None:
        """The client left: the call says nothing about the deployment's speed or health."""
        if not self._ended:
            self._ended = True
            self._stats.in_flight -= 1

    def end(self, now: float, *, ok: bool, output_tokens: int | None = None, cold_start: bool | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        stats = self._stats
        stats.in_flight -= 1
        stats.observations += 1
        stats.error_rate.add(0.0 if ok else 1.0)
        if not ok:
            return
        stats.last_used = now
        total = now - self._started
        cold = self._was_cold if cold_start is None else cold_start
        if cold:
            # A cold call's wait is the cold-start penalty, not the deployment's normal speed.
            typical = stats.ttft_bound(0.5, now) or 0.0
            first = self._first_token if self._first_token is not None else now
            stats.cold_start_s.add(max(first - self._started - typical, 0.0))
            return
        stats.latency.observe(total, now)
        if self._first_token is not None:  # streamed: a real time to first token
            stats.ttft.observe(self._first_token - self._started, now)
        if output_tokens:
            stats.output_tokens.add(float(output_tokens))
            generating = now - (self._first_token if self._first_token is not None else self._started)
            if generating > 0.001:
                stats.tokens_per_s.add(output_tokens / generating)


class LiveStats:
    """Stats of every deployment this process has called, keyed by `provider/model`; kept across reloads."""

    def __init__(self) -> None:
        self._by_key: dict[str, DeploymentStats] = {}

    def get(self, key: str) -> DeploymentStats:
        stats = self._by_key.get(key)
        if stats is None:
            stats = self._by_key[key] = DeploymentStats()
        return stats

    def retain(self, keys: set[str]) -> None:
        """After a reload: forget deployments that no longer exist, keep the rest as they are."""
        for key in list(self._by_key):
            if key not in keys:
                del self._by_key[key]

    def keys(self) -> set[str]:
        return set(self._by_key)
