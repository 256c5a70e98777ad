"""Prove FakeTogether speaks Together: the official together SDK must parse each behaviour, and the openai SDK
(what an OpenAI-compatible adapter uses) must survive Together's quirky stream chunks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import together

from tests.fakes.together import (
    EOS_TOKEN_ID,
    CloudflareTimeout,
    ContextTooLong,
    Error,
    FakeTogether,
    Hang,
    Overloaded,
    Reply,
    StreamChunks,
)

LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
USER: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(autouse=True)
def _no_together_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads TOGETHER_* (base URL, key, extra headers); a developer's shell must not redirect it."""
    for name in ("TOGETHER_API_KEY", "TOGETHER_BASE_URL", "TOGETHER_PROJECT_ID", "TOGETHER_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def served() -> Iterator[FakeTogether]:
    """One server for the module: starting uvicorn dominates the cost of each test."""
    with FakeTogether() as running:
        yield running


@pytest.fixture
def fake(served: FakeTogether) -> FakeTogether:
    served.reset()
    return served


@pytest.fixture
def client(fake: FakeTogether) -> Iterator[together.Together]:
    with together.Together(api_key="k", base_url=fake.url, max_retries=0, timeout=10) as sdk:
        yield sdk


@pytest.fixture
def oai(fake: FakeTogether) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
        yield sdk


# --- together SDK ---------------------------------------------------------------------------------


def test_chat_parses_with_together_shapes(client: together.Together, fake: FakeTogether) -> None:
    fake.script(Reply(content="Hi there"))
    completion = client.chat.completions.create(model=LLAMA, messages=USER, top_k=40, repetition_penalty=1.1)
    choice = completion.choices[0]
    assert choice.message is not None and choice.message.content == "Hi there"
    assert choice.finish_reason == "eos" and isinstance(choice.seed, int)
    assert completion.prompt == [] and not completion.id.startswith("chatcmpl-")
    assert completion.usage is not None
    assert completion.usage.to_dict() == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    (recorded,) = fake.requests
    assert (recorded.path, recorded.headers["authorization"]) == ("/v1/chat/completions", "Bearer k")
    assert recorded.json["top_k"] == 40 and recorded.json["repetition_penalty"] == 1.1


def test_stream_chunks_carry_role_token_id_logprobs_and_final_usage(
    client: together.Together, fake: FakeTogether
) -> None:
    fake.script(Reply(content="one two three"))
    chunks = list(client.chat.completions.create(model=LLAMA, messages=USER, stream=True))
    assert all(len(c.choices) == 1 for c in chunks), "no empty opening chunk and no usage-only chunk"
    assert all(c.choices[0].delta.role == "assistant" for c in chunks)
    assert all(isinstance(c.choices[0].delta.token_id, int) for c in chunks)
    assert all(isinstance(c.choices[0].logprobs, float) for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    *body, last = chunks
    assert all(c.usage is None and c.choices[0].finish_reason is None for c in body)
    assert last.choices[0].finish_reason == "eos" and last.choices[0].delta.token_id == EOS_TOKEN_ID
    assert last.usage is not None and (last.usage.completion_tokens, last.usage.total_tokens) == (3, 8)
    assert len({c.id for c in chunks}) == 1
    assert "stream_options" not in fake.requests[0].json, "the recording is what the client sent"
    assert fake.stream_finished.is_set()


def test_embeddings(client: together.Together, fake: FakeTogether) -> None:
    result = client.embeddings.create(model="BAAI/bge-large-en-v1.5", input=["a b", "c"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 8
    assert result.model == "BAAI/bge-large-en-v1.5"
    assert fake.requests[0].path == "/v1/embeddings"


def test_models_is_a_bare_array(fake: FakeTogether) -> None:
    response = httpx.get(fake.url + "/v1/models", headers={"authorization": "Bearer k"})
    models = response.json()
    assert isinstance(models, list)
    assert {m["id"]: m["type"] for m in models}["BAAI/bge-large-en-v1.5"] == "embedding"
    assert all({"pricing", "context_length", "display_name"} <= m.keys() for m in models)
    assert httpx.get(fake.url + "/v1/models").status_code == 401


def test_errors(client: together.Together, fake: FakeTogether) -> None:
    fake.script(ContextTooLong(), Overloaded(), CloudflareTimeout(), Error(429), Hang(30))
    with pytest.raises(together.BadRequestError) as context:
        client.chat.completions.create(model=LLAMA, messages=USER)
    body: Any = context.value.body
    assert body["error"]["code"] is None and body["error"]["param"] is None
    assert body["error"]["message"] == (
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 8193. "
        "Given: 9000 `inputs` tokens and 512 `max_new_tokens`"
    )
    with pytest.raises(together.InternalServerError) as overloaded:
        client.chat.completions.create(model=LLAMA, messages=USER)
    assert overloaded.value.status_code == 503
    with pytest.raises(together.InternalServerError) as timeout:
        client.chat.completions.create(model=LLAMA, messages=USER)
    assert (timeout.value.status_code, timeout.value.body) == (524, "error code: 524")
    with pytest.raises(together.RateLimitError):
        client.chat.completions.create(model=LLAMA, messages=USER)
    with pytest.raises(together.APITimeoutError):
        client.chat.completions.create(model=LLAMA, messages=USER, timeout=0.3)
    with pytest.raises(together.NotFoundError) as unknown:
        client.chat.completions.create(model="no/such-model", messages=USER)
    assert (body := unknown.value.body) and body["error"]["code"] == "model_not_available"  # type: ignore[index]
    assert len(fake.requests) == 6


def test_bad_key(fake: FakeTogether) -> None:
    with together.Together(api_key="nope", base_url=fake.url, max_retries=0) as sdk:
        with pytest.raises(together.AuthenticationError) as caught:
            sdk.chat.completions.create(model=LLAMA, messages=USER)
    body: Any = caught.value.body
    assert body == {
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert body["error"]["message"].startswith("Invalid API key provided")
    assert fake.auth_failures == 1


def test_error_event_mid_stream(client: together.Together, fake: FakeTogether) -> None:
    fake.script(StreamChunks(chunks=2, then="error_event"))
    received = ""
    with pytest.raises(together.APIError, match="upstream exploded"):
        for chunk in client.chat.completions.create(model=LLAMA, messages=USER, stream=True):
            received += chunk.choices[0].delta.content or ""
    assert received == "word0 word1 "


# --- openai SDK on Together's /v1 -----------------------------------------------------------------


def test_openai_sdk_parses_quirky_chunks(oai: openai.OpenAI, fake: FakeTogether) -> None:
    fake.script(Reply(content="one two"))
    chunks = list(oai.chat.completions.create(model=LLAMA, messages=USER, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two"
    assert all(c.choices[0].delta.role == "assistant" for c in chunks)
    assert all(isinstance(c.choices[0].logprobs, float) for c in chunks), "left unvalidated, not an object"
    assert all(isinstance((c.choices[0].delta.model_extra or {})["token_id"], int) for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "eos"  # type: ignore[comparison-overlap]
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 7
    completion = oai.chat.completions.create(model=LLAMA, messages=USER)
    assert completion.choices[0].finish_reason == "eos"  # type: ignore[comparison-overlap]
    assert (completion.model_extra or {})["prompt"] == []


def test_include_usage_gives_no_separate_usage_chunk(oai: openai.OpenAI, fake: FakeTogether) -> None:
    """The together SDK cannot send stream_options; an OpenAI-compatible adapter might, and must cope either way."""
    stream = oai.chat.completions.create(
        model=LLAMA, messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    assert [c.usage is not None for c in chunks].count(True) == 1 and chunks[-1].usage is not None
    assert fake.requests[0].json["stream_options"] == {"include_usage": True}


def test_openai_sdk_streamed_tool_call(oai: openai.OpenAI, fake: FakeTogether) -> None:
    fake.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    arguments, name, finish = "", None, None
    for chunk in oai.chat.completions.create(model=LLAMA, messages=USER, stream=True):
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            if delta.function and delta.function.name:
                name = delta.function.name
            if delta.function and delta.function.arguments:
                arguments += delta.function.arguments
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")
