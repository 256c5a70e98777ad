"""The router: from a request (its facts and its sender's context) to the ordered deployments to try.

`Router.plan` is a pure function of the request, the config, the live stats and the circuit states:
no I/O, so the same code serves traffic and `route explain`, and its decisions can be tested as
properties over random configs. Steps: pick the alias (header override if the tenant may use one,
else the first matching rule, else the requested model), remove the deployments the hard filters rule
out (saying why), then rank the rest by the alias's strategy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from providers.base import ProviderAdapter
from routing.config import DEFAULT_TIMEOUTS, DeploymentConfig, ModelAliasConfig, RouteRule, Timeouts
from routing.context import RequestContext, RequestFacts
from routing.filters import AllClosed, CircuitView, rejection
from routing.rules import first_match
from routing.stats import CallRecord, LiveStats
from routing.strategies import STATS_BASED, STRATEGIES, Candidate, Inputs, explore


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment ready to call: its config, the adapter of its provider and its resolved limits."""

    alias: str
    provider: str
    model: str
    adapter: ProviderAdapter
    timeouts: Timeouts
    config: DeploymentConfig

    @property
    def key(self) -> str:
        """Identity for stats and circuits: the same provider and model share them across aliases."""
        return f"{self.provider}/{self.model}"


@dataclass(slots=True)
class Rejection:
    deployment: Deployment
    reason: str
    policy: bool
    resting: bool = False
    too_long: bool = False


@dataclass(slots=True)
class Plan:
    requested: str
    alias: str
    chosen_by: str
    strategy: str
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    _deployments: list[Deployment] | None = field(default=None, repr=False)
    _deployments_of: list[Candidate] | None = field(default=None, repr=False)

    @property
    def deployments(self) -> list[Deployment]:
        """The candidates' deployments, best first (computed once: the executor reads it several times)."""
        if self._deployments is None or self._deployments_of is not self.candidates:
            self._deployments = [candidate.deployment for candidate in self.candidates]
            self._deployments_of = self.candidates
        return self._deployments

    def explain(self) -> dict[str, Any]:
        return {
            "requested_model": self.requested,
            "alias": self.alias,
            "chosen_by": self.chosen_by,
            "strategy": self.strategy,
            "candidates": [
                {
                    "rank": rank,
                    "deployment": c.deployment.key,
                    "score": None if c.score == float("inf") else c.score,
                    "reason": c.reason,
                }
                for rank, c in enumerate(self.candidates, start=1)
            ],
            "filtered_out": [{"deployment": r.deployment.key, "reason": r.reason} for r in self.rejected],
        }


class UnknownModel(LookupError):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class WrongModelMode(ValueError):
    def __init__(self, model: str, mode: str) -> None:
        super().__init__(model)
        self.model = model
        self.mode = mode


