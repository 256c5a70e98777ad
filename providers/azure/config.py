"""Config for `type: azure` providers (Azure OpenAI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from providers.base import ProviderConfigBase


class EntraCredentials(BaseModel):
    """A Microsoft Entra ID app registration (client-credentials flow), instead of an API key."""

    model_config = ConfigDict(extra="forbid")

    tenant_id: str
    client_id: str
    client_secret: SecretStr
    authority: str = Field(default="https://login.microsoftonline.com", description="Override for sovereign clouds.")
    scope: str = "https://cognitiveservices.azure.com/.default"


class AzureOpenAIConfig(ProviderConfigBase):
    """Azure OpenAI. A deployment's `model` is the Azure deployment name.

    `api_style: deployments` calls /openai/deployments/{deployment}/...?api-version=...;
    `api_style: v1` calls the newer /openai/v1/... API, which takes no api-version.
    """

    type: Literal["azure"]
    endpoint: str = Field(description="https://{resource}.openai.azure.com (or a private endpoint).")
    api_style: Literal["deployments", "v1"] = "deployments"
    api_version: str = Field(default="2024-10-21", description="For api_style: deployments.")
    api_key: SecretStr | None = None
    entra: EntraCredentials | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    stream_usage: bool = Field(default=True, description="Needs api-version 2024-09-01-preview or later.")

    @model_validator(mode="after")
    def _one_credential(self) -> AzureOpenAIConfig:
        if (self.api_key is None) == (self.entra is None):
            raise ValueError("set exactly one of api_key or entra")
        return self
