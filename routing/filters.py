"""Hard filters: deployments a request may not use, whatever they cost or however fast they are.

Each filter says why it removed a deployment, so an operator (and `route explain`) can see which
constraint ruled out which deployment. Policy filters (tenant contract: regions, providers, compliance
tags) come first: data residency is never traded for cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from routing.context import RequestContext, RequestFacts


class CircuitView(Protocol):
    """What the resilience layer tells the router: why a deployment refuses calls right now, or None."""

    def blocked(self, key: str, now: float | None = None) -> str | None: ...


class AllClosed:
    def blocked(self, key: str, now: float | None = None) -> str | None:
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    reason: str
    policy: bool  # removed by the tenant's contract (403) rather than by what the request needs (400)
    resting: bool = False  # removed only for now (open breaker, rate-limit rest): a 503, not a 400
    too_long: bool = False  # the prompt does not fit: a longer-context fallback may serve it


def rejection(
    deployment: object, facts: RequestFacts, context: RequestContext, circuits: CircuitView
) -> Verdict | None:
    """Why `deployment` cannot serve this request, or None when it can."""
    config = deployment.config  # type: ignore[attr-defined]
    policy = context.policy
    if policy.allowed_providers is not None and deployment.provider not in policy.allowed_providers:  # type: ignore[attr-defined]
        allowed = ", ".join(sorted(policy.allowed_providers)) or "none"
        return Verdict(f"provider '{deployment.provider}' is not allowed for this tenant (allowed: {allowed})", True)  # type: ignore[attr-defined]
    if policy.allowed_regions is not None and config.region not in policy.allowed_regions:
        allowed = ", ".join(sorted(policy.allowed_regions)) or "none"
        return Verdict(f"region '{config.region or 'unknown'}' is outside this tenant's regions ({allowed})", True)
    missing_tags = policy.required_tags - set(config.tags)
    if missing_tags:
        return Verdict(f"lacks compliance tags this tenant requires: {', '.join(sorted(missing_tags))}", True)
    if config.capabilities is not None:
        missing = facts.needed_capabilities() - set(config.capabilities)
        if missing:
            return Verdict(f"cannot do what the request needs: {', '.join(sorted(missing))}", False)
    output = facts.requested_output_tokens
    if output is not None and config.max_output_tokens is not None and output > config.max_output_tokens:
        return Verdict(
            f"the request asks for {output} output tokens; the deployment's maximum is {config.max_output_tokens}",
            False,
        )
    if config.context_window is not None:
        needed = facts.prompt_tokens + (output or 0)
        if needed > config.context_window:
            return Verdict(
                f"needs {needed} tokens (prompt {facts.prompt_tokens} + output {output or 0}); the "
                f"context window is {config.context_window}",
                False,
                too_long=True,
            )
    blocked = circuits.blocked(deployment.key)  # type: ignore[attr-defined]
    if blocked is not None:
        return Verdict(blocked, False, resting=True)
    return None
