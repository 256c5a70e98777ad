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
    timeouts: Timeouts | None = None


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
    deployments: list[DeploymentConfig] = Field(min_length=1)

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