class NoDeploymentAvailable(Exception):
    """Every deployment of the alias was filtered out; `plan.rejected` says which filter removed which."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.policy = all(r.policy for r in plan.rejected)  # only the tenant's contract stood in the way
        # Some deployment would serve but is resting (open breaker, rate limited): try again later.
        self.resting = any(r.resting for r in plan.rejected)
        reasons = "; ".join(f"{r.deployment.key}: {r.reason}" for r in plan.rejected)
        super().__init__(f"No deployment of '{plan.alias}' can serve this request. {reasons}")


class Router:
    def __init__(
        self,
        models: dict[str, ModelAliasConfig],
        adapters: dict[str, ProviderAdapter],
        default_timeouts: Timeouts = DEFAULT_TIMEOUTS,
        routes: Sequence[RouteRule] = (),
        stats: LiveStats | None = None,
        circuits: CircuitView | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.models = models
        self.routes = list(routes)
        self.stats = stats if stats is not None else LiveStats()
        self.circuits = circuits if circuits is not None else AllClosed()
        self.rng = rng if rng is not None else random.Random()
        self._deployments: dict[str, tuple[Deployment, ...]] = {}
        for alias, model in models.items():
            alias_timeouts = (model.timeouts or Timeouts()).over(default_timeouts)
            self._deployments[alias] = tuple(
                Deployment(
                    alias=alias,
                    provider=deployment.provider,
                    model=deployment.model,
                    adapter=adapters[deployment.provider],
                    timeouts=(deployment.timeouts or Timeouts()).over(alias_timeouts),
                    config=deployment,
                )
                for deployment in model.deployments
            )
        self._aliases_by_mode: dict[str, set[str]] = {}
        for alias, model in models.items():
            self._aliases_by_mode.setdefault(model.mode, set()).add(alias)

    def deployments(self, alias: str) -> tuple[Deployment, ...]:
        return self._deployments[alias]

    def all_deployments(self) -> list[Deployment]:
        return [d for plan in self._deployments.values() for d in plan]

    def explain(self, facts: RequestFacts, context: RequestContext | None = None) -> dict[str, Any]:
        """What `plan` would decide for this request and why, including every deployment filtered out.
        Exploration (a random detour for under-observed deployments) is left out, so it is repeatable."""
        try:
            plan = self.plan(facts, context, explore_share=0.0)
            explanation = plan.explain()
        except NoDeploymentAvailable as exc:
            explanation = {**exc.plan.explain(), "error": str(exc)}
        config = self.models[explanation["alias"]]
        explanation["explore_share"] = config.explore_share if config.strategy in STATS_BASED else 0.0
        if config.slo is not None:
            explanation["slo_ttft_p95_ms"] = config.slo.ttft_p95_ms
        now = time.monotonic()
        deployments = self._deployments[explanation["alias"]]
        explanation["stats"] = {d.key: self.stats.get(d.key).snapshot(now) for d in deployments}
        return explanation

    def plan(
        self,
        facts: RequestFacts,
        context: RequestContext | None = None,
        now: float | None = None,
        explore_share: float | None = None,
        alias: str | None = None,
    ) -> Plan:
        """The deployments to try for this request, best first. Raises UnknownModel, WrongModelMode or
        NoDeploymentAvailable. `alias` skips alias selection (a fallback names its alias itself)."""
        context = context or RequestContext()
        now = time.monotonic() if now is None else now
        if alias is None:
            alias, chosen_by = self._alias(facts, context)
        else:
            chosen_by = "a fallback"
        config = self.models.get(alias)
        if config is None:
            raise UnknownModel(alias)
        if config.mode != facts.mode:
            raise WrongModelMode(alias, config.mode)
        plan = Plan(requested=facts.model, alias=alias, chosen_by=chosen_by, strategy=config.strategy)
        usable: list[Deployment] = []
        for deployment in self._deployments[alias]:
            verdict = rejection(deployment, facts, context, self.circuits)
            if verdict is None:
                usable.append(deployment)
            else:
                plan.rejected.append(
                    Rejection(deployment, verdict.reason, verdict.policy, verdict.resting, verdict.too_long)
                )
        if not usable:
            raise NoDeploymentAvailable(plan)
        inputs = Inputs(alias=config, facts=facts, stats=self.stats, now=now, rng=self.rng)
        ranked = STRATEGIES[config.strategy](usable, inputs)
        if config.strategy in STATS_BASED and explore_share != 0.0:
            ranked = explore(ranked, inputs)
        plan.candidates = ranked
        return plan

    def begin_call(self, deployment: Deployment, now: float | None = None) -> CallRecord:
        """Start feeding this call's outcome into the deployment's live stats."""
        now = time.monotonic() if now is None else now
        stats = self.stats.get(deployment.key)
        config = deployment.config
        was_cold = config.scales_to_zero and stats.idle_for(now) > config.idle_timeout_s
        return CallRecord(stats, now, was_cold=was_cold)

    def _alias(self, facts: RequestFacts, context: RequestContext) -> tuple[str, str]:
        if context.route_override and context.policy.allow_route_header:
            return context.route_override, "the x-gateway-route header (allowed for this tenant)"
        match = first_match(self.routes, facts, context, self._aliases_by_mode.get(facts.mode, set()))
        if match is not None:
            index, rule = match
            return rule.use, f"routes[{index}]"
        return facts.model, "the requested model"
