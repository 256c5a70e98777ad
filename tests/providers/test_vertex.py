"""The `vertex` adapter against the Vertex fake (its own OAuth token endpoint, Gemini SSE), through the
gateway, with the OpenAI SDK as the client."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from providers.errors import ErrorKind, ProviderError
from providers.vertex import VertexAdapter, VertexConfig
from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes import vertex as fake_vertex
from tests.fakes.vertex import DEFAULT_TEXT, CutStream, Error, FakeVertex, Hang, Reply
from tests.support.adapters import adapter_error as call_adapter
from tests.support.openapi import OpenAPISchemas

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
    fake: FakeVertex
    key_file: Path
    url: str
    client: openai.OpenAI


def vertex_provider(fake: FakeVertex, key_file: Path) -> str:
    return (
        f"{{type: vertex, project: fake-project, location: us-central1, endpoint_url: '{fake.url}', "
        f"credentials_file: '{key_file}'}}"
    )


@pytest.fixture(scope="module")
def module_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with FakeVertex() as fake:
        key_file = fake.write_service_account_file(tmp_path_factory.mktemp("vertex") / "sa.json")
        config = f"""
{ONE_ATTEMPT}
providers:
  vertex: {vertex_provider(fake, key_file)}
models:
  gemini: {{deployments: [{{provider: vertex, model: gemini-2.5-flash, timeouts: {{first_token_s: 1, total_s: 3}}}}]}}
  embed: {{mode: embeddings, deployments: [{{provider: vertex, model: text-embedding-005}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            yield Rig(fake, key_file, url, sdk)


@pytest.fixture
def rig(module_rig: Rig) -> Rig:
    module_rig.fake.script()  # nothing queued from an earlier test
    return module_rig


def test_chat_is_mapped_and_schema_valid(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(
        model="gemini", messages=MESSAGES, max_tokens=64, temperature=0.3, seed=7, n=1
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    sent = rig.fake.requests[-1]
    assert (sent.project, sent.location, sent.model, sent.action) == (
        "fake-project",
        "us-central1",
        "gemini-2.5-flash",
        "generateContent",
    )
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent.json["contents"] == [{"role": "user", "parts": [{"text": "Where is Paris?"}]}]
    assert sent.json["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 64, "seed": 7}
    assert completion.usage is not None and completion.usage.prompt_tokens > 0


def test_stream_with_usage(rig: Rig, openapi: OpenAPISchemas) -> None:
    body = {"model": "gemini", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", rig.url + "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_TEXT and len(chunks) > 4  # streamed in pieces, not at once
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    assert len({chunk["id"] for chunk in chunks}) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_two_turn_tool_call(rig: Rig, stream: bool) -> None:
    rig.fake.script(Reply(function_call={"name": "get_weather", "args": {"city": "Paris"}}))
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    request = {"model": "gemini", "messages": messages, "tools": [WEATHER], "tool_choice": "required"}
    if stream:
        calls, finish = [], None
        for chunk in rig.client.chat.completions.create(**request, stream=True):
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                calls += list(choice.delta.tool_calls or ())
        assert finish == "tool_calls" and len(calls) == 1
        call_id, name, arguments = calls[0].id, calls[0].function.name, calls[0].function.arguments
    else:
        first = rig.client.chat.completions.create(**request).choices[0]
        assert first.finish_reason == "tool_calls"  # Gemini said STOP; a call was made
        call = first.message.tool_calls[0]  # type: ignore[index]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"} and call_id
    sent = rig.fake.requests[-1].json
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"] == WEATHER["function"]["parameters"]

    messages += [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "22 C and sunny"},
    ]
    answer = rig.client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER])
    assert answer.choices[0].message.content == DEFAULT_TEXT
    contents = rig.fake.requests[-1].json["contents"]
    assert [content["role"] for content in contents] == ["user", "model", "user"]
    assert contents[1]["parts"][0]["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert contents[2]["parts"][0]["functionResponse"] == {
        "name": "get_weather",
        "response": {"result": "22 C and sunny"},
    }


def test_thought_signatures_survive_the_round_trip(rig: Rig) -> None:
    rig.fake.script(Reply(function_call={"name": "get_weather", "args": {"city": "Paris"}}, thought_signature="c2ln"))
    messages: list[Any] = [{"role": "user", "content": "Weather?"}]
    call = rig.client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER]).choices[0]
    tool_call = call.message.tool_calls[0]  # type: ignore[index]
    messages += [
        call.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": tool_call.id, "content": '{"temp": 22}'},
    ]
    rig.client.chat.completions.create(model="gemini", messages=messages, tools=[WEATHER])
    parts = rig.fake.requests[-1].json["contents"]
    assert parts[1]["parts"][0]["thoughtSignature"] == "c2ln"
    assert parts[2]["parts"][0]["functionResponse"]["response"] == {"temp": 22}  # JSON results go as objects


def test_json_mode(rig: Rig) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    rig.fake.script(Reply(text='{"city": "Paris"}'))
    reply = rig.client.chat.completions.create(
        model="gemini",
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris"}
    generation = rig.fake.requests[-1].json["generationConfig"]
    assert generation["responseMimeType"] == "application/json" and generation["responseJsonSchema"] == schema


def test_safety_block_is_content_filter(rig: Rig) -> None:
    rig.fake.script(Reply(blocked=True))
    reply = rig.client.chat.completions.create(model="gemini", messages=MESSAGES)
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content is None


def test_embeddings(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.embeddings.with_raw_response.create(
        model="embed", input=["alpha", "beta"], encoding_format="float", dimensions=64
    )
    openapi.validate("CreateEmbeddingResponse", raw.http_response.json())
    floats = raw.parse()
    assert len(floats.data) == 2 and len(floats.data[0].embedding) == 64 and floats.usage.prompt_tokens > 0
    assert rig.fake.requests[-1].json["parameters"] == {"outputDimensionality": 64}
    decoded = rig.client.embeddings.create(model="embed", input=["alpha", "beta"], dimensions=64)
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)


ERRORS = [
    (fake_vertex.RESOURCE_EXHAUSTED, ErrorKind.RATE_LIMITED, 429),
    (fake_vertex.UNAVAILABLE, ErrorKind.UNAVAILABLE, 503),
    (fake_vertex.CONTEXT_TOO_LONG, ErrorKind.CONTEXT_WINDOW, 400),
    (
        Error(400, "INVALID_ARGUMENT", "Unable to submit request because it has an empty text parameter."),
        ErrorKind.INVALID_REQUEST,
        400,
    ),
    (fake_vertex.PERMISSION_DENIED, ErrorKind.AUTH, 502),
    (fake_vertex.MODEL_NOT_FOUND, ErrorKind.NOT_FOUND, 502),
    (fake_vertex.INTERNAL, ErrorKind.INTERNAL, 502),
    (fake_vertex.DEADLINE_EXCEEDED, ErrorKind.TIMEOUT, 504),
    (Hang(5), ErrorKind.TIMEOUT, 504),
]


@pytest.mark.parametrize(("behaviour", "kind", "status"), ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_map_to_kind_and_status(
    rig: Rig, openapi: OpenAPISchemas, behaviour: Any, kind: ErrorKind, status: int, stream: bool
) -> None:
    rig.fake.script(behaviour)
    response = httpx.post(
        rig.url + "/v1/chat/completions", json={"model": "gemini", "messages": MESSAGES, "stream": stream}
    )
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    if kind is ErrorKind.CONTEXT_WINDOW:
        assert response.json()["error"]["code"] == "context_length_exceeded"
    rig.fake.script(behaviour)
    assert adapter_error(rig, stream=stream).kind is kind


def adapter_error(rig: Rig, *, stream: bool) -> ProviderError:
    config = VertexConfig(
        type="vertex",
        project="fake-project",
        location="us-central1",
        endpoint_url=rig.fake.url,
        credentials_file=str(rig.key_file),
    )
    return call_adapter(lambda http: VertexAdapter("vertex", config, http), "gemini-2.5-flash", MESSAGES, stream=stream)


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (CutStream(after_events=2), "upstream_error"),
        (CutStream(after_events=2, error=fake_vertex.RESOURCE_EXHAUSTED), "rate_limit_exceeded"),
    ],
)
def test_cut_or_failed_stream_ends_with_an_error_event(rig: Rig, behaviour: Any, code: str) -> None:
    rig.fake.script(behaviour)
    with httpx.stream(
        "POST", rig.url + "/v1/chat/completions", json={"model": "gemini", "messages": MESSAGES, "stream": True}
    ) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert "[DONE]" not in payloads and json.loads(payloads[-1])["error"]["code"] == code


def test_token_is_fetched_once_and_reused(rig: Rig) -> None:
    rig.client.chat.completions.create(model="gemini", messages=MESSAGES)  # a token is in hand from here on
    tokens, failures = rig.fake.token_requests, rig.fake.auth_failures
    for _ in range(3):
        rig.client.chat.completions.create(model="gemini", messages=MESSAGES)
    assert (rig.fake.token_requests, rig.fake.auth_failures) == (tokens, failures)


def test_expiring_token_is_refreshed_before_a_request_fails(tmp_path: Path) -> None:
    with FakeVertex(expires_in=2) as fake:  # every token expires in 2 s: inside the 5-minute margin
        key_file = fake.write_service_account_file(tmp_path / "sa.json")
        config = f"""
{ONE_ATTEMPT}
providers:
  vertex: {vertex_provider(fake, key_file)}
models:
  gemini: {{deployments: [{{provider: vertex, model: gemini-2.5-flash}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            for _ in range(3):
                sdk.chat.completions.create(model="gemini", messages=MESSAGES)  # type: ignore[arg-type]
                time.sleep(2.1)  # the token the fake issued is now expired
            assert fake.auth_failures == 0  # refreshed ahead of time, never sent stale
            assert fake.token_requests >= 3

            fake.expires_in = 3600
            sdk.chat.completions.create(model="gemini", messages=MESSAGES)  # type: ignore[arg-type]  # a long-lived token
            fake.revoke_tokens()  # ...revoked early: one 401, one refresh, then success
            assert sdk.chat.completions.create(model="gemini", messages=MESSAGES).choices  # type: ignore[arg-type]
            assert fake.auth_failures == 1


def test_application_default_credentials(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """`adc: true` takes whatever google.auth.default() finds; here GOOGLE_APPLICATION_CREDENTIALS."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(rig.key_file))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    config = f"""
{ONE_ATTEMPT}
providers:
  vertex: {{type: vertex, project: fake-project, location: us-central1, endpoint_url: '{rig.fake.url}', adc: true}}
models:
  gemini: {{deployments: [{{provider: vertex, model: gemini-2.5-flash}}]}}
"""
    with serve_gateway(config) as url:
        response = httpx.post(url + "/v1/chat/completions", json={"model": "gemini", "messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == DEFAULT_TEXT
