"""The built-in mock provider: real token counts, honest timing limits, injected failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import openai
import pytest

from providers.base import CallOptions
from providers.errors import ErrorKind, ProviderError
from providers.mock import MockAdapter, MockProviderConfig
from providers.schema import ChatCompletionRequest, ChatRequest
from providers.tokens import count_messages, encoding


def adapter(**settings: Any) -> MockAdapter:
    return MockAdapter("mock", MockProviderConfig(type="mock", **settings), http=None)  # type: ignore[arg-type]


def chat_request(**fields: Any) -> ChatRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "Count my tokens, please."}], **fields}
    return ChatRequest(body, ChatCompletionRequest.model_validate(body))


async def test_usage_counts_are_the_tokenizers_counts() -> None:
    request = chat_request()
    completion = await adapter().chat("mock-1", request, CallOptions.within(5))
    usage = completion["usage"]
    assert usage["prompt_tokens"] == count_messages(request.body["messages"])
    content = completion["choices"][0]["message"]["content"]
    assert usage["completion_tokens"] == len(encoding().encode(content))


async def test_injected_failures_are_503_unavailable() -> None:
    with pytest.raises(ProviderError) as caught:
        await adapter(failure_rate=1.0).chat("m", chat_request(), CallOptions.within(5))
    assert caught.value.kind is ErrorKind.UNAVAILABLE and caught.value.status == 503


async def test_a_first_token_slower_than_the_limit_is_a_timeout_at_the_limit() -> None:
    slow = adapter(ttft_ms=5000)
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        async for _ in slow.stream("m", chat_request(stream=True), CallOptions.within(10, first_token_s=0.2)):
            pass
    assert caught.value.kind is ErrorKind.TIMEOUT
    assert time.monotonic() - started < 4.0  # gave up at its limit, long before the 5 s answer


async def test_streaming_is_paced_by_tokens_per_second() -> None:
    paced = adapter(tokens_per_s=100, min_words=10, max_words=10)
    started = time.monotonic()
    chunks = [chunk async for chunk in paced.stream("m", chat_request(stream=True), CallOptions.within(10))]
    tokens = chunks[-1].data["usage"]["completion_tokens"]
    assert time.monotonic() - started >= tokens / 100 * 0.9  # a lower bound only: never assert an upper one


async def test_embeddings_are_deterministic_unit_vectors() -> None:
    from providers.schema import EmbeddingRequest, EmbedRequest

    body = {"model": "e", "input": ["same", "same", "other"], "dimensions": 16}
    request = EmbedRequest(body, EmbeddingRequest.model_validate(body))
    result = await adapter().embed("emb-1", request, CallOptions.within(5))
    first, second, third = (item["embedding"] for item in result["data"])
    assert first == second != third
    assert sum(value * value for value in first) == pytest.approx(1.0)


def test_gateway_maps_mock_failures_and_timeouts(gateway_factory: Any) -> None:
    url = gateway_factory("""
providers:
  broken: {type: mock, failure_rate: 1.0}
  slow: {type: mock, ttft_ms: 5000}
models:
  broken: {deployments: [{provider: broken, model: m}]}
  slow: {deployments: [{provider: slow, model: m, timeouts: {first_token_s: 0.2, total_s: 0.4}}]}
