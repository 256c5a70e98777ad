"""Prove FakeAzureOpenAI speaks Azure OpenAI: the official openai SDK (AzureOpenAI and the v1 route) must parse
each behaviour as it would the real service, so adapter tests written against the fake mean something."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.azure import (
    COGNITIVE_SERVICES_SCOPE,
    ContentFiltered,
    Error,
    FakeAzureOpenAI,
    Hang,
    PromptFiltered,
    RateLimited,
    Reply,
    StreamChunks,
)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]
API_VERSION = "2024-10-21"


@pytest.fixture(scope="module")
def served() -> Iterator[FakeAzureOpenAI]:
    """One server for the module: starting uvicorn dominates the cost of each test."""
    with FakeAzureOpenAI() as running:
        yield running


@pytest.fixture
def fake(served: FakeAzureOpenAI) -> FakeAzureOpenAI:
    served.reset()
    return served


@pytest.fixture
def client(fake: FakeAzureOpenAI) -> Iterator[openai.AzureOpenAI]:
    with openai.AzureOpenAI(
        azure_endpoint=fake.url, api_key="k", api_version=API_VERSION, max_retries=0, timeout=10
    ) as sdk:
        yield sdk


def _fetch_token(fake: FakeAzureOpenAI, secret: str | None = None) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": fake.client_id,
        "client_secret": fake.client_secret if secret is None else secret,
        "scope": COGNITIVE_SERVICES_SCOPE,
    }
    return httpx.post(fake.token_url, data=form, timeout=10)


# --- happy paths ----------------------------------------------------------------------------------


def test_chat_parses_and_keeps_filter_results_in_model_extra(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=0.2)
    choice = completion.choices[0]
    assert choice.message.content and choice.finish_reason == "stop"
    assert completion.model == "gpt-4o-mini-2024-07-18", "Azure reports the deployment's underlying model"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    extra = completion.model_extra or {}
    assert extra["prompt_filter_results"][0]["content_filter_results"]["jailbreak"] == {
        "filtered": False,
        "detected": False,
    }
    verdict = (choice.model_extra or {})["content_filter_results"]
    assert verdict["hate"] == {"filtered": False, "severity": "safe"}
    (recorded,) = fake.requests
    assert recorded.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    assert recorded.query == {"api-version": API_VERSION}
    assert recorded.deployment == "gpt-4o-mini"
    assert recorded.headers["api-key"] == "k" and "authorization" not in recorded.headers
    assert recorded.json == {"model": "gpt-4o-mini", "messages": USER, "temperature": 0.2}


def test_stream_opens_with_azure_empty_chunk(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(Reply(content="one two three"))
    stream = client.chat.completions.create(
        model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    first = chunks[0]
    assert first.choices == [] and (first.id, first.model, first.created) == ("", "", 0)
    assert "prompt_filter_results" in (first.model_extra or {})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert {c.model for c in chunks[1:]} == {"gpt-4o-2024-11-20"}
    with_text = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert all(
        (c.choices[0].model_extra or {})["content_filter_results"]["hate"]["filtered"] is False for c in with_text
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3
    assert fake.stream_finished.is_set()


def test_embeddings_on_the_deployment_route(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["a b", "c"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 8
    assert result.model == "text-embedding-3-small" and result.usage.prompt_tokens == 3
    decoded = client.embeddings.create(model="text-embedding-3-small", input="a b")  # the SDK asks for base64
    assert decoded.data[0].embedding == pytest.approx(result.data[0].embedding, rel=1e-6, abs=1e-7)
    assert fake.requests[0].path == "/openai/deployments/text-embedding-3-small/embeddings"


def test_tool_call_reply(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    fake.script(Reply(tool_calls=[call]), Reply(tool_calls=[call]))
    completion = client.chat.completions.create(model="gpt-4o", messages=USER)
    message = completion.choices[0].message
    assert completion.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None
    function = message.tool_calls[0].function  # type: ignore[union-attr]
    assert (function.name, json.loads(function.arguments)) == ("get_weather", {"city": "Paris"})
    arguments = ""
    for chunk in client.chat.completions.create(model="gpt-4o", messages=USER, stream=True):
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.arguments:
                    arguments += delta.function.arguments
    assert json.loads(arguments) == {"city": "Paris"}


def test_entra_token_provider(fake: FakeAzureOpenAI) -> None:
    def provider() -> str:
        response = _fetch_token(fake)
        response.raise_for_status()
        grant = response.json()
        assert (grant["token_type"], grant["expires_in"]) == ("Bearer", 3599)
        return str(grant["access_token"])

    with openai.AzureOpenAI(
        azure_endpoint=fake.url, azure_ad_token_provider=provider, api_version=API_VERSION, max_retries=0
    ) as sdk:
        assert sdk.chat.completions.create(model="gpt-4o-mini", messages=USER).choices[0].message.content
        sdk.embeddings.create(model="text-embedding-3-small", input="x")
    assert fake.token_requests == 2, "the SDK calls the provider once per request"
    headers = fake.requests[0].headers
    assert headers["authorization"].startswith("Bearer ey") and "api-key" not in headers


def test_entra_failures(fake: FakeAzureOpenAI) -> None:
    refused = _fetch_token(fake, secret="wrong")
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_client"
    assert refused.json()["error_description"].startswith("AADSTS7000215:")
    fake.expires_in = 0
    stale = _fetch_token(fake).json()["access_token"]
    with openai.AzureOpenAI(
        azure_endpoint=fake.url, azure_ad_token=stale, api_version=API_VERSION, max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as expired:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert expired.value.code == "401" and "Access token" in expired.value.message
    assert fake.token_requests == 2 and fake.auth_failures == 1


def test_v1_route_with_plain_openai_client(fake: FakeAzureOpenAI) -> None:
    with openai.OpenAI(base_url=fake.url + "/openai/v1/", api_key="k", max_retries=0, timeout=10) as sdk:
        completion = sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
        assert "prompt_filter_results" in (completion.model_extra or {})
        assert len(sdk.embeddings.create(model="text-embedding-3-small", input="x").data) == 1
        with pytest.raises(openai.NotFoundError) as missing:
            sdk.chat.completions.create(model="no-such-deployment", messages=USER)
    assert missing.value.code == "DeploymentNotFound"
    assert [(r.path, r.deployment) for r in fake.requests] == [
        ("/openai/v1/chat/completions", "gpt-4o-mini"),
        ("/openai/v1/embeddings", "text-embedding-3-small"),
        ("/openai/v1/chat/completions", "no-such-deployment"),
    ]
    assert fake.requests[0].headers["authorization"] == "Bearer k" and fake.requests[0].query == {}


# --- gates ----------------------------------------------------------------------------------------


def test_auth_and_routing_errors(fake: FakeAzureOpenAI) -> None:
    with openai.AzureOpenAI(azure_endpoint=fake.url, api_key="bad", api_version=API_VERSION, max_retries=0) as sdk:
        with pytest.raises(openai.AuthenticationError) as bad_key:
            sdk.chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert bad_key.value.code == "401" and "Access denied due to invalid subscription key" in bad_key.value.message
    with openai.AzureOpenAI(azure_endpoint=fake.url, api_key="k", api_version=API_VERSION, max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError) as no_deployment:
            sdk.chat.completions.create(model="gpt-5-nope", messages=USER)
    assert no_deployment.value.code == "DeploymentNotFound"
    chat = fake.url + "/openai/deployments/gpt-4o-mini/chat/completions"
    no_version = httpx.post(chat, json={"messages": USER}, headers={"api-key": "k"})
    assert (no_version.status_code, no_version.json()) == (
        404,
        {"error": {"code": "404", "message": "Resource not found"}},
    )
    bearer_key = httpx.post(chat, params={"api-version": API_VERSION}, json={}, headers={"authorization": "Bearer k"})
    assert bearer_key.status_code == 401, "a key as Bearer only works on the v1 route"
    unknown_path = httpx.get(fake.url + "/openai/models", params={"api-version": API_VERSION})
    assert (unknown_path.status_code, unknown_path.json()["error"]["code"]) == (404, "404")


# --- Azure behaviours -----------------------------------------------------------------------------


def test_content_filtered_answer(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(ContentFiltered(), ContentFiltered(partial="I was about to say"))
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    choice = completion.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("content_filter", None)
    assert (choice.model_extra or {})["content_filter_results"]["hate"] == {"filtered": True, "severity": "high"}
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "I was about to say"
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "content_filter"
    assert (last.model_extra or {})["content_filter_results"]["hate"]["filtered"] is True


def test_prompt_filtered_is_a_bad_request(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(PromptFiltered())
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    error = caught.value
    assert (error.status_code, error.code, error.param) == (400, "content_filter", "prompt")
    assert "content management policy" in error.message
    body: Any = error.body
    assert body["innererror"]["code"] == "ResponsibleAIPolicyViolation"
    assert body["innererror"]["content_filter_result"]["hate"] == {"filtered": True, "severity": "high"}


def test_rate_limited_carries_retry_after(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(RateLimited(retry_after_ms=1500))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    error = caught.value
    assert error.code == "429"
    assert error.response.headers["retry-after"] == "2" and error.response.headers["retry-after-ms"] == "1500"
    assert f"ChatCompletions_Create Operation under Azure OpenAI API version {API_VERSION}" in error.message
    assert "Please retry after 2 seconds." in error.message
    assert len(fake.requests) == 1


def test_inherited_behaviours(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(Error(500), Hang(30), StreamChunks(chunks=2, then="error_event"))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o-mini", messages=USER, timeout=0.3)
    received = ""
    with pytest.raises(openai.APIError, match="upstream exploded"):
        for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True):
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "word0 word1 "
    assert fake.client_gone.wait(5)


def test_client_closing_a_stream_cancels_it(client: openai.AzureOpenAI, fake: FakeAzureOpenAI) -> None:
    fake.script(StreamChunks(chunks=200, chunk_delay_s=0.02))
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=USER, stream=True)
    for seen, _chunk in enumerate(stream):
        if seen == 3:
            break
    stream.close()
    assert fake.stream_cancelled.wait(5), "the fake never noticed the client leaving"
    assert not fake.stream_finished.is_set()
