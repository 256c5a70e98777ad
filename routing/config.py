"""The routing part of the config: public model names (aliases) and the deployments behind them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Timeouts(_Strict):
    """Time limits for upstream calls, in seconds. Unset fields inherit from the level above
    (deployment → model alias → `server.timeouts`)."""

    connect_s: float | None = Field(default=None, gt=0)
    first_token_s: float | None = Field(
        default=None,
        gt=0,
        description="Streams: until the first chunk. A non-streamed answer arrives whole, so only total_s bounds it.",
    )
    idle_s: float | None = Field(default=None, gt=0, description="Longest gap between two streamed chunks.")
    total_s: float | None = Field(default=None, gt=0, description="Whole call, last chunk included.")

    def over(self, base: Timeouts) -> Timeouts:
        """These limits, with unset fields taken from `base`."""
        return Timeouts(**{**base.model_dump(), **self.model_dump(exclude_none=True)})


DEFAULT_TIMEOUTS = Timeouts(connect_s=5.0, first_token_s=60.0, idle_s=60.0, total_s=600.0)


class Price(_Strict):
    input_per_mtok: float = Field(default=0.0, ge=0, description="USD per million prompt tokens.")
    output_per_mtok: float = Field(default=0.0, ge=0, description="USD per million completion tokens.")
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    per_second: float | None = Field(
        default=None, ge=0, description="USD per compute second, for endpoints billed by time (Replicate)."
    )


Capability = Literal["tools", "vision", "json_schema", "embeddings"]


class DeploymentConfig(_Strict):
    """One place a model alias can be served: a provider connection and that provider's model id."""

    provider: str = Field(description="A name under `providers:`.")
    model: str = Field(description="The provider's own model id.")
    price: Price | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    capabilities: list[Capability] | None = Field(
        default=None, description="What the deployment can do; unset means it is not filtered on capabilities."
    )
    region: str | None = Field(default=None, description="Where the data is processed, for residency policy.")
    tags: list[str] = Field(default_factory=list, description="Compliance tags, e.g. zero-retention, hipaa.")
    weight: float = Field(default=1.0, ge=0, description="Share of traffic under the weighted strategy.")
    scales_to_zero: bool = False
    idle_timeout_s: float = Field(default=300.0, gt=0, description="Idle longer than this: assumed cold.")
    cold_start_s: float = Field(default=30.0, ge=0, description="Cold-start penalty until one is measured.")
    keep_warm_interval_s: float | None = Field(
        default=None, gt=0, description="Ping a scale-to-zero deployment this often to keep it warm (off by default)."
    )
    prefill: bool | None = Field(
        default=None,
        description="Continues a final assistant message (used to resume a cut stream); unset: the provider's default.",
    )
    timeouts: Timeouts | None = None


class RetryPolicy(_Strict):
    """Retries of one deployment, before the executor moves on to the next candidate."""

    attempts_per_deployment: int = Field(default=2, ge=1, le=10, description="Tries on one deployment; 1: no retry.")
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries across all deployments and fallbacks.")
    backoff_base_ms: float = Field(default=100.0, gt=0, description="Full-jitter exponential backoff starts here.")
    backoff_max_ms: float = Field(default=2000.0, gt=0)
    max_retry_after_s: float = Field(
        default=5.0, ge=0, description="A longer retry-after sends the request elsewhere instead of waiting."
    )


class RetryBudget(_Strict):
    """Retries and hedges a deployment may receive, as a share of its recent first attempts."""

    ratio: float = Field(default=0.2, ge=0, le=10)
    window_s: float = Field(default=10.0, gt=0)
    min_per_window: int = Field(default=3, ge=0, description="Always allowed, so quiet deployments can retry.")


class CircuitBreakerPolicy(_Strict):
    enabled: bool = Field(default=True, description="Off: deployments are never rested, not even after a 429.")
    consecutive_failures: int = Field(default=5, ge=1)
    error_rate: float = Field(default=0.5, gt=0, le=1, description="Opens when this share of calls fails...")
    min_calls: int = Field(default=20, ge=1, description="...among at least this many calls...")
    window_s: float = Field(default=30.0, gt=0, description="...in this sliding window.")
    cooldown_s: float = Field(default=10.0, gt=0, description="Open this long before half-open probes.")
    max_cooldown_s: float = Field(default=120.0, gt=0, description="Cooldown doubles on each failed probe, up to this.")
    half_open_probes: int = Field(default=1, ge=1, description="Calls let through at once while half-open.")
    max_rate_limit_cooldown_s: float = Field(
        default=60.0, gt=0, description="A 429 rests the deployment for its retry-after, at most this long."
    )


