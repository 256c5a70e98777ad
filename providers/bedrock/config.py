"""Config for `type: bedrock` providers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from providers.base import ProviderConfigBase


class BedrockConfig(ProviderConfigBase):
    """AWS Bedrock Runtime (Converse, ConverseStream, InvokeModel for embeddings).

    Credentials: the keys below when given; otherwise the standard AWS chain (environment, shared
    config and credentials files with `profile`, web identity, ECS and EC2 instance roles).
    """

    type: Literal["bedrock"]
    region: str = Field(pattern=r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$", description="e.g. us-east-1")
    endpoint_url: str | None = Field(
        default=None,
        description="Override https://bedrock-runtime.{region}.amazonaws.com (VPC endpoints, proxies, tests).",
    )
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    profile: str | None = Field(default=None, description="A profile of the shared AWS config files.")
    json_mode: Literal["tool", "native", "prompt"] = Field(
        default="tool",
        description=(
            "How response_format is honoured. tool: a forced tool whose input schema is the wanted schema "
            "(Claude, Nova, Llama 3.1+, Mistral Large); native: Converse outputConfig.textFormat (newer "
            "models only); prompt: an instruction in the system prompt (any model, not guaranteed)."
        ),
    )
