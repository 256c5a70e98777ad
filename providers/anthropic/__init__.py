"""Anthropic: the Messages API (content blocks, tools, typed SSE streaming, prompt-cache usage)."""

from providers.anthropic.adapter import AnthropicAdapter
from providers.anthropic.config import AnthropicConfig

__all__ = ["AnthropicAdapter", "AnthropicConfig"]
