"""The `anthropic` adapter against the Anthropic fake, through the gateway, with the OpenAI SDK."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from providers.anthropic import AnthropicAdapter, AnthropicConfig
from providers.anthropic.mapping import to_messages
from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatCompletionRequest
from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes import anthropic as fake_anthropic
from tests.fakes.anthropic import CutStream, FakeAnthropic, Hang, Reply, StreamError
from tests.support.adapters import adapter_error as call_adapter
from tests.support.openapi import OpenAPISchemas

MODEL = "claude-haiku-4-5"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Rig:
    fake: FakeAnthropic
    url: str
    client: openai.OpenAI


@pytest.fixture(scope="module")
def module_rig() -> Iterator[Rig]:
    with FakeAnthropic() as fake:
        provider = f"type: anthropic, api_key: sk-ant-fake, base_url: '{fake.url}'"
        config = f"""
{ONE_ATTEMPT}
providers:
  anthropic: {{{provider}}}
  anthropic-native: {{{provider}, json_mode: native}}
  anthropic-badkey: {{type: anthropic, api_key: sk-ant-wrong-777, base_url: '{fake.url}'}}
models:
  claude: {{deployments: [{{provider: anthropic, model: {MODEL}, timeouts: {{first_token_s: 1, total_s: 3}}}}]}}
  claude-native: {{deployments: [{{provider: anthropic-native, model: {MODEL}}}]}}
  claude-badkey: {{deployments: [{{provider: anthropic-badkey, model: {MODEL}}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            yield Rig(fake, url, sdk)


@pytest.fixture
def rig(module_rig: Rig) -> Rig:
    module_rig.fake.reset()
    return module_rig


def test_chat_is_mapped_and_schema_valid(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, temperature=1.5, stop=["END"], user="u-1"
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: Where is Paris?"
    assert completion.choices[0].finish_reason == "stop"
    sent = rig.fake.requests[-1]
    assert sent.headers["anthropic-version"] == "2023-06-01" and sent.headers["x-api-key"] == "sk-ant-fake"
    assert sent.json["system"] == "Be brief." and sent.json["max_tokens"] == 4096
    assert sent.json["temperature"] == 1.0 and sent.json["stop_sequences"] == ["END"]
    assert sent.json["metadata"] == {"user_id": "u-1"}


def test_max_tokens_truncation_is_length(rig: Rig) -> None:
    reply = rig.client.chat.completions.create(model="claude", messages=MESSAGES, max_completion_tokens=2)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 2  # type: ignore[union-attr]


def test_stream_with_usage_including_cache(rig: Rig, openapi: OpenAPISchemas) -> None:
    rig.fake.script(Reply(cache_read_tokens=30, cache_creation_tokens=10))
    body = {"model": "claude", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", rig.url + "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "You said: Where is Paris?"
    usage = chunks[-1]["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 30, "cache_write_tokens": 10}
    assert usage["prompt_tokens"] > 40 and usage["completion_tokens"] == len(text.split())


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_call(rig: Rig, stream: bool) -> None:
    rig.fake.script(Reply(tool_uses=[{"name": "get_weather", "input": {"city": "Paris"}}]))
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    request = {"model": "claude", "messages": messages, "tools": [WEATHER], "parallel_tool_calls": False}
    if stream:
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in rig.client.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for delta in choice.delta.tool_calls or ():
                    call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += delta.id or ""
                    call["name"] += (delta.function.name or "") if delta.function else ""
                    call["arguments"] += (delta.function.arguments or "") if delta.function else ""
        assert finish == "tool_calls" and len(calls) == 1
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
    else:
        first = rig.client.chat.completions.create(**request).choices[0]
        assert first.finish_reason == "tool_calls"
        tool_call = first.message.tool_calls[0]  # type: ignore[index]
        call_id, name, arguments = tool_call.id, tool_call.function.name, tool_call.function.arguments  # type: ignore[union-attr]
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"} and call_id
    assert rig.fake.requests[-1].json["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "22 C"},
    ]
    answer = rig.client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    turns = rig.fake.requests[-1].json["messages"]
    assert turns[1]["content"][0] == {
        "type": "tool_use",
        "id": call_id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert turns[2]["content"][0]["tool_use_id"] == call_id


def test_json_mode_by_forced_tool_and_native(rig: Rig) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    rig.fake.script(Reply(tool_uses=[{"name": "json_response", "input": {"city": "Paris"}}]))
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    reply = rig.client.chat.completions.create(model="claude", messages=MESSAGES, response_format=fmt)  # type: ignore[arg-type]
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris"}
    assert reply.choices[0].finish_reason == "stop"
    assert rig.fake.requests[-1].json["tool_choice"] == {"type": "tool", "name": "json_response"}
    rig.client.chat.completions.create(model="claude-native", messages=MESSAGES, response_format=fmt)  # type: ignore[arg-type]
    assert rig.fake.requests[-1].json["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_images_as_base64_and_url(rig: Rig) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [
        {"type": "text", "text": "What are these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    rig.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])  # type: ignore[misc]
    blocks = rig.fake.requests[-1].json["messages"][0]["content"]
    assert blocks[1]["source"] == {"type": "base64", "media_type": "image/png", "data": pixel}
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.png"}


ERRORS = [
    (fake_anthropic.OVERLOADED, ErrorKind.UNAVAILABLE, 503),
    (fake_anthropic.RATE_LIMITED, ErrorKind.RATE_LIMITED, 429),
    (fake_anthropic.PROMPT_TOO_LONG, ErrorKind.CONTEXT_WINDOW, 400),
    (fake_anthropic.AUTHENTICATION, ErrorKind.AUTH, 502),
    (fake_anthropic.PERMISSION, ErrorKind.AUTH, 502),
    (fake_anthropic.NOT_FOUND, ErrorKind.NOT_FOUND, 502),
    (fake_anthropic.API_ERROR, ErrorKind.INTERNAL, 502),
    (Hang(5), ErrorKind.TIMEOUT, 504),
]


@pytest.mark.parametrize(("behaviour", "kind", "status"), ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_map_to_kind_and_status(
    rig: Rig, openapi: OpenAPISchemas, behaviour: Any, kind: ErrorKind, status: int, stream: bool
) -> None:
    rig.fake.script(behaviour)
    response = httpx.post(
        rig.url + "/v1/chat/completions", json={"model": "claude", "messages": MESSAGES, "stream": stream}
    )
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    if kind is ErrorKind.RATE_LIMITED:
        assert response.headers["retry-after"] == "3"
    rig.fake.script(behaviour)
    assert adapter_error(rig.fake.url, stream=stream).kind is kind


def adapter_error(url: str, *, stream: bool) -> ProviderError:
    config = AnthropicConfig(type="anthropic", api_key="sk-ant-fake", base_url=url)  # type: ignore[arg-type]
    return call_adapter(lambda http: AnthropicAdapter("anthropic", config, http), MODEL, MESSAGES, stream=stream)


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (StreamError(after_chunks=2), "upstream_unavailable"),
        (StreamError(after_chunks=2, error_type="rate_limit_error", message="slow down"), "rate_limit_exceeded"),
        (CutStream(after_chunks=2), "upstream_error"),
    ],
)
def test_failures_mid_stream_end_with_an_error_event(rig: Rig, behaviour: Any, code: str) -> None:
    rig.fake.script(behaviour)
    with httpx.stream(
        "POST", rig.url + "/v1/chat/completions", json={"model": "claude", "messages": MESSAGES, "stream": True}
    ) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in payloads and json.loads(payloads[-1])["error"]["code"] == code


def test_wrong_key_is_an_auth_error_that_never_shows_the_key(rig: Rig) -> None:
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "claude-badkey", "messages": MESSAGES})
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    assert "anthropic-badkey" in response.json()["error"]["message"] and "sk-ant-wrong-777" not in response.text


# --- prefill: a final assistant message is continued -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefill_is_sent_without_trailing_whitespace_and_continued(rig: Rig, stream: bool) -> None:
    """Anthropic refuses a final assistant text ending in whitespace (the fake does too): the mapping strips it,
    and the reply is the rest of the answer, starting with the stripped space."""
    assert AnthropicAdapter.supports_prefill
    messages: list[Any] = [*MESSAGES, {"role": "assistant", "content": "You said: Where \n"}]
    if stream:
        chunks = rig.client.chat.completions.create(model="claude", messages=messages, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    else:
        text = rig.client.chat.completions.create(model="claude", messages=messages).choices[0].message.content or ""
    assert text == " is Paris?"
    assert rig.fake.requests[-1].json["messages"][-1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "You said: Where"}],
    }


def test_only_the_final_assistant_text_is_trimmed_and_a_blank_prefill_is_dropped(rig: Rig) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "In France.  "},
        {"role": "user", "content": "And Rome?"},
    ]
    rig.client.chat.completions.create(model="claude", messages=[*history, {"role": "assistant", "content": "In "}])
    sent = rig.fake.requests[-1].json["messages"]
    assert sent[1]["content"] == [{"type": "text", "text": "In France.  "}]  # earlier turns are left alone
    assert sent[-1]["content"] == [{"type": "text", "text": "In"}]

    blank = [*history, {"role": "assistant", "content": " \n"}]
    reply = rig.client.chat.completions.create(model="claude", messages=blank)
    assert reply.choices[0].message.content == "You said: And Rome?"  # nothing to continue: a fresh answer
    assert [turn["role"] for turn in rig.fake.requests[-1].json["messages"]] == ["user", "assistant", "user"]

    call = {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    ending_in_a_call = [*history, {"role": "assistant", "content": "Checking. ", "tool_calls": [call]}]
    params = ChatCompletionRequest.model_validate({"model": "m", "messages": ending_in_a_call, "tools": [WEATHER]})
    plan = to_messages(params, default_max_tokens=10, json_mode="tool")
    assert plan.body["messages"][-1]["content"][0] == {"type": "text", "text": "Checking. "}  # not a text ending
