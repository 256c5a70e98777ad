"""Ranking strategies: the order in which the deployments that passed the filters are tried.

Each strategy returns every candidate, best first, with a score (lower is better) and a reason a person
can read. Stats-based strategies judge a deployment only once it has enough observations; until then a
small share of traffic explores it, so its statistics do not starve.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from routing.config import ModelAliasConfig
from routing.context import RequestFacts
from routing.stats import DeploymentStats, LiveStats

DEFAULT_OUTPUT_TOKENS = 256  # expected answer length before any has been observed


@dataclass(slots=True)
class Candidate:
    deployment: Any  # routing.router.Deployment
    score: float
    reason: str


@dataclass(slots=True)
class Inputs:
    alias: ModelAliasConfig
    facts: RequestFacts
    stats: LiveStats
    now: float
    rng: random.Random

    def of(self, deployment: Any) -> DeploymentStats:
        return self.stats.get(deployment.key)

    def expected_output(self, deployment: Any) -> float:
        if self.facts.requested_output_tokens is not None:
            return float(self.facts.requested_output_tokens)
        observed = self.of(deployment).output_tokens.value
        return observed if observed is not None else float(DEFAULT_OUTPUT_TOKENS)

    def is_cold(self, deployment: Any) -> bool:
        config = deployment.config
        return bool(config.scales_to_zero) and self.of(deployment).idle_for(self.now) > config.idle_timeout_s

    def cold_penalty(self, deployment: Any) -> float:
        if not self.is_cold(deployment):
            return 0.0
        measured = self.of(deployment).cold_start_s.value
        return measured if measured is not None else float(deployment.config.cold_start_s)

    def cost(self, deployment: Any) -> float:
        """Estimated USD for this request on `deployment`; infinite when it has no price."""
        price = deployment.config.price
        if price is None:
            return math.inf
        output = self.expected_output(deployment)
        cost = (self.facts.prompt_tokens * price.input_per_mtok + output * price.output_per_mtok) / 1e6
        if price.per_second is not None:
            cost += price.per_second * (self.expected_latency(deployment) if self.of(deployment).trusted else 1.0)
        return cost

    def ttft_p95(self, deployment: Any) -> float | None:
        p95 = self.of(deployment).ttft_bound(0.95, self.now)
        return None if p95 is None else p95 + self.cold_penalty(deployment)

    def expected_latency(self, deployment: Any) -> float:
        """Expected time to the whole answer, stretched by the share of calls that fail."""
        stats = self.of(deployment)
        ttft = stats.ttft.quantile(0.5, self.now)
        if ttft is not None:
            speed = stats.tokens_per_s.value
            latency = ttft + (self.expected_output(deployment) / speed if speed else 0.0)
        else:
            observed = stats.latency.quantile(0.5, self.now)  # only non-streamed calls so far
            if observed is None:
                return math.inf
            latency = observed
        failing = min(stats.error_rate.value or 0.0, 0.9)
        return latency / (1.0 - failing) + self.cold_penalty(deployment)


def _stable(candidates: list[Candidate], order: Sequence[Any]) -> list[Candidate]:
    position = {id(deployment): index for index, deployment in enumerate(order)}
    return sorted(candidates, key=lambda c: (c.score, position[id(c.deployment)]))


def ordered(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    return [Candidate(d, float(i), f"position {i + 1} in the alias's list") for i, d in enumerate(deployments)]


def weighted(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    """A weighted random order: the first pick follows the weights; the rest are the fallbacks."""
    total = sum(d.config.weight for d in deployments) or 1.0
    keyed = []
    for d in deployments:
        weight = d.config.weight
        # Efraimidis-Spirakis: sorting by u^(1/w) samples without replacement in proportion to weight.
        key = inputs.rng.random() ** (1.0 / weight) if weight > 0 else -1.0
        keyed.append((key, d))
    keyed.sort(key=lambda pair: -pair[0])
    return [
        Candidate(d, float(i), f"weight {d.config.weight:g} ({d.config.weight / total:.0%} of traffic)")
        for i, (_, d) in enumerate(keyed)
    ]


def cheapest(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    candidates = []
    for d in deployments:
        cost = inputs.cost(d)
        reason = "no price configured" if math.isinf(cost) else f"estimated ${cost:.6f} for this request"
        candidates.append(Candidate(d, cost, reason))
    return _stable(candidates, deployments)


def fastest(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    candidates = []
    for d in deployments:
        latency = inputs.expected_latency(d)
        cold = " (cold: includes its cold-start penalty)" if inputs.is_cold(d) else ""
        reason = "no latency observed yet" if math.isinf(latency) else f"expected {latency * 1000:.0f} ms{cold}"
        candidates.append(Candidate(d, latency, reason))
    return _stable(candidates, deployments)


def least_busy(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    return _stable(
        [Candidate(d, float(inputs.of(d).in_flight), f"{inputs.of(d).in_flight} in flight") for d in deployments],
        deployments,
    )


def latency_slo(deployments: Sequence[Any], inputs: Inputs) -> list[Candidate]:
    """The cheapest deployment whose observed p95 time-to-first-token meets the SLO; the fastest when none does."""
    assert inputs.alias.slo is not None
    slo_s = inputs.alias.slo.ttft_p95_ms / 1000.0
    meeting, unknown, missing = [], [], []
    for d in deployments:
        stats = inputs.of(d)
        p95 = inputs.ttft_p95(d)
        failing = stats.error_rate.value or 0.0
        if p95 is None or not stats.trusted:
            unknown.append(Candidate(d, math.inf, "not enough recent observations to judge against the SLO"))
        elif failing > 0.5:
            missing.append(Candidate(d, inputs.expected_latency(d), f"failing: {failing:.0%} of recent calls"))
        elif p95 <= slo_s:
            cost = inputs.cost(d)
            meeting.append(
                Candidate(
                    d, cost, f"p95 TTFT {p95 * 1000:.0f} ms meets the {slo_s * 1000:.0f} ms SLO; estimated ${cost:.6f}"
                )
            )
        else:
            missing.append(Candidate(d, p95, f"p95 TTFT {p95 * 1000:.0f} ms misses the {slo_s * 1000:.0f} ms SLO"))
    if meeting:
        return _stable(meeting, deployments) + unknown + _stable(missing, deployments)
    # Nothing is known to meet the SLO: the fastest known first; unknowns are left to exploration.
    return _stable(missing, deployments) + unknown


STRATEGIES: dict[str, Callable[[Sequence[Any], Inputs], list[Candidate]]] = {
    "ordered": ordered,
    "weighted": weighted,
    "cheapest": cheapest,
    "fastest": fastest,
    "least-busy": least_busy,
    "latency-slo": latency_slo,
}
STATS_BASED = {"fastest", "least-busy", "latency-slo"}


def explore(ranked: list[Candidate], inputs: Inputs) -> list[Candidate]:
    """With probability `explore_share`, try an under-observed deployment first, so its stats can grow."""
    share = inputs.alias.explore_share
    if share <= 0 or len(ranked) < 2 or inputs.rng.random() >= share:
        return ranked
    # Only deployments without trusted, recent stats are explored. A scale-to-zero deployment that went
    # cold while its stats are fresh is not (it is ranked with its cold-start penalty instead); once its
    # evidence has decayed it is re-checked, and that one request pays its boot.
    untested = [c for c in ranked[1:] if not inputs.of(c.deployment).trusted]
    if not untested:
        return ranked
    # The least-observed first, so every newcomer earns trusted stats at the same pace.
    pick = min(untested, key=lambda c: (inputs.of(c.deployment).observations, inputs.rng.random()))
    observed = inputs.of(pick.deployment).observations
    pick = Candidate(pick.deployment, pick.score, f"exploring: only {observed} observations so far")
    return [pick, *[c for c in ranked if c.deployment is not pick.deployment]]
