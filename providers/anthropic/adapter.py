"""The `anthropic` adapter: the Messages API, plain and streamed (typed SSE events)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from providers.anthropic.config import AnthropicConfig
from providers.anthropic.mapping import (
    JSON_TOOL_NAME,
    MessagesPlan,
    finish_reason,
    from_messages,
    to_messages,
    usage_from,
)
from providers.base import CallOptions, ProviderAdapter
from providers.errors import ErrorKind, ProviderError, kind_for_status
from providers.http import parse_retry_after, request_timeout
from providers.schema import ChatRequest, ChunkFactory, StreamChunk, Usage, new_completion_id, now_s
from providers.sse import iter_sse_events
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import estimate_usage, ready

_ERROR_TYPES = {
    "overloaded_error": ErrorKind.UNAVAILABLE,
    "rate_limit_error": ErrorKind.RATE_LIMITED,
    "authentication_error": ErrorKind.AUTH,
    "permission_error": ErrorKind.AUTH,
    "billing_error": ErrorKind.AUTH,
    "not_found_error": ErrorKind.NOT_FOUND,
    "api_error": ErrorKind.INTERNAL,
    "timeout_error": ErrorKind.TIMEOUT,
}
_CONTEXT_WINDOW_HINTS = ("prompt is too long", "context window", "exceed context limit", "too many tokens")


class AnthropicAdapter(ProviderAdapter):
    provider_type = "anthropic"
    config_model = AnthropicConfig
    supports_prefill = True  # a trailing assistant turn is continued (some newer models refuse it with a 400)
    config: AnthropicConfig

    def __init__(self, name: str, config: AnthropicConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._url = config.base_url.rstrip("/") + "/v1/messages"
        self._headers = {
            "x-api-key": config.api_key.get_secret_value(),
            "anthropic-version": config.anthropic_version,
            "content-type": "application/json",
            "accept": "application/json",
            **{key.lower(): value for key, value in config.headers.items()},
        }

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        plan = self._plan(request)
        with self.failures_as_provider_errors("Anthropic"):
            async with asyncio.timeout_at(options.deadline):
                response = await self._post({**plan.body, "model": model}, options, streaming=False)
            answer = self.parse_json(response.content, "Anthropic")
            return from_messages(answer, plan=plan, model=model, created=now_s())

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        plan = self._plan(request)
        state = _StreamState(plan=plan, model=model, created=now_s())
        first_deadline = first_token_deadline(options)
        with self.failures_as_provider_errors("Anthropic"):
            async with asyncio.timeout_at(first_deadline):
                response = await self._post({**plan.body, "model": model, "stream": True}, options, streaming=True)
            try:
                async for event in within_limits(iter_sse_events(response.aiter_bytes()), options, first_deadline):
                    data = self.parse_json(event.data, "Anthropic")
                    if data.get("type") == "error" or event.event == "error":
                        raise self._error_from_body(data, status=None)
                    for chunk in state.on_event(data):
                        yield chunk
                    if state.stopped:
                        break
            finally:
                await response.aclose()
            if not state.stopped:
                raise self.error(ErrorKind.INTERNAL, "Anthropic ended the stream before it finished")
        usage = state.usage()
        if usage is None:
            await ready()
            usage = estimate_usage(request.body["messages"], state.text_parts)
            request.facts.usage_estimated = True
        yield state.chunks.usage(usage)

    def _plan(self, request: ChatRequest) -> MessagesPlan:
        try:
            return to_messages(
                request.params, default_max_tokens=self.config.default_max_tokens, json_mode=self.config.json_mode
            )
        except ProviderError as exc:
            raise self.own(exc) from None

    async def _post(self, body: dict[str, Any], options: CallOptions, *, streaming: bool) -> httpx.Response:
        request = self.http.build_request(
            "POST",
            self._url,
            content=orjson.dumps(body),
            headers=self._headers,
            timeout=request_timeout(options, streaming=streaming),
        )
        response = await self.http.send(request, stream=streaming)
        if response.status_code == 200:
            return response
        try:
            await response.aread()
        finally:
            await response.aclose()
        try:
            payload = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            payload = {"error": {"message": response.text[:300] or response.reason_phrase}}
        error = self._error_from_body(payload if isinstance(payload, dict) else {}, status=response.status_code)
        error.retry_after_s = parse_retry_after(response.headers)
        raise error

    def _error_from_body(self, body: dict[str, Any], *, status: int | None) -> ProviderError:
        detail = body.get("error") if isinstance(body.get("error"), dict) else {}
        error_type = str(detail.get("type") or "")
        message = str(detail.get("message") or f"Anthropic returned HTTP {status}")
        if error_type in ("invalid_request_error", "request_too_large") or (status in (400, 413) and not error_type):
            lowered = message.lower()
            kind = (
                ErrorKind.CONTEXT_WINDOW
                if any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS)
                else ErrorKind.INVALID_REQUEST
            )
        elif error_type in _ERROR_TYPES:
            kind = _ERROR_TYPES[error_type]
        else:
            kind = ErrorKind.UNAVAILABLE if status == 529 else kind_for_status(status)
        if kind is ErrorKind.AUTH:
            message = f"Anthropic refused the credentials of provider '{self.name}': {message}"
        return self.error(kind, f"{error_type}: {message}" if error_type else message, status=status)


class _StreamState:
    """Anthropic stream events → OpenAI chunks. Tool calls are numbered in order of appearance; the
    content-block index counts text blocks too, so it cannot serve as the OpenAI tool-call index."""

    def __init__(self, plan: MessagesPlan, model: str, created: int) -> None:
        self.plan = plan
        self.chunks = ChunkFactory(new_completion_id(), created, model)
        self.tool_index_by_block: dict[int, int] = {}
        self.json_blocks: set[int] = set()
        self.start_usage: dict[str, Any] = {}
        self.final_usage: dict[str, Any] = {}
        self.stopped = False
        self.stop_reason: str | None = None
        self.text_parts: list[str] = []

    def usage(self) -> Usage | None:
        if not self.start_usage and not self.final_usage:
            return None
        # message_delta repeats input counts and carries the cumulative output count: the last word wins.
        return usage_from({**self.start_usage, **{k: v for k, v in self.final_usage.items() if v is not None}})

    def on_event(self, event: dict[str, Any]) -> list[StreamChunk]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if message.get("id"):
                self.chunks.completion_id = "chatcmpl-" + str(message["id"]).removeprefix("msg_")
            self.chunks.model = message.get("model") or self.chunks.model
            self.start_usage = message.get("usage") or {}
            return [self.chunks.delta({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            position = int(event.get("index", 0))
            if block.get("type") == "tool_use":
                if self.plan.json_via_tool and block.get("name") == JSON_TOOL_NAME:
                    self.json_blocks.add(position)
                    return []
                index = self.tool_index_by_block[position] = len(self.tool_index_by_block)
                call = {
                    "index": index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self.chunks.delta({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                self.text_parts.append(block["text"])
                return [self.chunks.delta({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            position = int(event.get("index", 0))
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                self.text_parts.append(delta.get("text", ""))
                return [self.chunks.delta({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                piece = delta.get("partial_json", "")
                self.text_parts.append(piece)
                if position in self.json_blocks:
                    return [self.chunks.delta({"content": piece})]
                index = self.tool_index_by_block.get(position, 0)
                return [self.chunks.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})]
            return []  # thinking and signature deltas have no OpenAI chat equivalent
        if kind == "message_delta":
            self.stop_reason = (event.get("delta") or {}).get("stop_reason") or self.stop_reason
            self.final_usage = event.get("usage") or self.final_usage
            return []
        if kind == "message_stop":
            self.stopped = True
            reason = finish_reason(
                self.stop_reason, has_tool_calls=bool(self.tool_index_by_block), json_via_tool=self.plan.json_via_tool
            )
            return [self.chunks.delta({}, finish=reason)]
        return []  # ping, and event types added after this was written
