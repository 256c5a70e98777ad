"""The `azure` and `together` adapters against their fakes, through the gateway, with the OpenAI SDK.

Both speak OpenAI's wire format with an accent; these tests pin the accents: Azure's URLs, auth,
first empty chunk and content filters; Together's `eos`, float logprobs and TGI errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes.azure import ContentFiltered, FakeAzureOpenAI, PromptFiltered, RateLimited
from tests.fakes.openai_upstream import DEFAULT_CONTENT, Error, Hang, Reply
from tests.fakes.together import CloudflareTimeout, ContextTooLong, FakeTogether, Overloaded
from tests.support.openapi import OpenAPISchemas

MESSAGES = [{"role": "user", "content": "Say hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOGETHER_MODEL = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@dataclass
class Rig:
    azure: FakeAzureOpenAI
    together: FakeTogether
    url: str
    client: openai.OpenAI


@pytest.fixture(scope="module")
def module_rig() -> Iterator[Rig]:
    with FakeAzureOpenAI() as azure, FakeTogether() as together:
        entra = (
            f"{{tenant_id: {azure.tenant}, client_id: fake-client-id, client_secret: fake-client-secret, "
            f"authority: '{azure.url}'}}"
        )
        config = f"""
{ONE_ATTEMPT}
providers:
  azure: {{type: azure, endpoint: '{azure.url}', api_key: k, api_version: '2024-10-21'}}
  azure-v1: {{type: azure, endpoint: '{azure.url}', api_style: v1, api_key: k}}
  azure-entra: {{type: azure, endpoint: '{azure.url}', entra: {entra}}}
  together: {{type: together, base_url: '{together.url}/v1', api_key: k}}
