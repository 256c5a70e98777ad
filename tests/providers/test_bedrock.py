"""The `bedrock` adapter against the Bedrock fake (SigV4-verifying, real event streams), through the
gateway, with the OpenAI SDK as the client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from providers.bedrock import BedrockAdapter, BedrockConfig
from providers.bedrock.mapping import to_converse
from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatCompletionRequest
from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes import bedrock as fake_bedrock
from tests.fakes.bedrock import CutStream, FakeBedrock, Hang, Reply, StreamException
from tests.support.adapters import adapter_error as call_adapter
from tests.support.openapi import OpenAPISchemas
from tests.support.server import ServerThread

CLAUDE = "anthropic.claude-3-haiku-20240307-v1:0"
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
    fake: FakeBedrock
    fake_url: str
    url: str
    client: openai.OpenAI


def provider(url: str, *, secret: str = "fake-secret", extra: str = "") -> str:
    return (
        f"{{type: bedrock, region: us-east-1, endpoint_url: '{url}', aws_access_key_id: AKIDFAKE, "
        f"aws_secret_access_key: {secret}{extra}}}"
    )


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    fake = FakeBedrock()
    with ServerThread(fake.app) as upstream:
        config = f"""
{ONE_ATTEMPT}
providers:
  bedrock: {provider(upstream.url)}
  bedrock-native: {provider(upstream.url, extra=", json_mode: native")}
  bedrock-badkey: {provider(upstream.url, secret="wrong-secret-123")}
