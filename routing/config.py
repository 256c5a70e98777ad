"""The routing part of the config: public model names (aliases) and the deployments behind them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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


class DeploymentConfig(_Strict):
    """One place a model alias can be served: a provider connection and that provider's model id."""

    provider: str = Field(description="A name under `providers:`.")
    model: str = Field(description="The provider's own model id.")
    price: Price | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, gt=0)
    region: str | None = None
    tags: list[str] = Field(default_factory=list)
    timeouts: Timeouts | None = None


class ModelAliasConfig(_Strict):
    """A public model name, as apps send it in `model`."""

    mode: Literal["chat", "embeddings"] = "chat"
    description: str | None = None
    owned_by: str = "llm-gateway"
    created: int | None = Field(default=None, ge=0, description="Unix time shown in /v1/models.")
    strategy: Literal["ordered"] = "ordered"
    timeouts: Timeouts | None = None
    deployments: list[DeploymentConfig] = Field(min_length=1)
