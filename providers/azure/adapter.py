"""The `azure` adapter: Azure OpenAI speaks OpenAI's wire format with Azure's URLs, auth and filters.

Differences handled here: deployment-based URLs with `api-version` (or the newer /openai/v1/ API);
`api-key` or Entra ID bearer auth; a first stream chunk with no choices and an empty id (content-filter
results for the prompt), which passes through untouched. Content-filter outcomes need no code here:
`finish_reason: content_filter` is OpenAI's own, and filter errors (`code: content_filter`,
`innererror.code: ResponsibleAIPolicyViolation`) map to the content_filter kind in the shared mapping.
"""

from __future__ import annotations

from typing import Any, Literal

import httpx

from providers.azure.config import AzureOpenAIConfig
from providers.azure.entra import EntraTokenError, EntraTokenSource
from providers.errors import ErrorKind
from providers.openai_compatible import OpenAICompatibleAdapter


class AzureOpenAIAdapter(OpenAICompatibleAdapter):
    provider_type = "azure"
    config_model = AzureOpenAIConfig
    upstream = "Azure OpenAI"
    config: AzureOpenAIConfig

    def __init__(self, name: str, config: AzureOpenAIConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._endpoint = config.endpoint.rstrip("/")
        self._headers.pop("authorization", None)
        if config.api_key is not None:
            self._headers["api-key"] = config.api_key.get_secret_value()
        self._entra = EntraTokenSource(config.entra, http) if config.entra is not None else None
        if config.entra is not None:
            self._secrets.append(config.entra.client_secret.get_secret_value())

    def url(self, operation: Literal["chat/completions", "embeddings"], model: str) -> str:
        if self.config.api_style == "v1":
            return f"{self._endpoint}/openai/v1/{operation}"
        return f"{self._endpoint}/openai/deployments/{model}/{operation}?api-version={self.config.api_version}"

    async def request_headers(self) -> dict[str, str]:
        if self._entra is None:
            return self._headers
        try:
            token = await self._entra.token()
        except EntraTokenError as exc:
            raise self.error(
                ErrorKind.AUTH, f"could not get an Entra ID token for provider '{self.name}': {exc}"
            ) from None
        return {**self._headers, "authorization": f"Bearer {token}"}

    async def refresh_credentials(self) -> bool:
        if self._entra is None:
            return False  # a wrong API key stays wrong
        self._entra.invalidate()  # a token revoked or expired early: fetch a new one, once
        return True

    def keep_chunk(self, chunk: dict[str, Any]) -> bool:
        # Azure opens streams with a chunk carrying only the prompt's content-filter results (empty id,
        # model and object): not an OpenAI chunk, and nothing an OpenAI client can use.
        return bool(chunk.get("choices") or chunk.get("usage"))

    def normalize_completion(self, completion: dict[str, Any]) -> None:
        if not completion.get("model"):
            completion["model"] = ""  # some API versions omit it; OpenAI's schema requires the key
