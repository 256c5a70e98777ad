"""What the router knows about a request: who sent it (context) and what it asks for (facts).

The tenancy work fills `RequestContext` from the tenant's key and config; until then the edge builds an
unrestricted one, and tests construct it directly. `RequestFacts` is derived from the request body
once; its prompt-token count is computed only if a rule, filter or strategy needs it, and each message
is tokenized at most once per process (a conversation resends the same history on every turn).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.schema import ChatCompletionRequest, ImagePart, JSONSchemaFormat, UserMessage
from providers.tokens import count_messages, count_text


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What a tenant's contract allows. None means no restriction."""

    allowed_regions: frozenset[str] | None = None
    allowed_providers: frozenset[str] | None = None
    required_tags: frozenset[str] = frozenset()
    allow_route_header: bool = False


UNRESTRICTED = TenantPolicy()


@dataclass(frozen=True, slots=True)
class RequestContext:
    tenant: str | None = None
    team: str | None = None
    feature: str | None = None
    policy: TenantPolicy = UNRESTRICTED
    route_override: str | None = None  # an alias asked for by header; honoured only if the policy allows it


_token_cache: dict[bytes, int] = {}
_TOKEN_CACHE_SIZE = 8192


def _cached_tokens(value: Any, count: Any) -> int:
    """Tokens of a message (or tool list), counted once per process. Keyed by a 16-byte digest, not by
    the content, so the cache's memory stays small whatever clients send."""
    serialized = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    key = hashlib.blake2b(serialized, digest_size=16).digest()
    cached = _token_cache.get(key)
    if cached is None:
        if len(_token_cache) >= _TOKEN_CACHE_SIZE:
            _token_cache.pop(next(iter(_token_cache)))  # oldest first: dicts keep insertion order
        cached = _token_cache[key] = count(value)
    return cached


def _message_tokens(message: dict[str, Any]) -> int:
    return count_messages([message]) - count_messages([])


def _tool_tokens(tools: list[Any]) -> int:
    return count_text(orjson.dumps(tools).decode())


@dataclass(slots=True)
class RequestFacts:
    model: str
    mode: str = "chat"
    has_tools: bool = False
    has_images: bool = False
    has_json_schema: bool = False
    requested_output_tokens: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[Any] | None = None
    response_schema: dict[str, Any] | None = None
    _prompt_tokens: int | None = None

    @classmethod
    def of_chat(cls, params: ChatCompletionRequest, body: dict[str, Any]) -> RequestFacts:
        return cls(
            model=params.model,
            has_tools=bool(params.tools),
            has_images=any(
                isinstance(message, UserMessage)
                and not isinstance(message.content, str)
                and any(isinstance(part, ImagePart) for part in message.content)
                for message in params.messages
            ),
            has_json_schema=isinstance(params.response_format, JSONSchemaFormat),
            requested_output_tokens=params.output_token_limit,
            messages=body["messages"],
            tools=body.get("tools"),
            response_schema=body.get("response_format")
            if isinstance(params.response_format, JSONSchemaFormat)
            else None,
        )

    @property
    def prompt_tokens(self) -> int:
        """Prompt tokens as the provider will bill them: messages, plus tool definitions and a JSON schema,
        which are part of the prompt too."""
        if self._prompt_tokens is None:
            total = count_messages([]) + sum(_cached_tokens(message, _message_tokens) for message in self.messages)
            extras = [value for value in (self.tools, self.response_schema) if value]
            total += sum(_cached_tokens(value, _tool_tokens) for value in extras)
            self._prompt_tokens = total
        return self._prompt_tokens

    @prompt_tokens.setter
    def prompt_tokens(self, value: int) -> None:
        self._prompt_tokens = value

    def needed_capabilities(self) -> set[str]:
        needed = set()
        if self.has_tools:
            needed.add("tools")
        if self.has_images:
            needed.add("vision")
        if self.has_json_schema:
            needed.add("json_schema")
        if self.mode == "embeddings":
            needed.add("embeddings")
        return needed
