"""Config for `type: replicate` providers."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr

from providers.base import ProviderConfigBase


class ReplicateConfig(ProviderConfigBase):
    """Replicate predictions for language models. A deployment's `model` is one of:
    `owner/name` (an official model), `owner/name:<version>` (a community model version) or
    `deployments/owner/name` (a Replicate deployment)."""

    type: Literal["replicate"]
    api_token: SecretStr
    base_url: str = Field(default="https://api.replicate.com", description="Override for proxies and tests.")
    prompt_template: Literal["llama3", "mistral", "chatml"] = Field(
        default="llama3", description="How chat messages are rendered into the model's single prompt."
    )
    max_tokens_input: str = Field(default="max_tokens", description="Older models call it max_new_tokens.")
    wait_s: int = Field(default=5, ge=1, le=60, description="Prefer: wait=N when creating a prediction.")
    poll_interval_s: float = Field(default=0.25, gt=0, description="First poll delay; doubles up to 2 s.")