models:
  claude: {{deployments: [{{provider: bedrock, model: '{CLAUDE}', timeouts: {{first_token_s: 1, total_s: 3}}}}]}}
  claude-native: {{deployments: [{{provider: bedrock-native, model: '{CLAUDE}'}}]}}
  claude-badkey: {{deployments: [{{provider: bedrock-badkey, model: '{CLAUDE}'}}]}}
  titan: {{mode: embeddings, deployments: [{{provider: bedrock, model: 'amazon.titan-embed-text-v2:0'}}]}}
  cohere: {{mode: embeddings, deployments: [{{provider: bedrock, model: cohere.embed-english-v3}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            yield Rig(fake, upstream.url, url, sdk)


def test_chat_is_signed_mapped_and_schema_valid(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(
        model="claude", messages=MESSAGES, max_tokens=50, temperature=1.7, stop=["END"]
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: Where is Paris?"
    assert completion.choices[0].finish_reason == "stop"
    sent = rig.fake.requests[-1]
    assert sent.model_id == CLAUDE and sent.operation == "converse"  # the fake verified the SigV4 signature
    assert sent.json["system"] == [{"text": "Be brief."}]
    assert sent.json["inferenceConfig"] == {"maxTokens": 50, "temperature": 1.0, "stopSequences": ["END"]}
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


def test_stream_with_usage(rig: Rig, openapi: OpenAPISchemas) -> None:
    body = {"model": "claude", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", rig.url + "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "You said: Where is Paris?"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert rig.fake.requests[-1].operation == "converse-stream"


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_call(rig: Rig, stream: bool) -> None:
    rig.fake.script(Reply(tool_use={"name": "get_weather", "input": {"city": "Paris"}}))
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    request = {"model": "claude", "messages": messages, "tools": [WEATHER]}
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
        call = first.message.tool_calls[0]  # type: ignore[index]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"} and call_id
    assert rig.fake.requests[-1].json["toolConfig"]["toolChoice"] == {"auto": {}}

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "22 C and sunny"},
    ]
    answer = rig.client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert answer.choices[0].finish_reason == "stop"
    turns = rig.fake.requests[-1].json["messages"]
    assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0]["toolUse"] == {
        "toolUseId": call_id,
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert turns[2]["content"][0]["toolResult"]["toolUseId"] == call_id


def test_json_mode_by_forced_tool(rig: Rig) -> None:
    rig.fake.script(Reply(tool_use={"name": "json_response", "input": {"city": "Paris", "country": "France"}}))
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}}}
    reply = rig.client.chat.completions.create(
        model="claude",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris", "country": "France"}
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls
    config = rig.fake.requests[-1].json["toolConfig"]
    assert config["toolChoice"] == {"tool": {"name": "json_response"}}
    assert config["tools"][0]["toolSpec"]["inputSchema"]["json"] == schema


def test_json_mode_native_uses_output_config(rig: Rig) -> None:
    rig.client.chat.completions.create(
        model="claude-native", messages=MESSAGES, response_format={"type": "json_object"}
    )
    text_format = rig.fake.requests[-1].json["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema"
    assert json.loads(text_format["structure"]["jsonSchema"]["schema"]) == {"type": "object"}


@pytest.mark.parametrize("model", ["titan", "cohere"])
def test_embeddings(rig: Rig, model: str, openapi: OpenAPISchemas) -> None:
    raw = rig.client.embeddings.with_raw_response.create(model=model, input=["alpha", "beta"], encoding_format="float")
    openapi.validate("CreateEmbeddingResponse", raw.http_response.json())
    floats = raw.parse()
    assert [item.index for item in floats.data] == [0, 1] and floats.usage.prompt_tokens > 0
    decoded = rig.client.embeddings.create(model=model, input=["alpha", "beta"])  # base64 on the wire
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    assert floats.data[0].embedding != floats.data[1].embedding


ERRORS = [
    (fake_bedrock.THROTTLING, ErrorKind.RATE_LIMITED, 429),
    (fake_bedrock.MODEL_NOT_READY, ErrorKind.UNAVAILABLE, 503),
    (fake_bedrock.SERVICE_UNAVAILABLE, ErrorKind.UNAVAILABLE, 503),
    (fake_bedrock.CONTEXT_TOO_LONG, ErrorKind.CONTEXT_WINDOW, 400),
    (fake_bedrock.INVALID_MODEL, ErrorKind.INVALID_REQUEST, 400),
    (fake_bedrock.ACCESS_DENIED, ErrorKind.AUTH, 502),
    (fake_bedrock.MODEL_TIMEOUT, ErrorKind.TIMEOUT, 504),
    (fake_bedrock.MODEL_ERROR, ErrorKind.INTERNAL, 502),
    (fake_bedrock.INTERNAL, ErrorKind.INTERNAL, 502),
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
    if kind is ErrorKind.CONTEXT_WINDOW:
        assert response.json()["error"]["code"] == "context_length_exceeded"
    rig.fake.script(behaviour)
    assert adapter_error(rig.fake_url, stream=stream).kind is kind


def adapter_error(url: str, *, stream: bool, secret: str = "fake-secret") -> ProviderError:
    config = BedrockConfig(
        type="bedrock",
        region="us-east-1",
        endpoint_url=url,
        aws_access_key_id="AKIDFAKE",
        aws_secret_access_key=secret,  # type: ignore[arg-type]
    )
    return call_adapter(lambda http: BedrockAdapter("bedrock", config, http), CLAUDE, MESSAGES, stream=stream)


@pytest.mark.parametrize(
    ("exception_type", "code"),
    [
        ("throttlingException", "rate_limit_exceeded"),
        ("serviceUnavailableException", "upstream_unavailable"),
        ("modelStreamErrorException", "upstream_error"),
        ("validationException", "invalid_request"),
    ],
)
def test_exception_frames_mid_stream_end_the_stream_with_an_error(rig: Rig, exception_type: str, code: str) -> None:
    rig.fake.script(StreamException(after_chunks=2, exception_type=exception_type, message="The request is malformed."))
    received = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in rig.client.chat.completions.create(model="claude", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            received += "".join(choice.delta.content or "" for choice in chunk.choices)
    assert received == "word0 word1 "
    assert caught.value.code == code


def test_cut_stream_is_an_error_not_a_short_answer(rig: Rig) -> None:
    rig.fake.script(CutStream(after_chunks=2))
    with httpx.stream(
        "POST", rig.url + "/v1/chat/completions", json={"model": "claude", "messages": MESSAGES, "stream": True}
    ) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in payloads and json.loads(payloads[-1])["error"]["code"] == "upstream_error"


def test_wrong_secret_is_a_clear_auth_error_that_never_shows_the_secret(rig: Rig) -> None:
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "claude-badkey", "messages": MESSAGES})
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    message = response.json()["error"]["message"]
    assert "bedrock-badkey" in message and CLAUDE in message
    assert "wrong-secret-123" not in response.text
    error = adapter_error(rig.fake_url, stream=False, secret="wrong-secret-123")
    assert error.kind is ErrorKind.AUTH and "wrong-secret-123" not in error.message


def test_images_go_inline_and_remote_urls_are_refused(rig: Rig) -> None:
    pixel = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{pixel}"}},
    ]
    rig.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    blocks = rig.fake.requests[-1].json["messages"][0]["content"]
    assert blocks[1] == {"image": {"format": "png", "source": {"bytes": pixel}}}
    content[1] = {"type": "image_url", "image_url": {"url": "http://169.254.169.254/latest/meta-data"}}
    with pytest.raises(openai.BadRequestError) as caught:
        rig.client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert caught.value.param == "messages[0].content[1]"


def test_credentials_from_the_standard_aws_chain_and_session_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """No keys in the config: botocore's chain finds them (here in the environment), session token included."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSESSION")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "session-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "the-session-token")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fake = FakeBedrock({"AKIDSESSION": "session-secret"}, session_tokens={"AKIDSESSION": "the-session-token"})
    with ServerThread(fake.app) as upstream:
        config = f"""
{ONE_ATTEMPT}
providers:
  chain: {{type: bedrock, region: eu-west-1, endpoint_url: '{upstream.url}'}}
models:
  claude: {{deployments: [{{provider: chain, model: '{CLAUDE}'}}]}}
"""
        with serve_gateway(config) as url:
            response = httpx.post(url + "/v1/chat/completions", json={"model": "claude", "messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert fake.requests[-1].access_key == "AKIDSESSION"
    assert fake.requests[-1].headers["x-amz-security-token"] == "the-session-token"


def test_prompt_cache_tokens_count_as_prompt_tokens_and_are_reported(rig: Rig) -> None:
    rig.fake.script(Reply(cache_read_tokens=40, cache_write_tokens=12))
    raw = httpx.post(rig.url + "/v1/chat/completions", json={"model": "claude", "messages": MESSAGES}).json()
    usage = raw["usage"]
    bedrock_usage = rig.fake.requests[-1]  # the fake computed inputTokens from the prompt alone
    assert usage["prompt_tokens_details"] == {"cached_tokens": 40, "cache_write_tokens": 12}
    assert usage["prompt_tokens"] >= 52 and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert bedrock_usage.operation == "converse"


# --- prefill: a final assistant message is continued -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefill_is_the_last_turn_without_trailing_whitespace(rig: Rig, stream: bool) -> None:
    """Claude on Bedrock refuses a final assistant text ending in whitespace, as Anthropic does."""
    assert BedrockAdapter.supports_prefill
    messages: list[Any] = [*MESSAGES, {"role": "assistant", "content": [{"type": "text", "text": "It is in \n "}]}]
    body = {"model": "claude", "messages": messages, "stream": stream}
    response = httpx.post(rig.url + "/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    sent = rig.fake.requests[-1]
    assert sent.operation == ("converse-stream" if stream else "converse")
    assert sent.json["messages"][-1] == {"role": "assistant", "content": [{"text": "It is in"}]}


def test_only_the_final_assistant_text_is_trimmed_and_a_blank_prefill_is_dropped(rig: Rig) -> None:
    history: list[Any] = [
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "In France.  "},
        {"role": "user", "content": "And Rome?"},
    ]
    rig.client.chat.completions.create(model="claude", messages=[*history, {"role": "assistant", "content": "In "}])
    sent = rig.fake.requests[-1].json["messages"]
    assert sent[1]["content"] == [{"text": "In France.  "}]  # earlier turns are left alone
    assert sent[-1]["content"] == [{"text": "In"}]

    # Converse refuses blank text blocks: a whitespace-only prefill goes, and the model answers the user turn
    blank = [*history, {"role": "assistant", "content": "  "}]
    reply = rig.client.chat.completions.create(model="claude", messages=blank)
    assert reply.choices[0].message.content == "You said: And Rome?"
    assert [turn["role"] for turn in rig.fake.requests[-1].json["messages"]] == ["user", "assistant", "user"]

    call = {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    ending_in_a_call = [*history, {"role": "assistant", "content": "Checking. ", "tool_calls": [call]}]
    params = ChatCompletionRequest.model_validate({"model": "m", "messages": ending_in_a_call, "tools": [WEATHER]})
    turns = to_converse(params, json_mode="tool").body["messages"]
    assert turns[-1]["content"][0] == {"text": "Checking. "}  # the turn ends in a tool call, not in text
