"""Adapter for any OpenAI-compatible upstream: OpenAI, Together, Groq, Mistral's compatible API, vLLM,
Ollama, LM Studio...

The client's JSON is forwarded with only `model` replaced, and streamed chunks are passed through as
the upstream's own bytes: the gateway parses each chunk once (to see usage, finish reasons and errors)
but never re-encodes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Literal

import httpx
import orjson
from pydantic import Field, SecretStr

from providers.base import CallOptions, ProviderAdapter, ProviderConfigBase
from providers.errors import ErrorKind, ProviderError, kind_for_status
from providers.http import parse_retry_after, request_timeout, transport_error
from providers.schema import ChatRequest, EmbedRequest, StreamChunk
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import estimate_usage


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


_CONTEXT_WINDOW_HINTS = ("context length", "context_length", "maximum context", "too many tokens", "prompt is too long")
_CONTENT_FILTER_CODES = {"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"}


class OpenAICompatibleAdapter(ProviderAdapter):
    provider_type = "openai"
    config_model = OpenAICompatibleConfig
    supports_embeddings = True

    def __init__(self, name: str, config: OpenAICompatibleConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._base_url = config.base_url.rstrip("/")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if config.api_key is not None:
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        if config.organization:
            headers["openai-organization"] = config.organization
        if config.project:
            headers["openai-project"] = config.project
        headers.update({key.lower(): value for key, value in config.headers.items()})
        self._headers = headers

    # --- calls -------------------------------------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        body = dict(request.body)
        body["model"] = model
        completion = await self._post_json("/chat/completions", body, options)
        choices = completion.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self.error(ErrorKind.INTERNAL, "upstream answer has no choices", status=200)
        for choice in choices:
            # Some compatible servers omit fields OpenAI's schema requires; clients validating against
            # it (and typed SDKs) expect them present, even when null.
            choice.setdefault("logprobs", None)
            message = choice.get("message")
            if isinstance(message, dict):
                message.setdefault("refusal", None)
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
        try:
            async with asyncio.timeout_at(first_deadline):
                response = await self.http.send(
                    self.http.build_request(
                        "POST",
                        self._base_url + "/chat/completions",
                        content=orjson.dumps(body),
                        headers=self._headers,
                        timeout=request_timeout(options, streaming=True),
                    ),
                    stream=True,
                )
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise self._error_from_response(response)
                async for data in within_limits(_sse_data(response), options, first_deadline):
                    if data == b"[DONE]":
                        saw_done = True
                        break
                    chunk = _loads(data, self)
                    if not isinstance(chunk, dict):
                        raise self.error(ErrorKind.INTERNAL, "upstream sent a chunk that is not a JSON object")
                    if first_chunk is None:
                        first_chunk = chunk
                    if chunk.get("error"):
                        raise self._error_from_body(chunk, status=200)
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
                    # A multi-line SSE event joins its lines with "\n": such bytes cannot be re-framed as
                    # one `data:` line, so that (rare) chunk is re-encoded instead of passed through.
                    yield StreamChunk(chunk, raw=None if b"\n" in data else data)
            finally:
                await response.aclose()
        except TimeoutError as exc:
            raise self.error(ErrorKind.TIMEOUT, f"upstream sent {exc}" if str(exc) else "upstream timed out") from None
        except httpx.HTTPError as exc:
            raise self._error_from_transport(exc) from None
        if not saw_done and not finished:
            raise self.error(ErrorKind.INTERNAL, "upstream ended the stream before it finished")
        if not saw_usage:
            # The upstream gave no usage (stream_usage off, or it ignores stream_options): count it
            # ourselves rather than account the call at zero.
            usage = estimate_usage(request.body["messages"], text_parts)
            head = first_chunk or {}
            yield StreamChunk(
                {
                    "id": head.get("id", ""),
                    "object": "chat.completion.chunk",
                    "created": head.get("created", 0),
                    "model": head.get("model", model),
                    "choices": [],
                    "usage": usage.to_openai(),
                }
            )

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        body = dict(request.body)
        body["model"] = model
        result = await self._post_json("/embeddings", body, options)
        if not isinstance(result.get("data"), list):
            raise self.error(ErrorKind.INTERNAL, "upstream embeddings answer has no data", status=200)
        return result

    # --- plumbing ----------------------------------------------------------------------------------

    async def _post_json(self, path: str, body: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        try:
            async with asyncio.timeout_at(options.deadline):
                response = await self.http.post(
                    self._base_url + path,
                    content=orjson.dumps(body),
                    headers=self._headers,
                    timeout=request_timeout(options, streaming=False),
                )
        except TimeoutError:
            raise self.error(ErrorKind.TIMEOUT, "upstream did not answer in time") from None
        except httpx.HTTPError as exc:
            raise self._error_from_transport(exc) from None
        if response.status_code != 200:
            raise self._error_from_response(response)
        result = _loads(response.content, self)
        if not isinstance(result, dict):
            raise self.error(ErrorKind.INTERNAL, "upstream answer is not a JSON object", status=200)
        return result

    def _error_from_transport(self, exc: httpx.HTTPError) -> ProviderError:
        kind, message = transport_error(exc)
        return self.error(kind, message)

    def _error_from_response(self, response: httpx.Response) -> ProviderError:
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
        message = str(detail.get("message") or detail.get("detail") or f"upstream returned HTTP {status}")
        code = detail.get("code")
        code = str(code) if code is not None else None
        param = detail.get("param") if isinstance(detail.get("param"), str) else None
        kind = _kind_for(status, code, str(detail.get("type") or ""), message)
        return self.error(kind, message, status=status, code=code, param=param)


def _kind_for(status: int, code: str | None, error_type: str, message: str) -> ErrorKind:
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
        if code == "context_length_exceeded" or any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS):
            return ErrorKind.CONTEXT_WINDOW
        if code in _CONTENT_FILTER_CODES or error_type in _CONTENT_FILTER_CODES:
            return ErrorKind.CONTENT_FILTER
        return ErrorKind.INVALID_REQUEST
    return kind_for_status(status)


def _loads(data: bytes, adapter: ProviderAdapter) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise adapter.error(ErrorKind.INTERNAL, "upstream sent malformed JSON", status=200) from None


async def _sse_data(response: httpx.Response) -> AsyncIterator[bytes]:
    from providers.sse import iter_sse_events

    async for event in iter_sse_events(response.aiter_bytes()):
        yield event.data
