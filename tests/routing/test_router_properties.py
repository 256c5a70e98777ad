"""Router invariants, as properties over random configs, stats and requests (hypothesis)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from routing.config import SLO, DeploymentConfig, ModelAliasConfig, Price
from routing.context import RequestContext, RequestFacts, TenantPolicy
from routing.router import NoDeploymentAvailable, Router
from routing.stats import MIN_OBSERVATIONS, CallRecord, LiveStats
from routing.strategies import Inputs

NOW = 10_000.0
REGIONS = ["us", "eu", None]
TAGS = ["hipaa", "zero-retention"]
CAPABILITIES = ["tools", "vision", "json_schema"]


class _Adapter:
    """Routing never calls an adapter; it only needs one per provider name."""


deployment_configs = st.builds(
    DeploymentConfig,
    provider=st.sampled_from(["p1", "p2", "p3"]),
    model=st.text(alphabet="abcdefgh", min_size=1, max_size=6),
    price=st.one_of(st.none(), st.builds(Price, input_per_mtok=st.floats(0, 20), output_per_mtok=st.floats(0, 60))),
    context_window=st.one_of(st.none(), st.integers(1_000, 200_000)),
    max_output_tokens=st.one_of(st.none(), st.integers(100, 16_000)),
    capabilities=st.one_of(st.none(), st.lists(st.sampled_from(CAPABILITIES), unique=True)),
    region=st.sampled_from(REGIONS),
    tags=st.lists(st.sampled_from(TAGS), unique=True),
    weight=st.floats(0.1, 10),
    scales_to_zero=st.booleans(),
)
policies = st.builds(
    TenantPolicy,
    allowed_regions=st.one_of(st.none(), st.frozensets(st.sampled_from(["us", "eu"]))),
    allowed_providers=st.one_of(st.none(), st.frozensets(st.sampled_from(["p1", "p2", "p3"]), min_size=1)),
    required_tags=st.frozensets(st.sampled_from(TAGS), max_size=1),
)
requests = st.builds(
    RequestFacts,
    model=st.just("m"),
    has_tools=st.booleans(),
    has_images=st.booleans(),
    has_json_schema=st.booleans(),
    requested_output_tokens=st.one_of(st.none(), st.integers(1, 20_000)),
    _prompt_tokens=st.integers(0, 150_000),
)
# Per deployment: how many calls to feed, and their time to first token.
observations = st.lists(st.tuples(st.integers(0, 40), st.floats(0.01, 3.0)), min_size=6, max_size=6)


def build(
    deployments: list[DeploymentConfig], strategy: str, seen: list[tuple[int, float]], seed: int, explore: float = 0.05
) -> Router:
    alias = ModelAliasConfig(
        strategy=strategy,
        deployments=deployments,
        explore_share=explore,  # type: ignore[arg-type]
        slo=SLO(ttft_p95_ms=800) if strategy == "latency-slo" else None,
    )
    router = Router(
        {"m": alias},
        {"p1": _Adapter(), "p2": _Adapter(), "p3": _Adapter()},  # type: ignore[dict-item]
        stats=LiveStats(),
        rng=random.Random(seed),
    )
    for deployment, (count, ttft) in zip(router.deployments("m"), seen, strict=False):
        for i in range(count):
            record = CallRecord(router.stats.get(deployment.key), NOW - 50 + i * 0.01, was_cold=False)
            record.first_token(NOW - 50 + i * 0.01 + ttft)
            record.end(NOW - 50 + i * 0.01 + ttft + 0.5, ok=True, output_tokens=100)
    return router


@settings(max_examples=300, deadline=None)
@given(
    deployments=st.lists(deployment_configs, min_size=1, max_size=6),
    strategy=st.sampled_from(["ordered", "weighted", "cheapest", "fastest", "least-busy", "latency-slo"]),
    facts=requests,
    policy=policies,
    seen=observations,
    seed=st.integers(0, 2**32),
)
def test_no_filtered_deployment_is_ever_chosen(
    deployments: list[DeploymentConfig],
    strategy: str,
    facts: RequestFacts,
    policy: TenantPolicy,
    seen: list[tuple[int, float]],
    seed: int,
) -> None:
    router = build(deployments, strategy, seen, seed)
    context = RequestContext(policy=policy)
    try:
        plan = router.plan(facts, context, now=NOW)
    except NoDeploymentAvailable as exc:
        assert len(exc.plan.rejected) == len(deployments) and not exc.plan.candidates
        return
    chosen = plan.deployments
    assert len(chosen) + len(plan.rejected) == len(deployments)  # every deployment is accounted for, once
    for deployment in chosen:
        assert allowed(deployment.config, deployment.provider, facts, policy)
    for rejected in plan.rejected:
        assert rejected.deployment not in chosen and rejected.reason
        assert not allowed(rejected.deployment.config, rejected.deployment.provider, facts, policy)


def allowed(config: DeploymentConfig, provider: str, facts: RequestFacts, policy: TenantPolicy) -> bool:
    """The filters' rules, restated independently of routing.filters (an oracle, not a copy)."""
    needs = {
        name
        for name, flag in (
            ("tools", facts.has_tools),
            ("vision", facts.has_images),
            ("json_schema", facts.has_json_schema),
        )
        if flag
    }
    output = facts.requested_output_tokens or 0
    return all(
        (
            policy.allowed_providers is None or provider in policy.allowed_providers,
            policy.allowed_regions is None or config.region in policy.allowed_regions,
            policy.required_tags <= set(config.tags),
            config.capabilities is None or needs <= set(config.capabilities),
            config.max_output_tokens is None or output <= config.max_output_tokens,
            config.context_window is None or facts.prompt_tokens + output <= config.context_window,
        )
    )


