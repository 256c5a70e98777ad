"""Everything a running gateway process holds, built from one loaded config.

Handlers read `app.state.runtime` once per request, so swapping in a new runtime (a config reload)
is one assignment: a request in flight finishes on the runtime it started with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from gateway.config import GatewayConfig, LoadedConfig
from gateway.ledger import Ledger
from gateway.limits import Limits, build_limits
from gateway.tenancy import KeyIndex
from providers.base import ProviderAdapter
from providers.http import create_http_client
from providers.registry import ADAPTERS
from providers.tokens import encoding
from routing.circuits import CircuitBreakers
from routing.executor import Executor
from routing.retry_budget import RetryBudgets
from routing.router import Router
from routing.stats import LiveStats


@dataclass
class Runtime:
    loaded: LoadedConfig
    http: httpx.AsyncClient
    adapters: dict[str, ProviderAdapter]
    router: Router
    executor: Executor
    started_at: int
    ledger: Ledger
    keys: KeyIndex
    limits: Limits
    #: The previous runtime's ledger when the ledger settings changed: handed over in `adopt_state`.
    replaced_ledger: Ledger | None = None

    @property
    def config(self) -> GatewayConfig:
        return self.loaded.config

    @classmethod
    def build(
        cls,
        loaded: LoadedConfig,
        started_at: int,
        previous: Runtime | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> Runtime:
        """A runtime for `loaded`. A reload passes the running one, whose live stats, circuit breakers
        and retry budgets carry over (a reload must not forget that a provider is down), and, when the
        HTTP client settings did not change, its client (so its warm connection pool survives too)."""
        config = loaded.config
        if http is None:
            settings = config.server.http_client
            http = create_http_client(
                max_connections=settings.max_connections,
                keepalive_expiry_s=settings.keepalive_expiry_s,
                proxy=settings.proxy.get_secret_value() if settings.proxy else None,
            )
        adapters = {name: ADAPTERS[provider.type](name, provider, http) for name, provider in config.providers.items()}
        resilience = config.server.resilience
        if previous is None:
            stats, circuits = LiveStats(), CircuitBreakers(resilience.circuit_breaker)
            budgets = RetryBudgets(resilience.retry_budget)
        else:
            stats, circuits, budgets = previous.router.stats, previous.executor.circuits, previous.executor.budgets
        router = Router(
            config.models, adapters, config.server.timeouts, routes=config.routes, stats=stats, circuits=circuits
        )
        executor = Executor(router, resilience, circuits, budgets)
        # The ledger outlives reloads that leave its settings alone: its queue and store stay as they are.
        replaced_ledger = None
        if previous is not None and previous.config.ledger == config.ledger:
            ledger = previous.ledger
        else:
            ledger = Ledger.from_settings(config.ledger)  # no I/O yet: a failed reload leaves nothing open
            replaced_ledger = previous.ledger if previous is not None else None
        keys = KeyIndex(config.tenants)
        # Budgets and rate limits live in Redis when one is configured (shared by every replica), else in
        # this process; a reload that keeps the URL keeps the connection pool (and, in memory, the counts).
        redis_url = config.state.redis_url.get_secret_value() if config.state.redis_url else None
        if previous is not None and previous.config.state.redis_url == config.state.redis_url:
            limits = previous.limits
        else:
            limits = build_limits(redis_url)
        # Load the tokenizer now, not inside the first request that needs it (it takes ~1 s), but only
        # when the config will need it: its tables cost about 80 MB of memory.
        if needs_tokenizer(config):
            encoding()
        return cls(
            loaded=loaded,
            http=http,
            adapters=adapters,
            router=router,
            executor=executor,
            started_at=started_at,
            ledger=ledger,
            keys=keys,
            limits=limits,
            replaced_ledger=replaced_ledger,
        )

    def adopt_state(self) -> None:
        """After this runtime replaced another: apply its policies to the carried-over state and forget
        deployments that are gone. Not in `build`, so a failed reload changes nothing."""
        keys = {d.key for d in self.router.all_deployments()}
        resilience = self.config.server.resilience
        self.router.stats.retain(keys)
        self.executor.circuits.reconfigure(resilience.circuit_breaker, keys)
        self.executor.budgets.reconfigure(resilience.retry_budget, keys)
        if self.replaced_ledger is not None:
            # New ledger settings: records go to the new ledger from now on, the old one flushes and closes.
            self.replaced_ledger.hand_over(self.ledger)
            self.replaced_ledger = None

    async def aclose(self, *, close_http: bool = True) -> None:
        """Close the adapters and HTTP client. Not the ledger: it may be shared with the runtime that
        replaced this one; the app's lifespan closes the last one."""
        for adapter in self.adapters.values():
            await adapter.aclose()
        if close_http:
            await self.http.aclose()

    async def readiness(self) -> dict[str, Any]:
        """Checks for /readyz: the config is loaded and every backend the config names answers."""
        checks: dict[str, Any] = {"config": {"ok": True, "source": self.loaded.source}}
        redis_url = self.config.state.redis_url
        if redis_url is not None:
            checks["redis"] = await _check_redis(redis_url.get_secret_value())
        return checks


async def _check_redis(url: str) -> dict[str, Any]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=1.0)
    try:
        async with asyncio.timeout(2.0):
            await client.ping()
        return {"ok": True}
    except (TimeoutError, OSError, redis.RedisError) as exc:
        return {"ok": False, "error": type(exc).__name__}  # never the URL: it may hold a password
    finally:
        await client.aclose()


def needs_tokenizer(config: GatewayConfig) -> bool:
    """Whether requests will count tokens: the mock generates with it; prompt sizes feed route rules,
    context-window filters, cost-ranked strategies and tenant budgets. Otherwise it loads only if a
    provider ever reports no usage (then that one request waits for it)."""
    if any(provider.type == "mock" for provider in config.providers.values()) or config.tenants:
        return True
    if any(rule.when.prompt_tokens_gt is not None or rule.when.prompt_tokens_lt is not None for rule in config.routes):
        return True
    for alias in config.models.values():
        if alias.strategy in ("cheapest", "latency-slo"):
            return True
        if any(deployment.context_window is not None for deployment in alias.deployments):
            return True
    return False
