"""Config for `type: vertex` providers."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from providers.base import ProviderConfigBase


class VertexConfig(ProviderConfigBase):
    """Google Vertex AI: Gemini chat (generateContent) and text-embedding models (predict).

    Credentials, exactly one of: `credentials_file` (a service-account JSON file), `credentials_json`
    (the same JSON inline, e.g. from a secret) or `adc: true` (Application Default Credentials:
    GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server).
    """

    type: Literal["vertex"]
    project: str = Field(min_length=1)
    location: str = Field(pattern=r"^(global|[a-z]+-[a-z]+\d+)$", description="e.g. us-central1, europe-west4, global")
    credentials_file: str | None = None
    credentials_json: SecretStr | None = None
    adc: bool = False
    endpoint_url: str | None = Field(
        default=None,
        description="Override https://{location}-aiplatform.googleapis.com (private endpoints, proxies, tests).",
    )
    api_version: Literal["v1", "v1beta1"] = "v1"
    schema_format: Literal["json_schema", "openapi"] = Field(
        default="json_schema",
        description=(
            "How tool parameters and response schemas are sent. json_schema: as given "
            "(parametersJsonSchema / responseJsonSchema, Gemini 2.5 and later); openapi: converted to "
            "Vertex's OpenAPI subset (parameters / responseSchema) for older models."
        ),
    )

    @field_validator("credentials_file")
    @classmethod
    def _file_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(f"credentials file not found: {value}")
        return value

    @model_validator(mode="after")
    def _one_credential_source(self) -> VertexConfig:
        sources = [self.credentials_file is not None, self.credentials_json is not None, self.adc]
        if sum(sources) != 1:
            raise ValueError("set exactly one of credentials_file, credentials_json or adc: true")
        return self

    @property
    def base_url(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url.rstrip("/")
        host = (
            "aiplatform.googleapis.com" if self.location == "global" else f"{self.location}-aiplatform.googleapis.com"
        )
        return f"https://{host}"