@settings(max_examples=200, deadline=None)
@given(
    deployments=st.lists(deployment_configs, min_size=1, max_size=6),
    facts=requests,
    seen=observations,
    seed=st.integers(0, 2**32),
)
def test_cheapest_picks_a_minimum_cost_candidate(
    deployments: list[DeploymentConfig], facts: RequestFacts, seen: list[tuple[int, float]], seed: int
) -> None:
    router = build(deployments, "cheapest", seen, seed)
    try:
        plan = router.plan(facts, RequestContext(), now=NOW)
    except NoDeploymentAvailable:
        return
    inputs = Inputs(alias=router.models["m"], facts=facts, stats=router.stats, now=NOW, rng=random.Random(0))
    costs = [inputs.cost(d) for d in plan.deployments]
    assert costs[0] == min(costs)
    assert costs == sorted(costs)


@settings(max_examples=200, deadline=None)
@given(
    deployments=st.lists(deployment_configs, min_size=2, max_size=6),
    facts=requests,
    seen=observations,
    seed=st.integers(0, 2**32),
)
def test_latency_slo_never_picks_a_violator_while_a_compliant_deployment_exists(
    deployments: list[DeploymentConfig], facts: RequestFacts, seen: list[tuple[int, float]], seed: int
) -> None:
    router = build(deployments, "latency-slo", seen, seed)
    try:
        plan = router.plan(facts, RequestContext(), now=NOW)
    except NoDeploymentAvailable:
        return
    inputs = Inputs(alias=router.models["m"], facts=facts, stats=router.stats, now=NOW, rng=random.Random(0))

    def verdict(deployment: Any) -> str:
        p95 = inputs.ttft_p95(deployment)
        if p95 is None or router.stats.get(deployment.key).observations < MIN_OBSERVATIONS:
            return "unknown"
        return "meets" if p95 <= 0.8 else "misses"

    verdicts = [verdict(d) for d in plan.deployments]
    if "meets" in verdicts:
        assert verdicts[0] != "misses"
        if verdicts[0] == "meets":  # not exploring: then it is the cheapest of the compliant ones
            compliant = [inputs.cost(d) for d, v in zip(plan.deployments, verdicts, strict=True) if v == "meets"]
            assert inputs.cost(plan.deployments[0]) == min(compliant)


def test_weighted_converges_to_its_weights() -> None:
    weights = [1.0, 3.0, 6.0]
    deployments = [DeploymentConfig(provider="p1", model=f"m{i}", weight=w) for i, w in enumerate(weights)]
    router = build(deployments, "weighted", [], seed=7)
    picks = Counter(router.plan(RequestFacts(model="m"), now=NOW).deployments[0].model for _ in range(20_000))
    for i, weight in enumerate(weights):
        assert abs(picks[f"m{i}"] / 20_000 - weight / sum(weights)) < 0.015


def test_unknown_deployments_are_explored_at_the_configured_share() -> None:
    deployments = [DeploymentConfig(provider="p1", model="known"), DeploymentConfig(provider="p1", model="new")]
    router = build(deployments, "fastest", [(40, 0.2), (0, 0.0)], seed=3, explore=0.1)
    firsts = Counter(router.plan(RequestFacts(model="m"), now=NOW).deployments[0].model for _ in range(10_000))
    assert abs(firsts["new"] / 10_000 - 0.1) < 0.015
