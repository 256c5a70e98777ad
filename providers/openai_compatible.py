"""Adapter for any OpenAI-compatible upstream: OpenAI, Groq, Mistral's compatible API, vLLM, Ollama,
LM Studio... and the base of the Azure OpenAI and Together adapters, which differ only at the edges
(URLs, auth, a few response quirks) and override the hooks marked below.

The client's JSON is forwarded with only `model` replaced, and streamed chunks are passed through as
the upstream's own bytes: the gateway parses each chunk once (to see usage, finish reasons and errors)
but re-encodes only the chunks a hook changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import Field, SecretStr

from providers.base import CallOptions, ProviderAdapter, ProviderConfigBase
from providers.errors import ErrorKind, ProviderError, kind_for_status
from providers.http import UpstreamClient, UpstreamResponse, parse_retry_after
from providers.schema import ChatRequest, ChunkFactory, EmbedRequest, StreamChunk
from providers.sse import iter_sse_events
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import estimate_usage, ready


class OpenAICompatibleConfig(ProviderConfigBase):
    type: Literal["openai"]
    base_url: str = Field(
        default="https://api.openai.com/v1",
        description="The API root that `/chat/completions` hangs off, e.g. http://vllm:8000/v1.",
    )
    api_key: SecretStr | None = None
    organization: str | None = None
    project: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="Extra headers sent on every call.")
    stream_usage: bool = Field(
        default=True,
        description="Ask for the final usage chunk (stream_options.include_usage). Turn off for old "
        "servers that reject stream_options; usage is then counted with tiktoken and marked estimated.",
    )


CONTEXT_WINDOW_HINTS = (
    "context length",
    "context_length",
    "maximum context",
    "too many tokens",
    "prompt is too long",
    "`inputs` tokens + `max_new_tokens`",  # text-generation-inference, behind Together and others
)
CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"}


class OpenAICompatibleAdapter(ProviderAdapter):
    provider_type = "openai"
    config_model = OpenAICompatibleConfig
    supports_embeddings = True
    upstream = "upstream"  # how messages name the other side

    http: UpstreamClient  # its direct path (`post_direct`) carries these adapters' calls

    def __init__(self, name: str, config: Any, http: UpstreamClient) -> None:
        super().__init__(name, config, http)
        self._base_url = str(getattr(config, "base_url", "")).rstrip("/")
        headers = {"content-type": "application/json", "accept": "application/json"}
        api_key = getattr(config, "api_key", None)
        if api_key is not None:
            headers["authorization"] = f"Bearer {api_key.get_secret_value()}"
        if getattr(config, "organization", None):
            headers["openai-organization"] = config.organization
        if getattr(config, "project", None):
            headers["openai-project"] = config.project
        headers.update({key.lower(): value for key, value in config.headers.items()})
        self._headers = headers

    # --- hooks for providers that speak OpenAI with an accent -----------------------------------------

    def url(self, operation: Literal["chat/completions", "embeddings"], model: str) -> str:
        return f"{self._base_url}/{operation}"

    async def request_headers(self) -> dict[str, str]:
        return self._headers

    def normalize_chunk(self, chunk: dict[str, Any]) -> bool:
        """Fix a streamed chunk in place; return True when it changed (it is then re-encoded)."""
        return False

    def normalize_completion(self, completion: dict[str, Any]) -> None:
        """Fix a complete answer in place."""

    def keep_chunk(self, chunk: dict[str, Any]) -> bool:
        """Whether a streamed chunk goes to the client at all (some upstreams send annotation-only chunks)."""
        return True

    async def refresh_credentials(self) -> bool:
        """After a 401: renew the credentials if they can be renewed, and say whether a retry is worth it."""
        return False

    # --- calls -------------------------------------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        body = dict(request.body)
        body["model"] = model
        completion = await self._post_json(self.url("chat/completions", model), body, options)
        choices = completion.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self.error(ErrorKind.INTERNAL, f"{self.upstream} answer has no choices", status=200)
        for choice in choices:
            # Some compatible servers omit fields OpenAI's schema requires; clients validating against
            # it (and typed SDKs) expect them present, even when null.
            choice.setdefault("logprobs", None)
            message = choice.get("message")
            if isinstance(message, dict):
                message.setdefault("refusal", None)
        self.normalize_completion(completion)
        return completion

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        body = dict(request.body)
        body["model"] = model
        body["stream"] = True
        if self.config.stream_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream_options", None)  # servers that need this switch reject the field outright
        first_deadline = first_token_deadline(options)
        saw_usage = False
        saw_done = False
        finished: set[int] = set()
        text_parts: list[str] = []
        first_chunk: dict[str, Any] | None = None
        with self.failures_as_provider_errors(self.upstream):
            content = orjson.dumps(body)
            async with asyncio.timeout_at(first_deadline):
                for attempt in (1, 2):
                    response = await self.http.post_direct(
                        self.url("chat/completions", model),
                        content,
                        await self.request_headers(),
                        options,
                        streaming=True,
                    )
                    if response.status_code == 200:
                        break
                    try:
                        await response.aread()  # an error's body, within the same first-chunk deadline
                    finally:
                        response.close()
                    if response.status_code != 401 or attempt == 2 or not await self.refresh_credentials():
                        raise self._error_from_response(response)
            try:
                async for data in within_limits(_sse_data(response), options, first_deadline):
                    if data == b"[DONE]":
                        saw_done = True
                        break
                    chunk = self._loads(data)
                    if not isinstance(chunk, dict):
                        raise self.error(ErrorKind.INTERNAL, f"{self.upstream} sent a chunk that is not a JSON object")
                    if chunk.get("error"):
                        raise self._error_from_body(chunk, status=200)
                    if first_chunk is None and chunk.get("id"):
                        first_chunk = chunk
                    if chunk.get("usage"):
                        saw_usage = True
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        content = delta.get("content")
                        if content:
                            text_parts.append(content)
                        for call in delta.get("tool_calls") or ():
                            arguments = (call.get("function") or {}).get("arguments")
                            if arguments:
                                text_parts.append(arguments)
                        if choice.get("finish_reason"):
                            finished.add(choice.get("index", 0))
                    if not self.keep_chunk(chunk):
                        continue
                    changed = self.normalize_chunk(chunk)
                    # A multi-line SSE event joins its lines with "\n": such bytes cannot be re-framed as
                    # one `data:` line, so that (rare) chunk is re-encoded instead of passed through.
                    yield StreamChunk(chunk, raw=None if changed or b"\n" in data else data)
            finally:
                await response.aclose()
        if not saw_done and not finished:
            raise self.error(ErrorKind.INTERNAL, f"{self.upstream} ended the stream before it finished")
        if not saw_usage:
            # The upstream gave no usage (stream_usage off, or it ignores stream_options): count it
            # ourselves rather than account the call at zero.
            await ready()
            usage = estimate_usage(request.body["messages"], text_parts)
            request.facts.usage_estimated = True
            head = first_chunk or {}
            chunks = ChunkFactory(head.get("id", ""), head.get("created", 0), head.get("model", model))
            yield chunks.usage(usage)

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        body = dict(request.body)
        body["model"] = model
        result = await self._post_json(self.url("embeddings", model), body, options)
        if not isinstance(result.get("data"), list):
            raise self.error(ErrorKind.INTERNAL, f"{self.upstream} embeddings answer has no data", status=200)
        return result

    # --- plumbing ----------------------------------------------------------------------------------

    async def _post_json(self, url: str, body: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        content = orjson.dumps(body)
        with self.failures_as_provider_errors(self.upstream):
            async with asyncio.timeout_at(options.deadline):
                for attempt in (1, 2):
                    response = await self.http.post_direct(
                        url, content, await self.request_headers(), options, streaming=False
                    )
                    if response.status_code != 401 or attempt == 2:
                        break
                    if not await self.refresh_credentials():
                        break
        if response.status_code != 200:
            raise self._error_from_response(response)
        return self.parse_json(response.content, self.upstream)

    def _loads(self, data: bytes) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise self.error(ErrorKind.INTERNAL, f"{self.upstream} sent malformed JSON", status=200) from None

    def _error_from_response(self, response: UpstreamResponse) -> ProviderError:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {"error": {"message": response.text[:500] or response.reason_phrase}}
        error = self._error_from_body(body if isinstance(body, dict) else {}, status=response.status_code)
        error.retry_after_s = parse_retry_after(response.headers)
        return error

    def _error_from_body(self, body: dict[str, Any], *, status: int) -> ProviderError:
        detail = body.get("error", body)
        if not isinstance(detail, dict):
            detail = {"message": str(detail)}
        message = str(detail.get("message") or detail.get("detail") or f"{self.upstream} returned HTTP {status}")
        code = detail.get("code")
        code = str(code) if code is not None else None
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
        inner = detail.get("innererror") if isinstance(detail.get("innererror"), dict) else {}
        error_type = str(detail.get("type") or inner.get("code") or "")
        kind = error_kind(status, code, error_type, message)
        return self.error(kind, message, status=status, code=code, param=param)


def error_kind(status: int, code: str | None, error_type: str, message: str) -> ErrorKind:
    """OpenAI-style error bodies → kinds; shared by every adapter built on this one."""
    lowered = message.lower()
    if status == 200:  # an error event inside a stream
        if code == "rate_limit_exceeded" or "rate limit" in lowered:
            return ErrorKind.RATE_LIMITED
        return ErrorKind.INTERNAL
    if code == "insufficient_quota" or status == 402:
        # The account behind this deployment is out of credit: waiting will not help, another deployment may.
        return ErrorKind.AUTH
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (400, 413, 422):
        if code == "context_length_exceeded" or any(hint.lower() in lowered for hint in CONTEXT_WINDOW_HINTS):
            return ErrorKind.CONTEXT_WINDOW
        if code in CONTENT_FILTER_CODES or error_type in CONTENT_FILTER_CODES:
            return ErrorKind.CONTENT_FILTER
        return ErrorKind.INVALID_REQUEST
    if status == 524:  # Cloudflare's "a timeout occurred", in front of several providers
        return ErrorKind.TIMEOUT
    return kind_for_status(status)


async def _sse_data(response: UpstreamResponse) -> AsyncIterator[bytes]:
    async for event in iter_sse_events(response.aiter_bytes()):
        yield event.data
