"""Provider types by name: the `type:` values the config accepts and the adapter class for each.

Adding a provider means writing its module and adding one line here; nothing above `providers/`
changes.
"""

from __future__ import annotations

import functools
import operator
from typing import Annotated

from pydantic import Field

from providers.anthropic import AnthropicAdapter
from providers.azure import AzureOpenAIAdapter
from providers.base import ProviderAdapter
from providers.bedrock import BedrockAdapter
from providers.mock import MockAdapter
from providers.openai_compatible import OpenAICompatibleAdapter
from providers.replicate import ReplicateAdapter
from providers.together import TogetherAdapter
from providers.vertex import VertexAdapter

ADAPTERS: dict[str, type[ProviderAdapter]] = {
    adapter.provider_type: adapter
    for adapter in (
        MockAdapter,
        OpenAICompatibleAdapter,
        BedrockAdapter,
        VertexAdapter,
        AzureOpenAIAdapter,
        TogetherAdapter,
        AnthropicAdapter,
        ReplicateAdapter,
    )
}

#: The `providers.<name>` entry of the config: one model per type, chosen by its `type` field.
ProviderConfig = Annotated[
    functools.reduce(operator.or_, (adapter.config_model for adapter in ADAPTERS.values())),  # type: ignore[valid-type]
    Field(discriminator="type"),
]
