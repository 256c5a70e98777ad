"""Provider adapters and the canonical (OpenAI-shaped) format they translate to and from."""

from providers.base import CallOptions, ProviderAdapter
from providers.errors import ErrorKind, ProviderError
from providers.registry import ADAPTERS, ProviderConfig
from providers.schema import ChatRequest, EmbedRequest, StreamChunk, Usage

__all__ = [
    "ADAPTERS",
    "CallOptions",
    "ChatRequest",
    "EmbedRequest",
    "ErrorKind",
    "ProviderAdapter",
    "ProviderConfig",
    "ProviderError",
    "StreamChunk",
    "Usage",
]
