"""Provider types by name: the `type:` values the config accepts and the adapter class for each.

Adding a provider means writing its module and adding one line here; nothing above `providers/`
changes.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from providers.base import ProviderAdapter
from providers.bedrock import BedrockAdapter, BedrockConfig
from providers.mock import MockAdapter, MockProviderConfig
from providers.openai_compatible import OpenAICompatibleAdapter, OpenAICompatibleConfig
from providers.vertex import VertexAdapter, VertexConfig

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    adapter.provider_type: adapter for adapter in (MockAdapter, OpenAICompatibleAdapter, BedrockAdapter, VertexAdapter)
}

#: The `providers.<name>` entry of the config: one model per type, chosen by its `type` field.
ProviderConfig = Annotated[
    MockProviderConfig | OpenAICompatibleConfig | BedrockConfig | VertexConfig, Field(discriminator="type")
]
