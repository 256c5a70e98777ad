"""The real OpenAI SDK (sync and async) against the gateway over HTTP, on the built-in mock provider.

Each test checks both sides of compatibility: the SDK's typed objects parse, and the raw JSON the
gateway sent validates against OpenAI's published schemas.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import openai
import pytest

from tests.support.openapi import OpenAPISchemas, base64_embeddings_to_floats

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
            "required": ["city", "unit"],
        },
    },
}


def raw_sse_chunks(base_url: str, body: dict[str, Any]) -> list[Any]:
    """POST a streaming request and return every `data:` payload, parsed (the last is '[DONE]')."""
    payloads: list[Any] = []
    with httpx.stream("POST", base_url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[len("data: ") :]
                payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads


def test_chat_completion_parses_in_sdk_and_matches_openai_schema(
    client: openai.OpenAI, openapi: OpenAPISchemas
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    completion = raw.parse()
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert raw.headers["x-gateway-provider"] == "mock"
    assert raw.headers["x-gateway-model"] == "mock-chat-1"
    assert raw.headers["x-request-id"]


def test_same_request_gives_same_answer_and_different_prompts_differ(client: openai.OpenAI) -> None:
    def ask(text: str) -> str | None:
        reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}])
        return reply.choices[0].message.content

    assert ask("What is routing?") == ask("What is routing?")
    assert ask("What is routing?") != ask("What is caching?")


def test_max_tokens_and_max_completion_tokens_cut_the_answer(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 3}, {"max_completion_tokens": 3}):
        reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], **limit)
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_n_gives_that_many_choices(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], n=3)
    assert [choice.index for choice in reply.choices] == [0, 1, 2]
    assert len({choice.message.content for choice in reply.choices}) == 3


def test_logprobs_are_returned_when_asked(client: openai.OpenAI, gateway_url: str, openapi: OpenAPISchemas) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], logprobs=True, top_logprobs=2, max_tokens=4
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    logprobs = raw.parse().choices[0].logprobs
    assert logprobs is not None and logprobs.content is not None and len(logprobs.content) == 4
    assert all(len(entry.top_logprobs) == 2 for entry in logprobs.content)


def test_streaming_with_include_usage(client: openai.OpenAI, gateway_url: str, openapi: OpenAPISchemas) -> None:
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Tell me about gateways"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    payloads = raw_sse_chunks(gateway_url, body)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    assert len({chunk["id"] for chunk in chunks}) == 1
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"

    stream = client.chat.completions.create(**body)
    text, usage = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    reply = client.chat.completions.create(model="chat", messages=body["messages"])
    assert text == reply.choices[0].message.content  # streaming and not streaming agree
    assert usage is not None and usage.completion_tokens == reply.usage.completion_tokens  # type: ignore[union-attr]


def test_streaming_without_include_usage_sends_no_usage_chunk(gateway_url: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    chunks = raw_sse_chunks(gateway_url, body)[:-1]
    assert all(chunk["choices"] for chunk in chunks)
    assert not any(chunk.get("usage") for chunk in chunks)


def test_tool_call_round_trip(client: openai.OpenAI, openapi: OpenAPISchemas) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=messages, tools=[WEATHER_TOOL])
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    first = raw.parse().choices[0]
    assert first.finish_reason == "tool_calls"
    assert first.message.content is None
    call = first.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert set(arguments) == {"city", "unit"} and arguments["unit"] in ("c", "f")

    messages += [
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees and sunny"},
    ]
    answer = client.chat.completions.create(model="chat", messages=messages, tools=[WEATHER_TOOL])
    assert answer.choices[0].finish_reason == "stop"
    assert "18 degrees and sunny" in (answer.choices[0].message.content or "")


def test_streamed_tool_call_deltas_join_to_the_arguments(client: openai.OpenAI) -> None:
    request = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls[0]  # type: ignore[index]
    arguments, names, finish = "", [], None
    for chunk in client.chat.completions.create(**request, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                names += [delta.function.name] if delta.function and delta.function.name else []
                arguments += (delta.function.arguments or "") if delta.function else ""
            finish = choice.finish_reason or finish
    assert names == ["get_weather"] and finish == "tool_calls"
    assert json.loads(arguments) == json.loads(whole.function.arguments)  # type: ignore[union-attr]


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER_TOOL], tool_choice="none"
    )
    assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content


def test_json_modes(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)

    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "A person"}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
    )
    person = json.loads(reply.choices[0].message.content or "")
    assert set(person) == {"name", "age", "tags"}
    assert isinstance(person["name"], str) and 0 <= person["age"] <= 120 and isinstance(person["tags"], list)


def test_stop_sequence_ends_the_answer_before_it(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}])
    text = full.choices[0].message.content or ""
    stop_word = text.split()[3]
    cut = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}], stop=[stop_word])
    assert cut.choices[0].message.content == text[: text.index(stop_word)]


def test_embeddings_float_and_base64(client: openai.OpenAI, gateway_url: str, openapi: OpenAPISchemas) -> None:
    raw = client.embeddings.with_raw_response.create(model="embed", input=["hello", "world"], encoding_format="float")
    openapi.validate("CreateEmbeddingResponse", raw.http_response.json())
    floats = raw.parse()
    assert [item.index for item in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 1536
    assert floats.usage.prompt_tokens == 2

    # The SDK asks for base64 by default and decodes it; the numbers must match the float answer.
    decoded = client.embeddings.create(model="embed", input=["hello", "world"])
    assert decoded.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-6)

    request = {"model": "embed", "input": "hello", "dimensions": 8}
    as_floats = httpx.post(gateway_url + "/v1/embeddings", json={**request, "encoding_format": "float"}).json()
    as_base64 = httpx.post(gateway_url + "/v1/embeddings", json={**request, "encoding_format": "base64"}).json()
    vector = struct.unpack("<8f", base64.b64decode(as_base64["data"][0]["embedding"]))
    assert vector == pytest.approx(as_floats["data"][0]["embedding"], abs=1e-6)
    assert sum(value * value for value in vector) == pytest.approx(1.0, abs=1e-5)  # unit length, like OpenAI's
    openapi.validate("CreateEmbeddingResponse", base64_embeddings_to_floats(as_base64))


def test_embeddings_accept_token_arrays(client: openai.OpenAI) -> None:
    single = client.embeddings.create(model="embed", input=[9906, 11, 1917], encoding_format="float")
    assert len(single.data) == 1 and single.usage.prompt_tokens == 3
    many = client.embeddings.create(model="embed", input=[[9906, 11], [1917]], encoding_format="float")
    assert len(many.data) == 2 and many.usage.prompt_tokens == 3


def test_models_list_and_retrieve(client: openai.OpenAI, gateway_url: str, openapi: OpenAPISchemas) -> None:
    raw = client.models.with_raw_response.list()
    openapi.validate("ListModelsResponse", raw.http_response.json())
    assert [model.id for model in raw.parse().data] == ["chat", "slow-chat", "embed"]
    model = client.models.retrieve("embed")
    assert model.id == "embed" and model.object == "model"
    openapi.validate("Model", httpx.get(gateway_url + "/v1/models/embed").json())
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("missing")


def test_model_ids_with_slashes_are_served(gateway_factory: Any) -> None:
    url = gateway_factory("""
providers: {mock: {type: mock}}
models:
  meta-llama/Llama-3.3-70B: {deployments: [{provider: mock, model: m}]}
""")
    with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
        assert sdk.models.retrieve("meta-llama/Llama-3.3-70B").id == "meta-llama/Llama-3.3-70B"
        reply = sdk.chat.completions.create(
            model="meta-llama/Llama-3.3-70B", messages=[{"role": "user", "content": "x"}]
        )
        assert reply.choices[0].message.content


async def test_async_client_chat_stream_and_embeddings(gateway_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=gateway_url + "/v1", api_key="k", max_retries=0) as sdk:
        reply = await sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hi"}])
        assert reply.choices[0].message.content
        stream = await sdk.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            text += "".join(choice.delta.content or "" for choice in chunk.choices)
            usage = chunk.usage or usage
        assert text == reply.choices[0].message.content
        assert usage is not None and usage.total_tokens == reply.usage.total_tokens  # type: ignore[union-attr]
        embedding = await sdk.embeddings.create(model="embed", input="hi")
        assert len(embedding.data[0].embedding) == 1536
