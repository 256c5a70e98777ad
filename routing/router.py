"""Turns a requested model name into the ordered deployments that may serve it.

The router is a pure lookup over the loaded config: no I/O, so the same code can serve traffic and
explain a decision.
"""

from __future__ import annotations

from dataclasses import dataclass

from providers.base import ProviderAdapter
from routing.config import DEFAULT_TIMEOUTS, DeploymentConfig, ModelAliasConfig, Timeouts


@dataclass(frozen=True, slots=True)
class Deployment:
    """A deployment ready to call: its config, the adapter of its provider and its resolved limits."""

    alias: str
    provider: str
    model: str
    adapter: ProviderAdapter
    timeouts: Timeouts
    config: DeploymentConfig


class UnknownModel(LookupError):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model


class WrongModelMode(ValueError):
    def __init__(self, model: str, mode: str) -> None:
        super().__init__(model)
        self.model = model
        self.mode = mode


class Router:
    def __init__(
        self,
        models: dict[str, ModelAliasConfig],
        adapters: dict[str, ProviderAdapter],
        default_timeouts: Timeouts = DEFAULT_TIMEOUTS,
    ) -> None:
        self.models = models
        self._plans: dict[str, tuple[Deployment, ...]] = {}
        for alias, model in models.items():
            alias_timeouts = (model.timeouts or Timeouts()).over(default_timeouts)
            self._plans[alias] = tuple(
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

    def plan(self, model: str, mode: str) -> tuple[Deployment, ...]:
        """Deployments for `model`, best first. Raises UnknownModel or WrongModelMode."""
        plan = self._plans.get(model)
        if plan is None:
            raise UnknownModel(model)
        if self.models[model].mode != mode:
            raise WrongModelMode(model, self.models[model].mode)
        return plan
