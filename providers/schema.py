"""The canonical format: OpenAI's chat-completion and embedding shapes.

Requests are validated once at the edge with the pydantic models below (strict: wrong JSON types are
rejected, not coerced; unknown fields are kept, because OpenAI adds fields faster than any gateway and
OpenAI-compatible upstreams should receive them). Responses and stream chunks travel as plain dicts in
OpenAI's wire shape: building a pydantic object for every streamed chunk would cost more than the rest of
the hot path, and the edge serializes dicts straight to JSON.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

_STRICT_OPEN = ConfigDict(strict=True, extra="allow")

_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"


class _Open(BaseModel):
    model_config = _STRICT_OPEN


# --- content parts -----------------------------------------------------------------------------------


class TextPart(_Open):
    type: Literal["text"]
    text: str


class ImageURL(_Open):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Open):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Open):
    data: str
    format: str


class AudioPart(_Open):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Open):
    type: Literal["file"]
    file: dict[str, Any]


class RefusalPart(_Open):
    type: Literal["refusal"]
    refusal: str


UserPart = Annotated[TextPart | ImagePart | AudioPart | FilePart, Field(discriminator="type")]
AssistantPart = Annotated[TextPart | RefusalPart, Field(discriminator="type")]


# --- messages ----------------------------------------------------------------------------------------


class SystemMessage(_Open):
    role: Literal["system"]
    content: str | list[TextPart]
    name: str | None = None


class DeveloperMessage(_Open):
    role: Literal["developer"]
    content: str | list[TextPart]
    name: str | None = None


class UserMessage(_Open):
    role: Literal["user"]
    content: str | list[UserPart]
    name: str | None = None


class FunctionCall(_Open):
    name: str
    arguments: str  # a JSON document, as a string, exactly as OpenAI sends it


class ToolCall(_Open):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class CustomToolCall(_Open):
    id: str
    type: Literal["custom"]
    custom: dict[str, Any]


def _tool_call_kind(value: Any) -> str:
    # OpenAI requires `type`, but some clients leave it out on function calls: default, don't reject.
    kind = value.get("type", "function") if isinstance(value, dict) else getattr(value, "type", "function")
    return kind if kind in ("function", "custom") else "function"


AnyToolCall = Annotated[
    Annotated[ToolCall, Tag("function")] | Annotated[CustomToolCall, Tag("custom")], Discriminator(_tool_call_kind)
]


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | list[AssistantPart] | None = None
    refusal: str | None = None
    name: str | None = None
    tool_calls: list[AnyToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(_Open):
    role: Literal["tool"]
    content: str | list[TextPart]
    tool_call_id: str


class FunctionMessage(_Open):
    role: Literal["function"]
    content: str | None
    name: str


Message = Annotated[
    SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage,
    Field(discriminator="role"),
]


# --- tools and output formats ------------------------------------------------------------------------


class FunctionDefinition(_Open):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(_Open):
    type: Literal["function"]
    function: FunctionDefinition


class CustomTool(_Open):
    type: Literal["custom"]
    custom: dict[str, Any]


Tool = Annotated[FunctionTool | CustomTool, Field(discriminator="type")]


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice | dict[str, Any]


class TextFormat(_Open):
    type: Literal["text"]


class JSONObjectFormat(_Open):
    type: Literal["json_object"]


class JSONSchemaSpec(_Open):
    name: str = Field(pattern=_NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JSONSchemaFormat(_Open):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormat = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class StreamOptions(_Open):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# --- requests ----------------------------------------------------------------------------------------


class ChatCompletionRequest(_Open):
    """`CreateChatCompletionRequest`: the typed view of the fields the gateway and adapters act on."""

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    seed: int | None = None
    stop: str | list[str] | None = Field(default=None)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    service_tier: str | None = None
    reasoning_effort: str | None = None

    @property
    def output_token_limit(self) -> int | None:
        """The requested output cap; `max_completion_tokens` supersedes the deprecated `max_tokens`."""
        return self.max_completion_tokens or self.max_tokens

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def wants_usage_chunk(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Open):
    """`CreateEmbeddingRequest`."""

    model: str
    input: EmbeddingInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    def inputs(self) -> list[str] | list[list[int]]:
        """The input as a list of items (texts or token arrays), one embedding each."""
        value = self.input
        if isinstance(value, str):
            return [value]
        if value and isinstance(value[0], int):
            return [value]  # type: ignore[list-item]  # a single token array
        return value  # type: ignore[return-value]


@dataclass(slots=True)
class ChatRequest:
    """One chat request as it travels to an adapter.

    `body` is the client's JSON exactly as received (OpenAI-compatible adapters forward it with only
    `model` replaced, so fields the gateway does not model still reach the upstream); `params` is the
    validated, typed view that adapters for other wire formats translate from.
    """

    body: dict[str, Any]
    params: ChatCompletionRequest
    facts: CallFacts = field(default_factory=lambda: CallFacts())


@dataclass(slots=True)
class CallFacts:
    """What an adapter learnt about one call beyond the answer itself, for the edge, accounting and stats.

    Providers billed by compute time (Replicate) report seconds of compute and whether the call waited
    for a cold start: the main latency risk of scale-to-zero endpoints.
    """

    predict_time_s: float | None = None  # compute seconds billed
    queue_time_s: float | None = None  # waiting to start (cold boot or queue)
    cold_start: bool | None = None
    usage_estimated: bool = False  # the usage was counted with tiktoken: the provider reported none

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.cold_start is not None:
            headers["x-gateway-cold-start"] = "true" if self.cold_start else "false"
        if self.queue_time_s is not None:
            headers["x-gateway-queue-time"] = f"{self.queue_time_s:.3f}"
        if self.predict_time_s is not None:
            headers["x-gateway-predict-time"] = f"{self.predict_time_s:.3f}"
        return headers


@dataclass(slots=True)
class EmbedRequest:
    body: dict[str, Any]
    params: EmbeddingRequest


@dataclass(slots=True)
class StreamChunk:
    """One `chat.completion.chunk`.

    `raw` holds the upstream's own JSON bytes when the chunk passes through unchanged, so the edge can
    write them without re-encoding; it is None for chunks an adapter built itself.
    """

    data: dict[str, Any]
    raw: bytes | None = None


@dataclass(slots=True)
class ChunkFactory:
    """Builds the `chat.completion.chunk`s of one streamed answer: same id, created and model on every
    chunk, as OpenAI's clients expect. Used by every adapter that translates a non-OpenAI stream."""

    completion_id: str
    created: int
    model: str
    system_fingerprint: str | None = None

    def choices(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> StreamChunk:
        data: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.system_fingerprint is not None:
            data["system_fingerprint"] = self.system_fingerprint
        if usage is not None:
            data["usage"] = usage.to_openai()
        return StreamChunk(data)

    def delta(
        self, delta: dict[str, Any], *, index: int = 0, finish: str | None = None, logprobs: Any = None
    ) -> StreamChunk:
        return self.choices([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}])

    def usage(self, usage: Usage) -> StreamChunk:
        """The final usage-only chunk (`choices: []`), sent whatever the client asked; the edge drops it
        for clients that did not ask for it."""
        return self.choices([], usage=usage)


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens read from the provider's prompt cache (part of prompt_tokens)
    cache_write_tokens: int = 0  # prompt tokens written to it (part of prompt_tokens)
    reasoning_tokens: int = 0
    estimated: bool = False  # counted by us (tiktoken), not reported by the provider
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        prompt_details: dict[str, int] = {"cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            prompt_details["cache_write_tokens"] = self.cache_write_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    @classmethod
    def from_openai(cls, usage: dict[str, Any] | None) -> Usage | None:
        if not usage:
            return None
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        prompt_details = prompt_details if isinstance(prompt_details, dict) else {}
        completion_details = completion_details if isinstance(completion_details, dict) else {}
        return cls(
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            cached_tokens=_count(prompt_details.get("cached_tokens")),
            reasoning_tokens=_count(completion_details.get("reasoning_tokens")),
        )


def _count(value: object) -> int:
    """A token count an upstream reported; anything that is not a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def now_s() -> int:
    return int(time.time())


def encode_embedding(vector: list[float], encoding_format: str | None) -> list[float] | str:
    """OpenAI's base64 format is the little-endian float32 bytes of the vector, base64-encoded."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
