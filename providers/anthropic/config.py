"""Config for `type: anthropic` providers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from providers.base import ProviderConfigBase


class AnthropicConfig(ProviderConfigBase):
    type: Literal["anthropic"]
    api_key: SecretStr
    base_url: str = Field(default="https://api.anthropic.com", description="Override for proxies and tests.")
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(
        default=4096, ge=1, description="Anthropic requires max_tokens; used when the client sets none."
    )
    json_mode: Literal["tool", "native", "prompt"] = Field(
        default="tool",
        description=(
            "How response_format is honoured. tool: a forced tool whose input schema is the wanted schema "
            "(every tool-capable Claude); native: output_config.format (Claude 4.5 and later); prompt: an "
            "instruction in the system prompt."
        ),
    )
    headers: dict[str, str] = Field(default_factory=dict, description="e.g. anthropic-beta flags.")
