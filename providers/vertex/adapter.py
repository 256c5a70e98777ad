"""The `vertex` adapter: Gemini generateContent / streamGenerateContent, and text-embedding predict."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from providers.base import CallOptions, ProviderAdapter
from providers.errors import ErrorKind, ProviderError
from providers.http import request_timeout
from providers.schema import (
    ChatRequest,
    ChunkFactory,
    EmbedRequest,
    StreamChunk,
    Usage,
    encode_embedding,
    new_completion_id,
    now_s,
)
from providers.sse import iter_sse_events
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import estimate_usage, ready
from providers.translate import invalid
from providers.vertex.auth import GoogleTokenSource
from providers.vertex.config import VertexConfig
from providers.vertex.errors import error_kind
from providers.vertex.mapping import finish_reason, from_gemini, logprobs_of, parts_of, to_gemini, usage_from

_EMBED_BATCH = 250  # instances per predict call on Vertex text-embedding models


class VertexAdapter(ProviderAdapter):
    provider_type = "vertex"
    config_model = VertexConfig
    supports_embeddings = True
    config: VertexConfig

    def __init__(self, name: str, config: VertexConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._tokens = GoogleTokenSource(config)
        self._models_url = (
            f"{config.base_url}/{config.api_version}/projects/{config.project}/locations/{config.location}"
            "/publishers/google/models"
        )

    # --- chat --------------------------------------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        body = self._plan(request)
        with self.failures_as_provider_errors("Vertex"):
            async with asyncio.timeout_at(options.deadline):
                response = await self._post(f"{model}:generateContent", body, options, streaming=False)
            answer = self.parse_json(response.content, "Vertex")
            return from_gemini(answer, model=model, completion_id=_completion_id(answer), created=now_s())

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        body = self._plan(request)
        first_deadline = first_token_deadline(options)
        state = _StreamState(model=model, created=now_s())
        with self.failures_as_provider_errors("Vertex"):
            async with asyncio.timeout_at(first_deadline):
                response = await self._post(f"{model}:streamGenerateContent?alt=sse", body, options, streaming=True)
            try:
                events = within_limits(iter_sse_events(response.aiter_bytes()), options, first_deadline)
                async for event in events:
                    answer = self.parse_json(event.data, "Vertex")
                    if answer.get("error"):
                        raise self._error_from_status(answer["error"], http_status=None)
                    for chunk in state.on_answer(answer):
                        yield chunk
            finally:
                await response.aclose()
            if not state.finished:
                raise self.error(ErrorKind.INTERNAL, "Vertex ended the stream before it finished")
        usage = state.usage
        if usage is None:
            await ready()
            usage = estimate_usage(request.body["messages"], state.text_parts)
            request.facts.usage_estimated = True
        yield state.chunks.usage(usage)

    def _plan(self, request: ChatRequest) -> dict[str, Any]:
        try:
            return to_gemini(request.params, self.config.schema_format).body
        except ProviderError as exc:
            raise self.own(exc) from None

    # --- embeddings ----------------------------------------------------------------------------------

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        params = request.params
        texts = params.inputs()
        if not all(isinstance(text, str) for text in texts):
            raise self.own(invalid("Vertex embedding models take text, not token arrays.", "input"))
        vectors: list[list[float]] = []
        tokens = 0
        with self.failures_as_provider_errors("Vertex"):
            async with asyncio.timeout_at(options.deadline):
                for start in range(0, len(texts), _EMBED_BATCH):
                    body: dict[str, Any] = {
                        "instances": [{"content": text} for text in texts[start : start + _EMBED_BATCH]]
                    }
                    if params.dimensions is not None:
                        body["parameters"] = {"outputDimensionality": params.dimensions}
                    response = await self._post(f"{model}:predict", body, options, streaming=False)
                    answer = self.parse_json(response.content, "Vertex")
                    for prediction in answer.get("predictions") or ():
                        embeddings = prediction.get("embeddings") or {}
                        vectors.append(embeddings.get("values") or [])
                        tokens += int((embeddings.get("statistics") or {}).get("token_count") or 0)
        if len(vectors) != len(texts):
            raise self.error(ErrorKind.INTERNAL, f"Vertex returned {len(vectors)} embeddings for {len(texts)} inputs")
        data = [
            {"object": "embedding", "index": index, "embedding": encode_embedding(vector, params.encoding_format)}
            for index, vector in enumerate(vectors)
        ]
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    # --- plumbing ------------------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, Any], options: CallOptions, *, streaming: bool) -> httpx.Response:
        """POST with a cached token; on 401 (a token revoked or expired early) refresh once and retry."""
        content = orjson.dumps(body)
        for attempt in (1, 2):
            try:
                token = await self._tokens.token(force_refresh=attempt == 2)
            except Exception as exc:  # google-auth raises RefreshError, TransportError, DefaultCredentialsError...
                raise self.error(
                    ErrorKind.AUTH,
                    f"could not get a Google access token for provider '{self.name}' ({type(exc).__name__})",
                ) from None
            request = self.http.build_request(
                "POST",
                f"{self._models_url}/{path}",
                content=content,
                headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
                timeout=request_timeout(options, streaming=streaming),
            )
            response = await self.http.send(request, stream=streaming)
            if response.status_code == 200:
                return response
            try:
                await response.aread()
            finally:
                await response.aclose()
            if response.status_code == 401 and attempt == 1:
                continue
            raise self._error_from_response(response)
        raise AssertionError("unreachable")

    def _error_from_response(self, response: httpx.Response) -> ProviderError:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        status = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}
        if not status:
            status = {"message": response.text[:300] or response.reason_phrase}
        return self._error_from_status(status, http_status=response.status_code)

    def _error_from_status(self, status: dict[str, Any], *, http_status: int | None) -> ProviderError:
        rpc_status = str(status.get("status") or "")
        message = str(status.get("message") or "Vertex returned an error")
        code = int(status["code"]) if isinstance(status.get("code"), int) else http_status
        kind = error_kind(code, rpc_status, message)
        if kind is ErrorKind.AUTH:
            message = f"Google refused the credentials of provider '{self.name}': {message}"
        # `code` is for OpenAI-style codes; the google.rpc status stays in the message.
        return self.error(kind, f"{rpc_status}: {message}" if rpc_status else message, status=code)


def _completion_id(answer: dict[str, Any]) -> str:
    response_id = answer.get("responseId")
    return f"chatcmpl-{response_id}" if response_id else new_completion_id()


class _StreamState:
    """Turns streamGenerateContent events into chunks. Each event carries only new parts; the last one
    carries `finishReason` and the complete usage (earlier usage blocks are partial)."""

    def __init__(self, model: str, created: int) -> None:
        self.chunks = ChunkFactory(new_completion_id(), created, model)
        self.named = False  # the id and model are taken from the first event
        self.started: set[int] = set()
        self.tool_counts: dict[int, int] = {}
        self.finished: set[int] = set()
        self.usage: Usage | None = None
        self.text_parts: list[str] = []

    def on_answer(self, answer: dict[str, Any]) -> list[StreamChunk]:
        if not self.named:
            self.named = True
            self.chunks.completion_id = _completion_id(answer)
            self.chunks.model = answer.get("modelVersion") or self.chunks.model
        if answer.get("usageMetadata"):
            self.usage = usage_from(answer["usageMetadata"])
        out: list[StreamChunk] = []
        candidates = answer.get("candidates") or []
        if not candidates and (answer.get("promptFeedback") or {}).get("blockReason"):
            candidates = [{"index": 0, "finishReason": "SAFETY"}]  # the prompt itself was blocked
        for position, candidate in enumerate(candidates):
            index = int(candidate.get("index", position))
            if index not in self.started:
                self.started.add(index)
                out.append(self.chunks.delta({"role": "assistant", "content": ""}, index=index))
            texts, calls = parts_of(candidate)
            text = "".join(texts)
            if text:
                self.text_parts.append(text)
                out.append(self.chunks.delta({"content": text}, index=index, logprobs=logprobs_of(candidate)))
            if calls:
                first = self.tool_counts.get(index, 0)
                self.tool_counts[index] = first + len(calls)
                deltas = [{"index": first + offset, **call} for offset, call in enumerate(calls)]  # whole calls
                self.text_parts += [call["function"]["arguments"] for call in calls]
                out.append(self.chunks.delta({"tool_calls": deltas}, index=index))
            if candidate.get("finishReason"):
                self.finished.add(index)
                reason = finish_reason(candidate["finishReason"], has_tool_calls=bool(self.tool_counts.get(index)))
                out.append(self.chunks.delta({}, index=index, finish=reason))
        return out