models:
  az: {{deployments: [{{provider: azure, model: gpt-4o-mini, timeouts: {{first_token_s: 1, total_s: 3}}}}]}}
  az-v1: {{deployments: [{{provider: azure-v1, model: gpt-4o-mini}}]}}
  az-entra: {{deployments: [{{provider: azure-entra, model: gpt-4o-mini}}]}}
  az-embed: {{mode: embeddings, deployments: [{{provider: azure, model: text-embedding-3-small}}]}}
  bge: {{mode: embeddings, deployments: [{{provider: together, model: BAAI/bge-large-en-v1.5}}]}}
  llama: {{deployments: [{{provider: together, model: '{TOGETHER_MODEL}',
                         timeouts: {{first_token_s: 1, total_s: 3}}}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            yield Rig(azure, together, url, sdk)


@pytest.fixture
def rig(module_rig: Rig) -> Rig:
    module_rig.azure.reset()
    module_rig.together.reset()
    return module_rig


def sse(url: str, body: dict[str, Any]) -> list[Any]:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        return [
            line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]


# --- Azure ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["az", "az-v1", "az-entra"])
def test_azure_chat_on_every_route_and_auth(rig: Rig, openapi: OpenAPISchemas, alias: str) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(model=alias, messages=MESSAGES)
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].message.content == DEFAULT_CONTENT
    sent = rig.azure.requests[-1]
    if alias == "az":
        assert sent.path == "/openai/deployments/gpt-4o-mini/chat/completions"
        assert sent.query == {"api-version": "2024-10-21"} and sent.headers["api-key"] == "k"
    elif alias == "az-v1":
        assert sent.path == "/openai/v1/chat/completions" and sent.json["model"] == "gpt-4o-mini"
    else:
        assert sent.headers["authorization"].startswith("Bearer ") and "api-key" not in sent.headers


def test_azure_entra_token_is_fetched_once_reused_and_renewed_after_a_401(rig: Rig) -> None:
    rig.client.chat.completions.create(model="az-entra", messages=MESSAGES)  # type: ignore[arg-type]
    tokens = rig.azure.token_requests
    for _ in range(3):
        rig.client.chat.completions.create(model="az-entra", messages=MESSAGES)  # type: ignore[arg-type]
    assert rig.azure.token_requests == tokens  # cached
    rig.azure.revoke_tokens()  # revoked early: one 401, one new token, and the client never sees it
    assert rig.client.chat.completions.create(model="az-entra", messages=MESSAGES).choices  # type: ignore[arg-type]
    assert rig.azure.token_requests == tokens + 1


def test_azure_stream_tolerates_the_empty_first_chunk(rig: Rig, openapi: OpenAPISchemas) -> None:
    payloads = sse(
        rig.url, {"model": "az", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    assert chunks[0]["choices"]  # Azure's opening filter-results chunk (no choices, no object) is dropped
    assert rig.azure.requests[-1].json["stream_options"] == {"include_usage": True}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_CONTENT and chunks[-1]["usage"]["total_tokens"] > 0


def test_azure_two_turn_tool_call(rig: Rig) -> None:
    rig.azure.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    first = rig.client.chat.completions.create(model="az", messages=MESSAGES, tools=[WEATHER]).choices[0]  # type: ignore[arg-type,list-item]
    call = first.message.tool_calls[0]  # type: ignore[index]
    messages = [
        *MESSAGES,
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 C"},
    ]
    answer = rig.client.chat.completions.create(model="az", messages=messages, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert first.finish_reason == "tool_calls" and answer.choices[0].message.content == DEFAULT_CONTENT
    assert rig.azure.requests[-1].json["messages"][2]["tool_call_id"] == call.id


def test_azure_json_mode_and_embeddings(rig: Rig) -> None:
    rig.azure.script(Reply(content='{"greeting": "hello"}'))
    reply = rig.client.chat.completions.create(model="az", messages=MESSAGES, response_format={"type": "json_object"})  # type: ignore[arg-type]
    assert json.loads(reply.choices[0].message.content or "") == {"greeting": "hello"}
    assert rig.azure.requests[-1].json["response_format"] == {"type": "json_object"}
    vectors = rig.client.embeddings.create(model="az-embed", input=["a", "b"])
    assert len(vectors.data) == 2 and rig.azure.requests[-1].path.endswith("/text-embedding-3-small/embeddings")


def test_azure_content_filter_outcomes(rig: Rig) -> None:
    rig.azure.script(ContentFiltered())
    filtered = rig.client.chat.completions.create(model="az", messages=MESSAGES)  # type: ignore[arg-type]
    assert filtered.choices[0].finish_reason == "content_filter"
    rig.azure.script(PromptFiltered())
    with pytest.raises(openai.BadRequestError) as caught:
        rig.client.chat.completions.create(model="az", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "content_filter" and caught.value.status_code == 400


def test_azure_rate_limit_keeps_retry_after_ms(rig: Rig) -> None:
    rig.azure.script(RateLimited(retry_after_ms=1500))
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "az", "messages": MESSAGES})
    assert response.status_code == 429
    assert response.headers["retry-after-ms"] == "1500" and response.headers["retry-after"] == "2"


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (Error(401), 502, "upstream_auth_error"),
        (
            Error(404, body={"error": {"code": "DeploymentNotFound", "message": "The API deployment does not exist."}}),
            502,
            "upstream_model_not_found",
        ),
        (Error(400, "context"), 400, "context_length_exceeded"),
        (Error(500), 502, "upstream_error"),
        (Error(503), 503, "upstream_unavailable"),
        (Hang(5), 504, "upstream_timeout"),
    ],
)
def test_azure_errors(rig: Rig, openapi: OpenAPISchemas, behaviour: Any, status: int, code: str) -> None:
    rig.azure.script(behaviour)
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "az", "messages": MESSAGES})
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code


# --- Together ------------------------------------------------------------------------------------------


def test_together_eos_becomes_stop(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(model="llama", messages=MESSAGES)
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].finish_reason == "stop"
    assert rig.together.requests[-1].json["model"] == TOGETHER_MODEL


def test_together_stream_is_normalized(rig: Rig, openapi: OpenAPISchemas) -> None:
    payloads = sse(
        rig.url, {"model": "llama", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    )
    chunks = [p for p in payloads if p != "[DONE]"]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
        assert "token_id" not in chunk and all("token_id" not in c for c in chunk["choices"])
        assert all(not isinstance(c.get("logprobs"), float) for c in chunk["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == DEFAULT_CONTENT
    assert any(c.get("usage") for c in chunks)  # Together puts usage on the last content chunk


def test_together_two_turn_tool_call_json_mode_and_embeddings(rig: Rig, openapi: OpenAPISchemas) -> None:
    rig.together.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    first = rig.client.chat.completions.create(model="llama", messages=MESSAGES, tools=[WEATHER]).choices[0]  # type: ignore[arg-type,list-item]
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]  # type: ignore[index]
    messages = [
        *MESSAGES,
        first.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "22 C"},
    ]
    answer = rig.client.chat.completions.create(model="llama", messages=messages, tools=[WEATHER])  # type: ignore[arg-type,list-item]
    assert answer.choices[0].finish_reason == "stop"
    assert rig.together.requests[-1].json["messages"][2] == {"role": "tool", "tool_call_id": call.id, "content": "22 C"}

    rig.together.script(Reply(content='{"a": 1}'))
    reply = rig.client.chat.completions.create(
        model="llama", messages=MESSAGES, response_format={"type": "json_object"}
    )  # type: ignore[arg-type]
    assert json.loads(reply.choices[0].message.content or "") == {"a": 1}

    raw = rig.client.embeddings.with_raw_response.create(model="bge", input=["a", "b"], encoding_format="float")
    openapi.validate("CreateEmbeddingResponse", raw.http_response.json())
    assert len(raw.parse().data) == 2 and rig.together.requests[-1].json["model"] == "BAAI/bge-large-en-v1.5"


@pytest.mark.parametrize(
    ("behaviour", "status", "code"),
    [
        (ContextTooLong(), 400, "context_length_exceeded"),
        (Overloaded(), 503, "upstream_unavailable"),
        (CloudflareTimeout(), 504, "upstream_timeout"),
        (Error(429, headers={"retry-after": "4"}), 429, "rate_limit_exceeded"),
        (Error(401), 502, "upstream_auth_error"),
    ],
)
def test_together_errors(rig: Rig, openapi: OpenAPISchemas, behaviour: Any, status: int, code: str) -> None:
    rig.together.script(behaviour)
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES})
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code
