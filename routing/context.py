"""What the router knows about a request: who sent it (context) and what it asks for (facts).

The tenancy work fills `RequestContext` from the tenant's key and config; until then the edge builds an
unrestricted one, and tests construct it directly. `RequestFacts` is derived from the request body
once; its prompt-token count is computed only if a rule, filter or strategy needs it, and each message
is tokenized at most once per process (a conversation resends the same history on every turn).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import orjson

from providers.schema import ChatCompletionRequest, ImagePart, JSONSchemaFormat, UserMessage
from providers.tokens import count_messages


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


@functools.lru_cache(maxsize=8192)
def _message_tokens(message_json: bytes) -> int:
    return count_messages([orjson.loads(message_json)]) - count_messages([])


@dataclass(slots=True)
class RequestFacts:
    model: str
    mode: str = "chat"
    has_tools: bool = False
    has_images: bool = False
    has_json_schema: bool = False
    requested_output_tokens: int | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)
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
        )

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            self._prompt_tokens = count_messages([]) + sum(
                _message_tokens(orjson.dumps(message, option=orjson.OPT_SORT_KEYS)) for message in self.messages
            )
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