""")
    messages = [{"role": "user", "content": "hi"}]
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
        with pytest.raises(openai.InternalServerError) as unavailable:
            sdk.chat.completions.create(model="broken", messages=messages)  # type: ignore[arg-type]
        assert unavailable.value.status_code == 503
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as timed_out:
                sdk.chat.completions.create(model="slow", messages=messages, stream=stream)  # type: ignore[call-overload]
            assert timed_out.value.status_code == 504
    assert (
        httpx.post(url + "/v1/chat/completions", json={"model": "slow", "messages": messages}).json()["error"]["code"]
        == "upstream_timeout"
    )


def test_async_adapter_calls_can_run_concurrently() -> None:
    async def many() -> list[dict[str, Any]]:
        mock = adapter(ttft_ms=100)
        return await asyncio.gather(*(mock.chat("m", chat_request(), CallOptions.within(5)) for _ in range(20)))

    started = time.monotonic()
    results = asyncio.run(many())
    assert len({result["id"] for result in results}) == 20
    assert time.monotonic() - started < 1.9  # 20 × 100 ms in sequence would be 2 s: they overlap (no blocking)


async def test_json_schemas_with_large_bounds_are_answered_not_crashed() -> None:
    schema = {
        "type": "object",
        "properties": {
            "year": {"type": "integer", "minimum": 1900},
            "price": {"type": "number", "minimum": 500},
            "items": {"type": "array", "minItems": 300000, "items": {"type": "string"}},
        },
    }
    request = chat_request(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    completion = await adapter().chat("m", request, CallOptions.within(5))
    import json

    answer = json.loads(completion["choices"][0]["message"]["content"])
    assert answer["year"] >= 1900 and answer["price"] >= 500 and 1 <= len(answer["items"]) <= 16


# --- prefill: continuing a final assistant message ---------------------------------------------------


def _cuts(full: str) -> dict[str, str]:
    """Prefills a gateway could send after a broken stream of `full`."""
    space = [i for i, char in enumerate(full) if char == " "][2]  # after the third word
    return {
        "mid_word": full[: space + 3],
        "after_space": full[: space + 1],
        "space_stripped": full[: space + 1].rstrip(),  # what Anthropic-style providers must be sent
        "first_tokens": "".join(encoding().decode([token]) for token in encoding().encode(full)[:5]),
        "all_but_the_end": full[:-1],
    }


async def _answer(mock: MockAdapter, messages: list[dict[str, Any]], *, stream: bool) -> tuple[str, dict[str, Any]]:
    """The answer's text and usage, streamed or not."""
    request = chat_request(messages=messages, stream=stream)
    if not stream:
        completion = await mock.chat("mock-1", request, CallOptions.within(5))
        return completion["choices"][0]["message"]["content"], completion["usage"]
    chunks = [chunk.data async for chunk in mock.stream("mock-1", request, CallOptions.within(5))]
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks if chunk["choices"])
    return text, chunks[-1]["usage"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("cut", ["mid_word", "after_space", "space_stripped", "first_tokens", "all_but_the_end"])
async def test_a_prefill_is_continued_with_the_rest_of_the_uninterrupted_answer(stream: bool, cut: str) -> None:
    assert MockAdapter.supports_prefill
    mock = adapter(min_words=20, max_words=30)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me about the gateway."},
    ]
    full, _ = await _answer(mock, messages, stream=stream)
    prefill = _cuts(full)[cut]
    with_prefill = [*messages, {"role": "assistant", "content": prefill}]
    continuation, usage = await _answer(mock, with_prefill, stream=stream)
    assert prefill + continuation == full
    if cut == "space_stripped":
        assert continuation.startswith(" ")  # the whitespace the provider was not sent comes back
    assert usage["prompt_tokens"] == count_messages(with_prefill)  # the prefill is prompt
    assert usage["completion_tokens"] == len(encoding().encode(continuation))  # only the rest is completion


async def test_a_prefill_in_text_parts_and_a_prefill_the_answer_does_not_start_with() -> None:
    mock = adapter()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Go on."}]
    full, _ = await _answer(mock, messages, stream=False)
    parts = [{"type": "text", "text": full[:7]}, {"type": "text", "text": full[7:12]}]
    continuation, _ = await _answer(mock, [*messages, {"role": "assistant", "content": parts}], stream=False)
    assert full[:12] + continuation == full

    foreign = [*messages, {"role": "assistant", "content": "Something else entirely"}]
    first, usage = await _answer(mock, foreign, stream=False)
    again, _ = await _answer(mock, foreign, stream=True)
    assert first == again and first.startswith(" ") and first.endswith(".") and len(first.split()) >= 4
    assert usage["completion_tokens"] == len(encoding().encode(first))


async def test_output_limits_apply_to_the_continuation_and_tools_are_not_called() -> None:
    mock = adapter(min_words=30, max_words=30)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather?"}]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    full, _ = await _answer(mock, messages, stream=False)
    prefill = [*messages, {"role": "assistant", "content": full[:20]}]
    completion = await mock.chat(
        "mock-1", chat_request(messages=prefill, tools=[tool], max_tokens=3), CallOptions.within(5)
    )
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "length" and completion["usage"]["completion_tokens"] == 3
    assert full.startswith(full[:20] + choice["message"]["content"])  # the start of the rest, not a tool call
