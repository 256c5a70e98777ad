"""Prove FakeAnthropic speaks the real Messages API: the official SDK must parse each behaviour as it would the service.

One server serves the whole module (each test resets the fake), so the suite stays fast.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2  # what anthropic 2.14 is built on (a fork of httpx)
import pytest
import yaml
from anthropic.types import MessageParam, ToolParam

from tests.fakes.anthropic import (
    API_ERROR,
    AUTHENTICATION,
    DEFAULT_CONTINUATION,
    DEFAULT_TEXT,
    NOT_FOUND,
    OVERLOADED,
    PERMISSION,
    PREFILL_UNSUPPORTED,
    PROMPT_TOO_LONG,
    RATE_LIMITED,
    CutStream,
    Error,
    FakeAnthropic,
    Hang,
    Reply,
    StreamError,
)

RECORDING = (
    Path(__file__).resolve().parents[1]
    / "data"
    / "recordings"
    / "anthropic"
    / "test_request_stream_fallback_for_high_max_tokens.yaml"
)
MODEL = "claude-haiku-4-5"  # not in the SDK's DEPRECATED_MODELS, which warn on every call
USER: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER: list[ToolParam] = [
    {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]
HEADERS = {"x-api-key": "sk-ant-fake", "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as running:
        yield running


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture
def client(fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-fake", max_retries=0, timeout=10) as sdk:
        yield sdk


def _post(fake: FakeAnthropic, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(fake.url + "/v1/messages", json=body, headers=HEADERS if headers is None else headers)


# --- non-streaming ------------------------------------------------------------------------------


def test_text_reply_parses_to_typed_message(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="Bonjour tout le monde"))
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER, system="Be brief.")
    assert message.id.startswith("msg_01") and message.type == "message" and message.role == "assistant"
    assert message.model == MODEL
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Bonjour tout le monde")]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert message.usage.output_tokens == 4 and message.usage.input_tokens > 0
    assert message.usage.cache_read_input_tokens == 0 and message.usage.cache_creation_input_tokens == 0
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages" and sent.query == {}
    assert sent.headers["authorization"] == "Bearer sk-ant-fake"  # SDK 2.14 no longer sends x-api-key
    assert sent.headers["anthropic-version"]
    assert sent.json["system"] == "Be brief." and sent.json["max_tokens"] == 100


def test_default_text_echoes_last_user_text(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert message.content[0].type == "text"
    assert message.content[0].text == "You said: What is the capital of France?"
    image = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    blocks: list[MessageParam] = [{"role": "user", "content": [{"type": "image", "source": image}]}]  # type: ignore[typeddict-item]
    message = client.messages.create(model=MODEL, max_tokens=100, messages=blocks)
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_TEXT


def test_tool_use_with_input_dict(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="Let me check.", tool_uses=[{"name": "get_weather", "input": {"city": "Paris"}}]))
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER, tools=WEATHER)
    assert message.stop_reason == "tool_use"
    text, tool = message.content
    assert text.type == "text" and text.text == "Let me check."
    assert tool.type == "tool_use" and tool.name == "get_weather" and tool.input == {"city": "Paris"}
    assert re.fullmatch(r"toolu_01[A-Za-z0-9]{22}", tool.id)

    # The next turn: a tool_result answering that id is accepted; one answering another id is not.
    history: list[MessageParam] = [
        *USER,
        {"role": "assistant", "content": [b.to_dict() for b in message.content]},  # type: ignore[misc]
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "Sunny, 22C"}]},
    ]
    answer = client.messages.create(model=MODEL, max_tokens=100, messages=history, tools=WEATHER)
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"
    assert answer.content[0].text == "You said: Sunny, 22C"
    history[2] = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_other", "content": "x"}]}
    with pytest.raises(anthropic.BadRequestError, match="unexpected `tool_use_id`"):
        client.messages.create(model=MODEL, max_tokens=100, messages=history, tools=WEATHER)


def test_tools_are_only_called_when_declared(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    call = {"name": "get_weather", "input": {"city": "Paris"}}
    fake.script(Reply(tool_uses=[call]), Reply(tool_uses=[call, call]))
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert [b.type for b in message.content] == ["text"] and message.stop_reason == "end_turn"
    message = client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=USER,
        tools=WEATHER,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert [b.type for b in message.content] == ["tool_use"]


def test_usage_with_cache_counts_and_overrides(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="ok", cache_read_tokens=1500, cache_creation_tokens=200), Reply(usage={"input_tokens": 7}))
    usage = client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (1500, 200)
    assert usage.cache_creation is not None and usage.cache_creation.ephemeral_5m_input_tokens == 200
    assert usage.output_tokens == 1 and usage.service_tier == "standard"
    usage = client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage
    assert usage.input_tokens == 7


def test_max_tokens_truncates_and_stop_sequences_cut(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="one two three four five six"), Reply(text="alpha beta END gamma"))
    message = client.messages.create(model=MODEL, max_tokens=3, messages=USER)
    assert message.content[0].type == "text" and message.content[0].text == "one two three"
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stop_sequences=["END", "beta"])
    assert message.content[0].type == "text" and message.content[0].text == "alpha "
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "beta")


def test_beta_query_is_accepted(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    # SDK 2.14's beta client posts to plain /v1/messages; older ones (as recorded) add ?beta=true.
    assert client.beta.messages.create(model=MODEL, max_tokens=100, messages=USER).stop_reason == "end_turn"
    assert fake.requests[-1].query == {}
    message = client.messages.create(model=MODEL, max_tokens=100, messages=USER, extra_query={"beta": "true"})
    assert message.stop_reason == "end_turn"
    assert fake.requests[-1].path == "/v1/messages" and fake.requests[-1].query == {"beta": "true"}


# --- auth, version and validation -----------------------------------------------------------------


def test_x_api_key_is_accepted_and_wrong_or_missing_keys_are_not(fake: FakeAnthropic) -> None:
    assert _post(fake, {"model": MODEL, "max_tokens": 5, "messages": USER}).status_code == 200
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-wrong", max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            wrong.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert caught.value.status_code == 401 and caught.value.type == "authentication_error"
    response = _post(fake, {"model": MODEL, "max_tokens": 5, "messages": USER}, {"anthropic-version": "2023-06-01"})
    assert response.status_code == 401
    assert response.json()["error"] == {"type": "authentication_error", "message": "x-api-key header is required"}


def test_missing_anthropic_version_is_400(fake: FakeAnthropic) -> None:
    omit = anthropic.Omit()
    with anthropic.Anthropic(
        base_url=fake.url, api_key="sk-ant-fake", max_retries=0, default_headers={"anthropic-version": omit}
    ) as sdk:
        with pytest.raises(anthropic.BadRequestError) as caught:
            sdk.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert "anthropic-version" not in fake.requests[-1].headers
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    assert caught.value.api_message == "anthropic-version: header is required"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": USER}, "max_tokens: Field required"),
        ({"model": MODEL, "max_tokens": 5, "messages": []}, "messages: at least one message is required"),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *USER]},
            'Unexpected role "system"',
        ),
        (
            {"model": MODEL, "max_tokens": 5, "messages": [{"role": "assistant", "content": "hi"}]},
            'first message must use the "user" role',
        ),
        ({"model": MODEL, "max_tokens": 5, "messages": [*USER, *USER]}, "roles must alternate"),
        (
            {
                "model": MODEL,
                "max_tokens": 5,
                "tools": WEATHER,
                "messages": [
                    *USER,
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "x", "input": {}}]},
                    {"role": "user", "content": "no result"},
                ],
            },
            "`tool_use` ids were found without `tool_result` blocks",
        ),
    ],
)
def test_request_mistakes_are_invalid_request_errors(fake: FakeAnthropic, body: dict[str, Any], message: str) -> None:
    response = _post(fake, body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert message in payload["error"]["message"]
    assert payload["request_id"].startswith("req_") and response.headers["request-id"] == payload["request_id"]


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "exception", "status", "error_type"),
    [
        (OVERLOADED, anthropic.OverloadedError, 529, "overloaded_error"),
        (RATE_LIMITED, anthropic.RateLimitError, 429, "rate_limit_error"),
        (PROMPT_TOO_LONG, anthropic.BadRequestError, 400, "invalid_request_error"),
        (AUTHENTICATION, anthropic.AuthenticationError, 401, "authentication_error"),
        (PERMISSION, anthropic.PermissionDeniedError, 403, "permission_error"),
        (NOT_FOUND, anthropic.NotFoundError, 404, "not_found_error"),
        (API_ERROR, anthropic.InternalServerError, 500, "api_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_raise_the_sdk_exception(
    client: anthropic.Anthropic,
    fake: FakeAnthropic,
    error: Error,
    exception: type[anthropic.APIStatusError],
    status: int,
    error_type: str,
    stream: bool,
) -> None:
    fake.script(error)
    with pytest.raises(exception) as caught:
        if stream:
            with client.messages.stream(model="claude-x", max_tokens=100, messages=USER) as events:
                events.get_final_message()
        else:
            client.messages.create(model="claude-x", max_tokens=100, messages=USER)
    raised = caught.value
    assert type(raised) is exception and raised.status_code == status and raised.type == error_type
    assert raised.request_id is not None and raised.request_id.startswith("req_")
    assert raised.body == {
        "type": "error",
        "error": {"type": error_type, "message": error.message.replace("{model}", "claude-x")},
        "request_id": raised.request_id,
    }
    if error is RATE_LIMITED:
        assert raised.response.headers["retry-after"] == "3"
    if error is OVERLOADED:
        assert isinstance(raised, anthropic.InternalServerError)  # OverloadedError subclasses it in 2.14
    if error is NOT_FOUND:
        assert raised.api_message == "model: claude-x"
    if error is PROMPT_TOO_LONG:
        assert raised.api_message == "prompt is too long: 210000 tokens > 200000 maximum"


def test_hang_times_out_and_the_fake_sees_the_client_leave(fake: FakeAnthropic) -> None:
    fake.script(Hang(5))
    with anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-fake", max_retries=0, timeout=0.3) as sdk:
        with pytest.raises(anthropic.APITimeoutError):
            sdk.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert fake.client_gone.wait(3)


# --- streaming ------------------------------------------------------------------------------------


def test_stream_text_and_final_message(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="The capital of France is Paris.", cache_read_tokens=30))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["The", " capital", " of", " France", " is", " Paris."]
    assert final.content[0].type == "text" and final.content[0].text == "".join(pieces)
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert final.usage.output_tokens == 6 and final.usage.cache_read_input_tokens == 30
    assert (
        final.usage.input_tokens
        == client.messages.create(model=MODEL, max_tokens=100, messages=USER).usage.input_tokens
    )
    assert fake.stream_finished.is_set() and not fake.stream_cancelled.is_set()
    assert fake.requests[0].json["stream"] is True


def test_stream_max_tokens_truncation(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text="one two three four"))
    with client.messages.stream(model=MODEL, max_tokens=2, messages=USER) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "one two"
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 2


def test_stream_tool_use_input_assembled_from_partial_json(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    arguments = {"city": "Paris", "unit": "celsius", "days": [1, 2, 3], "note": "café ☀"}
    fake.script(Reply(tool_uses=[{"name": "get_weather", "input": arguments}, {"name": "get_weather", "input": {}}]))
    partials: list[str] = []
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER, tools=WEATHER) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta":
                partials.append(event.delta.partial_json)
        final = stream.get_final_message()
    assert len(partials) > 3 and partials[0] == ""
    assert final.stop_reason == "tool_use"
    first, second = final.content
    assert first.type == "tool_use" and first.input == arguments and first.id.startswith("toolu_01")
    assert second.type == "tool_use" and second.input == {}


def test_mid_stream_error_event_raises_api_status_error(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(StreamError(after_chunks=2))
    pieces: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            for text in stream.text_stream:
                pieces.append(text)
    assert pieces == ["word0 ", "word1 "]
    raised = caught.value
    assert type(raised) is anthropic.APIStatusError  # the HTTP status was 200, so no subclass applies
    assert raised.status_code == 200 and raised.type == "overloaded_error" and raised.api_message == "Overloaded"
    assert isinstance(raised, anthropic.APIError)


def test_stream_error_on_non_stream_request_is_http_error(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(StreamError(after_chunks=2, error_type="api_error", message="Internal server error"))
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)
    assert caught.value.status_code == 500


def test_cut_stream_fails_the_reader(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(CutStream(after_chunks=2), CutStream(after_chunks=1))
    pieces: list[str] = []
    with pytest.raises(httpx2.RemoteProtocolError, match="incomplete chunked read"):  # not wrapped by the SDK
        with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
            for text in stream.text_stream:
                pieces.append(text)
    assert pieces == ["word0 ", "word1 "]
    with pytest.raises(anthropic.APIConnectionError):
        client.messages.create(model=MODEL, max_tokens=100, messages=USER)


def test_client_leaving_mid_stream_sets_stream_cancelled(client: anthropic.Anthropic, fake: FakeAnthropic) -> None:
    fake.script(Reply(text=" ".join(f"w{i}" for i in range(50)), chunk_delay_s=0.02))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as stream:
        for _ in stream.text_stream:
            break
    assert fake.stream_cancelled.wait(3)
    assert not fake.stream_finished.is_set()


def test_stream_events_are_flushed_one_by_one(fake: FakeAnthropic) -> None:
    fake.script(Reply(text="a b c d", chunk_delay_s=0.1))
    body = {"model": MODEL, "max_tokens": 100, "messages": USER, "stream": True}
    started = time.monotonic()
    with httpx.stream("POST", fake.url + "/v1/messages", json=body, headers=HEADERS) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        first_delta_at = None
        text = ""
        for chunk in response.iter_text():
            text += chunk
            if first_delta_at is None and "content_block_delta" in text:
                first_delta_at = time.monotonic() - started
    total = time.monotonic() - started
    assert first_delta_at is not None and total - first_delta_at > 0.2  # the first piece did not wait for the rest
    assert re.search(r"\S {0,12}}\n\n", text)


async def test_async_stream(fake: FakeAnthropic) -> None:
    fake.script(Reply(text="Paris it is", tool_uses=[{"name": "get_weather", "input": {"city": "Paris"}}]))
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="sk-ant-fake", max_retries=0) as sdk:
        async with sdk.messages.stream(model=MODEL, max_tokens=100, messages=USER, tools=WEATHER) as stream:
            pieces = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
    assert "".join(pieces) == "Paris it is"
    assert [b.type for b in final.content] == ["text", "tool_use"]
    assert final.content[1].type == "tool_use" and final.content[1].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 3


# --- the byte format against a real recording -------------------------------------------------------


def _sse_shape(text: str) -> list[tuple[str, Any]]:
    """(event name, key structure of its data) per event: the shape to compare, not the values."""

    def keys(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: keys(v) for k, v in value.items()}
        return type(value).__name__ if value is not None else "null"

    shape = []
    for block in re.split(r"\r?\n\r?\n", text.strip()):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        shape.append((lines["event"], keys(json.loads(lines["data"]))))
    return shape


def test_stream_matches_the_recorded_event_shape(fake: FakeAnthropic) -> None:
    recorded = yaml.safe_load(RECORDING.read_text())["interactions"][0]
    recorded_text: str = recorded["response"]["body"]["string"]
    fake.script(Reply(text="2"))
    response = _post(fake, recorded["request"]["parsed_body"])
    assert response.status_code == 200
    ours = response.text
    assert _sse_shape(ours) == _sse_shape(recorded_text)
    # Same padding habit: every data object but ping may end in a run of spaces; ping is verbatim.
    assert 'event: ping\ndata: {"type": "ping"}\n\n' in ours
    runs = [len(m) for m in re.findall(r"( *)}\n", ours)]
    assert len(set(runs)) > 1, "padding should vary between events"
    events = [line.split(": ", 1)[1] for line in ours.splitlines() if line.startswith("event: ")]
    assert events == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


# --- prefill --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_prefill_is_continued(client: anthropic.Anthropic, fake: FakeAnthropic, stream: bool) -> None:
    full = client.messages.create(model=MODEL, max_tokens=100, messages=USER).content[0]
    assert full.type == "text" and full.text == "You said: What is the capital of France?"
    for prefill in ("You said: What is the cap", "You said: What is the"):  # mid-word, and before a space
        messages: list[MessageParam] = [*USER, {"role": "assistant", "content": prefill}]
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as events:
                message = events.get_final_message()
        else:
            message = client.messages.create(model=MODEL, max_tokens=100, messages=messages)
        assert message.content[0].type == "text" and prefill + message.content[0].text == full.text
        assert message.usage.output_tokens == len(message.content[0].text.split())

    fake.script(Reply(text="Scripted rest."))  # a scripted text the answer does not start with: sent as is
    blocks: list[MessageParam] = [*USER, {"role": "assistant", "content": [{"type": "text", "text": "Well,"}]}]
    message = client.messages.create(model=MODEL, max_tokens=100, messages=blocks)
    assert message.content[0].type == "text" and message.content[0].text == "Scripted rest."
    message = client.messages.create(model=MODEL, max_tokens=100, messages=blocks)
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_CONTINUATION

    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=MODEL, max_tokens=5, messages=[*USER, {"role": "assistant", "content": "Paris "}])
    assert caught.value.api_message == "messages: final assistant content cannot end with trailing whitespace"


@pytest.mark.parametrize("reject", [True, {MODEL}])
@pytest.mark.parametrize("stream", [False, True])
def test_models_without_prefill_reject_a_final_assistant_turn(
    client: anthropic.Anthropic, fake: FakeAnthropic, reject: Any, stream: bool
) -> None:
    fake.reject_prefill = reject
    fake.script(Reply(text="kept for the next request"))
    messages: list[MessageParam] = [*USER, {"role": "assistant", "content": "The capital is"}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        if stream:
            with client.messages.stream(model=MODEL, max_tokens=100, messages=messages) as events:
                events.get_final_message()
        else:
            client.messages.create(model=MODEL, max_tokens=100, messages=messages)
    assert caught.value.status_code == 400 and caught.value.type == "invalid_request_error"
    assert caught.value.api_message == PREFILL_UNSUPPORTED
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": PREFILL_UNSUPPORTED},
        "request_id": caught.value.request_id,
    }
    ok = client.messages.create(model=MODEL, max_tokens=100, messages=USER)  # a user turn last is fine
    assert ok.content[0].type == "text" and ok.content[0].text == "kept for the next request"
    if reject is True:
        with pytest.raises(anthropic.BadRequestError):
            client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=messages)
    else:  # only the listed models refuse
        other = client.messages.create(model="claude-opus-4-8", max_tokens=100, messages=messages)
        assert other.content[0].type == "text" and other.content[0].text == DEFAULT_CONTINUATION
    fake.reset()
    assert fake.reject_prefill is False
