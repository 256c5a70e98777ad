"""The `bedrock` adapter: Converse and ConverseStream for chat, InvokeModel for embeddings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from providers.base import CallOptions, ProviderAdapter
from providers.bedrock.auth import AWSSigner
from providers.bedrock.config import BedrockConfig
from providers.bedrock.errors import error_kind, error_type_name
from providers.bedrock.mapping import ConversePlan, from_converse, to_converse
from providers.bedrock.stream import ChunkBuilder, frames, incomplete_stream_error
from providers.errors import ErrorKind, ProviderError
from providers.http import request_timeout
from providers.schema import (
    ChatRequest,
    ChunkFactory,
    EmbedRequest,
    StreamChunk,
    encode_embedding,
    new_completion_id,
    now_s,
)
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import count_text, estimate_usage, ready
from providers.translate import invalid

_COHERE_BATCH = 96  # texts per Cohere embed call on Bedrock
_TITAN_CONCURRENCY = 16  # Titan embeds one text per call: bound the fan-out of a large batch


class BedrockAdapter(ProviderAdapter):
    provider_type = "bedrock"
    config_model = BedrockConfig
    supports_embeddings = True
    supports_prefill = True  # Converse continues a trailing assistant message (Claude models)
    config: BedrockConfig

    def __init__(self, name: str, config: BedrockConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._signer = AWSSigner(config)
        endpoint = config.endpoint_url or f"https://bedrock-runtime.{config.region}.amazonaws.com"
        self._endpoint = endpoint.rstrip("/")

    # --- chat --------------------------------------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        plan = self._plan(request)
        with self.failures_as_provider_errors("Bedrock"):
            async with asyncio.timeout_at(options.deadline):
                response = await self._post(model, "converse", plan.body, options, streaming=False)
            answer = self.parse_json(response.content, "Bedrock")
            return from_converse(answer, model=model, plan=plan, completion_id=new_completion_id(), created=now_s())

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        plan = self._plan(request)
        builder = ChunkBuilder(ChunkFactory(new_completion_id(), now_s(), model), plan)
        first_deadline = first_token_deadline(options)
        with self.failures_as_provider_errors("Bedrock"):
            async with asyncio.timeout_at(first_deadline):
                response = await self._post(model, "converse-stream", plan.body, options, streaming=True)
            try:
                async for message in within_limits(frames(response.aiter_bytes()), options, first_deadline):
                    chunk = builder.on_message(message)
                    if chunk is not None:
                        yield chunk
            finally:
                await response.aclose()
            if builder.stop_reason is None:
                raise incomplete_stream_error()
        if builder.usage is None:  # the metadata event never came: count, rather than record zero
            await ready()
            usage = estimate_usage(request.body["messages"], builder.text_parts)
            request.facts.usage_estimated = True
            yield builder.chunks.usage(usage)

    def _plan(self, request: ChatRequest) -> ConversePlan:
        try:
            return to_converse(request.params, self.config.json_mode)
        except ProviderError as exc:
            raise self.own(exc) from None

    # --- embeddings ----------------------------------------------------------------------------------

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        params = request.params
        texts = params.inputs()
        if not all(isinstance(text, str) for text in texts):
            raise self.own(invalid("Bedrock embedding models take text, not token arrays.", "input"))
        with self.failures_as_provider_errors("Bedrock"):
            async with asyncio.timeout_at(options.deadline):
                if "cohere.embed" in model:
                    vectors, tokens = await self._embed_cohere(model, texts, params.dimensions, options)  # type: ignore[arg-type]
                elif "titan-embed" in model:
                    vectors, tokens = await self._embed_titan(model, texts, params.dimensions, options)  # type: ignore[arg-type]
                else:
                    raise invalid(f"Unknown Bedrock embedding model family: {model} (Titan and Cohere are supported)")
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

    async def _embed_titan(
        self, model: str, texts: list[str], dimensions: int | None, options: CallOptions
    ) -> tuple[list[list[float]], int]:
        gate = asyncio.Semaphore(_TITAN_CONCURRENCY)

        async def one(text: str) -> tuple[list[float], int]:
            body: dict[str, Any] = {"inputText": text}
            if "text-v2" in model:
                body["normalize"] = True
            if dimensions is not None:
                body["dimensions"] = dimensions
            async with gate:
                answer = await self._invoke(model, body, options)
            reported = answer.get("inputTextTokenCount")
            if not reported:
                await ready()
            return answer["embedding"], int(reported or count_text(text))

        results = await asyncio.gather(*(one(text) for text in texts))
        return [vector for vector, _ in results], sum(tokens for _, tokens in results)

    async def _embed_cohere(
        self, model: str, texts: list[str], dimensions: int | None, options: CallOptions
    ) -> tuple[list[list[float]], int]:
        if dimensions is not None:
            raise invalid("Cohere embedding models on Bedrock have a fixed size: omit 'dimensions'.", "dimensions")
        vectors: list[list[float]] = []
        for start in range(0, len(texts), _COHERE_BATCH):
            batch = texts[start : start + _COHERE_BATCH]
            body = {"texts": batch, "input_type": "search_document"}
            answer = await self._invoke(model, body, options)
            embeddings = answer.get("embeddings")
            if isinstance(embeddings, dict):  # when embedding_types is given, vectors are keyed by type
                embeddings = embeddings.get("float")
            vectors.extend(embeddings or [])
        await ready()
        return vectors, sum(count_text(text) for text in texts)  # Cohere reports no token counts

    # --- plumbing ------------------------------------------------------------------------------------

    async def _invoke(self, model: str, body: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        response = await self._post(model, "invoke", body, options, streaming=False)
        return self.parse_json(response.content, "Bedrock")

    async def _post(
        self, model: str, action: str, body: dict[str, Any], options: CallOptions, *, streaming: bool
    ) -> httpx.Response:
        # The model id is one path segment: "/" in ARNs must be %2F. ":" stays literal because the HTTP client
        # (yarl, under aiohttp) would send %3A as ":" anyway, and the signature must cover the bytes sent.
        url = f"{self._endpoint}/model/{quote(model, safe=':')}/{action}"
        content = orjson.dumps(body)
        try:
            headers = await self._signer.signed_headers(url, content)
        except LookupError as exc:
            raise self.error(ErrorKind.AUTH, f"provider '{self.name}': {exc}") from None
        request = self.http.build_request(
            "POST", url, content=content, headers=headers, timeout=request_timeout(options, streaming=streaming)
        )
        response = await self.http.send(request, stream=streaming)
        if response.status_code != 200:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise self._error_from_response(response, model)
        return response

    def _error_from_response(self, response: httpx.Response, model: str) -> ProviderError:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        message = str(body.get("message") or body.get("Message") or response.text[:300] or response.reason_phrase)
        error_type = error_type_name(
            response.headers.get("x-amzn-errortype") or body.get("__type") or body.get("code") or body.get("Code")
        )
        kind = error_kind(response.status_code, error_type, message)
        if kind is ErrorKind.AUTH:
            message = f"AWS refused the credentials of provider '{self.name}' for model '{model}': {message}"
        detail = f"{error_type}: {message}" if error_type and kind is not ErrorKind.AUTH else message
        # `code` is for OpenAI-style codes; Bedrock's exception name stays in the message.
        return self.error(kind, detail, status=response.status_code)