class Resilience(_Strict):
    """Defaults for every alias (`server.resilience`); an alias may override `retry`."""

    retry: RetryPolicy = RetryPolicy()
    retry_budget: RetryBudget = RetryBudget()
    circuit_breaker: CircuitBreakerPolicy = CircuitBreakerPolicy()
    stream_continuations: int = Field(
        default=2, ge=0, le=5, description="Times one stream may be continued elsewhere after dying mid-answer."
    )


class Hedge(_Strict):
    """Start the next candidate when the first has not produced a token in time; the first token wins."""

    after_ms: float | None = Field(
        default=None, gt=0, description="Unset: the deployment's observed p95 time to first token."
    )
    min_after_ms: float = Field(default=100.0, ge=0, description="Never hedge sooner than this.")


class Fallbacks(_Strict):
    """Aliases to try, in order, when every deployment of this alias failed, chosen by the last error's kind."""

    default: list[str] = Field(default_factory=list, description="For outages, rate limits, timeouts, 5xx.")
    context_window: list[str] | None = Field(default=None, description="Longer-context aliases; unset: `default`.")
    content_filter: list[str] = Field(default_factory=list, description="Unset: a filtered request fails.")

    def for_kind(self, kind: str) -> list[str]:
        if kind == "context_window":
            return self.default if self.context_window is None else self.context_window
        if kind == "content_filter":
            return self.content_filter
        if kind in ("invalid_request",):
            return []
        return self.default


Strategy = Literal["ordered", "weighted", "cheapest", "fastest", "least-busy", "latency-slo"]


class SLO(_Strict):
    ttft_p95_ms: float = Field(gt=0, description="Time to first token the alias promises, at the 95th percentile.")


class ModelAliasConfig(_Strict):
    """A public model name, as apps send it in `model`."""

    mode: Literal["chat", "embeddings"] = "chat"
    description: str | None = None
    owned_by: str = "llm-gateway"
    created: int | None = Field(default=None, ge=0, description="Unix time shown in /v1/models.")
    strategy: Strategy = "ordered"
    slo: SLO | None = Field(default=None, description="Required by the latency-slo strategy.")
    explore_share: float = Field(
        default=0.05, ge=0, le=0.5, description="Share of traffic sent to deployments with too few observations."
    )
    timeouts: Timeouts | None = None
    retry: RetryPolicy | None = Field(default=None, description="Overrides `server.resilience.retry`.")
    fallbacks: Fallbacks = Fallbacks()
    hedge: Hedge | None = Field(default=None, description="Opt-in: race a second candidate against a slow first.")
    deployments: list[DeploymentConfig] = Field(min_length=1)

    @field_validator("fallbacks", mode="before")
    @classmethod
    def _list_means_default(cls, value: object) -> object:
        return {"default": value} if isinstance(value, list) else value

    @model_validator(mode="after")
    def _slo_when_needed(self) -> ModelAliasConfig:
        if self.strategy == "latency-slo" and self.slo is None:
            raise ValueError("the latency-slo strategy needs an slo (e.g. slo: {ttft_p95_ms: 800})")
        return self


class RouteCondition(_Strict):
    """All given conditions must hold. Lists match any of their values."""

    tenant: list[str] | None = None
    team: list[str] | None = None
    feature: list[str] | None = None
    model: list[str] | None = Field(default=None, description="The model name the client asked for.")
    prompt_tokens_gt: int | None = Field(default=None, ge=0)
    prompt_tokens_lt: int | None = Field(default=None, ge=0)
    has_tools: bool | None = None
    has_images: bool | None = None
    has_json_schema: bool | None = None

    @field_validator("tenant", "team", "feature", "model", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class RouteRule(_Strict):
    """`when` these conditions hold, serve the request with the alias `use` (first matching rule wins)."""

    when: RouteCondition
    use: str = Field(description="A name under `models:`.")
