"""The `together` adapter: Together AI's OpenAI-compatible API, with its quirks smoothed over.

Together answers `finish_reason: "eos"` where OpenAI says "stop", and streams float `logprobs` and a
`token_id` on each chunk, which OpenAI clients do not expect; both are fixed here. Its context-window
errors come either OpenAI-style or in text-generation-inference's words; the shared mapping knows both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SecretStr

from providers.base import ProviderConfigBase
from providers.openai_compatible import OpenAICompatibleAdapter

_FINISH_REASONS = {"eos": "stop", "eos_token": "stop", "function_call": "tool_calls"}


class TogetherConfig(ProviderConfigBase):
    type: Literal["together"]
    base_url: str = Field(default="https://api.together.xyz/v1", description="Override for proxies and tests.")
    api_key: SecretStr
    headers: dict[str, str] = Field(default_factory=dict)
    stream_usage: bool = True


class TogetherAdapter(OpenAICompatibleAdapter):
    provider_type = "together"
    config_model = TogetherConfig
    upstream = "Together"

    def normalize_chunk(self, chunk: dict[str, Any]) -> bool:
        changed = False
        for choice in chunk.get("choices") or ():
            reason = choice.get("finish_reason")
            if reason in _FINISH_REASONS:
                choice["finish_reason"] = _FINISH_REASONS[reason]
                changed = True
            if "logprobs" in choice and not isinstance(choice["logprobs"], dict | None):
                choice["logprobs"] = None  # a bare float; OpenAI's shape is an object
                changed = True
            if "token_id" in choice:
                del choice["token_id"]
                changed = True
        if "token_id" in chunk:
            del chunk["token_id"]
            changed = True
        return changed

    def normalize_completion(self, completion: dict[str, Any]) -> None:
        for choice in completion.get("choices") or ():
            reason = choice.get("finish_reason")
            choice["finish_reason"] = _FINISH_REASONS.get(reason, reason)
