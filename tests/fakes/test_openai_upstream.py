"""Prove FakeOpenAI speaks real OpenAI: the official SDK must parse each behaviour as it would the service."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.openai_upstream import (
    DEFAULT_CONTENT,
    Error,
    FakeOpenAI,
    Hang,
    Malformed,
    Reply,
    StreamChunks,
)
from tests.support.server import ServerThread

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture
def server(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app) as running:
        yield running
    assert not any(t.name == f"uvicorn:{running.port}" for t in threading.enumerate()), "server thread leaked"


@pytest.fixture
def client(server: ServerThread) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
        yield sdk


def test_non_stream_reply_parses_to_typed_completion(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(content="Bonjour tout le monde"))
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=USER)
    choice = completion.choices[0]
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    assert completion.service_tier == "default"
    assert choice.message.content == "Bonjour tout le monde"
    assert choice.message.refusal is None and choice.message.annotations == []
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 0


def test_default_reply_and_verbatim_usage(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    usage = {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33}
    fake.script(Reply(usage=usage, finish_reason="length"))
    completion = client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == DEFAULT_CONTENT
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 22)


def test_tool_calls_round_trip(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]))
    completion = client.chat.completions.create(model="m", messages=USER)
    message = completion.choices[0].message
    assert message.content is None
    assert completion.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_streamed_tool_call_arguments_join_by_index(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    calls = [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        },
        {"name": "get_time", "arguments": {"zone": "Europe/Paris"}},
    ]
    fake.script(Reply(tool_calls=calls))
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    fragments = 0
    finish = None
    for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = arguments.get(delta.index, "") + delta.function.arguments
                    fragments += 1
    assert names == {0: "get_weather", 1: "get_time"}
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris"},
        1: {"zone": "Europe/Paris"},
    }
    assert fragments > 4, "arguments must be split over several chunks"
    assert finish == "tool_calls"


def test_stream_with_include_usage(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Reply(content="one two three four"))
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == "one two three four"
    assert len(content_chunks) == 4
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert all(c.obfuscation for c in chunks)
    assert len({c.id for c in chunks}) == 1
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 4


def test_stream_wire_framing_matches_openai(server: ServerThread) -> None:
    """What the SDK hides: `data: ` framing, `usage: null` only with include_usage, `[DONE]` last."""
    request = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(server.url + "/v1/chat/completions", json=request, timeout=10)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all("usage" in c and isinstance(c["obfuscation"], str) for c in chunks)

    plain = {"model": "m", "messages": USER, "stream": True}
    plain_chunks = [e for e in httpx.post(server.url + "/v1/chat/completions", json=plain).text.split("\n\n") if e]
    assert all('"usage"' not in e for e in plain_chunks)


def test_n_gives_that_many_choices(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="m", messages=USER, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert all(c.message.content == DEFAULT_CONTENT for c in completion.choices)


def test_rate_limit_error_keeps_retry_after(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Error(429, headers={"retry-after": "2"}))
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=USER)
    error = caught.value
    assert error.status_code == 429
    assert error.response.headers["retry-after"] == "2"
    assert error.code == "rate_limit_exceeded" and error.type == "requests"
    assert error.request_id and error.request_id.startswith("req_")
    assert len(fake.requests) == 1, "max_retries=0 means exactly one attempt"


def test_server_error_and_context_errors(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Error(500), Error(400, body="context"), Error(503, body="<html>bad gateway</html>"))
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="m", messages=USER)
    assert server_error.value.status_code == 500 and server_error.value.type == "server_error"
    with pytest.raises(openai.BadRequestError) as context:
        client.chat.completions.create(model="m", messages=USER)
    assert (context.value.code, context.value.param) == ("context_length_exceeded", "messages")
    with pytest.raises(openai.InternalServerError) as raw:
        client.chat.completions.create(model="m", messages=USER)
    assert raw.value.response.text == "<html>bad gateway</html>"


def test_error_event_mid_stream_raises_after_content(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=3, then="error_event"))
    received: list[str] = []
    with pytest.raises(openai.APIError, match="upstream exploded"):
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "word0 word1 word2 "


def test_dropped_stream_is_a_connection_error(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=2, then="drop"))
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "word0 word1 "
    assert not fake.stream_finished.is_set() and not fake.stream_cancelled.is_set()


def test_malformed_body_is_not_an_api_error(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    """The SDK lets the JSON decode error escape as-is, so adapters must catch ValueError themselves."""
    fake.script(Malformed())
    with pytest.raises(ValueError):
        client.chat.completions.create(model="m", messages=USER)


def test_hang_times_out_then_recovers(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(Hang(30), Hang(0.05))
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=USER, timeout=0.3)
    completion = client.chat.completions.create(model="m", messages=USER)
    assert completion.choices[0].message.content == DEFAULT_CONTENT


def _float32(value: str) -> list[float]:
    raw = base64.b64decode(value)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def test_embeddings_float_and_base64_agree(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    inputs: Any = ["hello world", "bye", [1, 2, 3]]
    floats = client.embeddings.create(model="text-embedding-3-small", input=inputs, encoding_format="float")
    decoded = client.embeddings.create(model="text-embedding-3-small", input=inputs)  # SDK asks for base64
    assert fake.requests[1].json["encoding_format"] == "base64"
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in floats.data)
    assert len({tuple(d.embedding) for d in floats.data}) == 3
    for exact, via_base64 in zip(floats.data, decoded.data, strict=True):
        assert via_base64.embedding == pytest.approx(exact.embedding, rel=1e-6, abs=1e-7)
    assert floats.usage.prompt_tokens == 2 + 1 + 3

    raw = client.embeddings.create(model="e", input=[[5, 6]], encoding_format="base64", dimensions=4)
    assert isinstance(raw.data[0].embedding, str), "explicit base64 is left for the caller to decode"
    again = client.embeddings.create(model="e", input=[[5, 6]], encoding_format="float", dimensions=4)
    assert _float32(raw.data[0].embedding) == pytest.approx(again.data[0].embedding, rel=1e-6, abs=1e-7)


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini"]


def test_requests_record_body_and_bearer(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    client.chat.completions.create(model="gpt-4o-mini", messages=USER, temperature=0.5)
    (recorded,) = fake.requests
    assert (recorded.method, recorded.path) == ("POST", "/v1/chat/completions")
    assert recorded.headers["authorization"] == "Bearer k"
    assert recorded.json == {"model": "gpt-4o-mini", "messages": USER, "temperature": 0.5}


def test_client_closing_a_stream_cancels_it(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=200, chunk_delay_s=0.02))
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    for seen, _chunk in enumerate(stream):
        if seen == 3:
            break
    stream.close()
    assert fake.stream_cancelled.wait(5), "the fake never noticed the client leaving"
    assert not fake.stream_finished.is_set()


def test_async_client_streams(server: ServerThread, fake: FakeOpenAI) -> None:
    fake.script(Reply(content="async works fine", delay_s=0.05))

    async def run() -> str:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(model="m", messages=USER, stream=True)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    assert asyncio.run(run()) == "async works fine"
    assert fake.stream_finished.is_set()


# --- faults for the resilience tests ----------------------------------------------------------------


def _data_lines(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def test_stall_keeps_the_connection_open_until_the_client_hangs_up(server: ServerThread, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=2, then="stall"))
    body = {"model": "m", "messages": USER, "stream": True}
    received: list[str] = []
    timeout = httpx.Timeout(5, read=0.5)
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=timeout) as response:
        with pytest.raises(httpx.ReadTimeout):  # the content, then nothing at all: no finish, no [DONE], no EOF
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
        assert not fake.stall_abandoned.is_set()
    assert "".join(received) == "word0 word1 "
    assert fake.stall_abandoned.wait(5), "the fake never noticed the client hanging up"
    assert fake.stream_cancelled.is_set() and not fake.stream_finished.is_set()
    assert len(fake.requests) == 1  # recorded on arrival, however the stream ended


def test_malformed_event_then_a_normal_finish(server: ServerThread, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=2, then="malformed"))
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        payloads = _data_lines(response)
    assert payloads[-1] == "[DONE]"
    broken = []
    for payload in payloads[:-1]:
        try:
            json.loads(payload)
        except ValueError:
            broken.append(payload)
    assert len(broken) == 1 and payloads.index(broken[0]) == 3  # role chunk, word0, word1, then the bad event
    finish, usage = json.loads(payloads[-3]), json.loads(payloads[-2])
    assert finish["choices"][0]["finish_reason"] == "stop" and usage["choices"] == []
    fake.script(StreamChunks(chunks=2, then="malformed"))
    with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0) as sdk:
        with pytest.raises(ValueError):  # the SDK does not skip the bad event either: its stream fails there
            for _chunk in sdk.chat.completions.create(model="m", messages=USER, stream=True):
                pass


def test_finish_without_usage_or_done_ends_the_body_cleanly(server: ServerThread, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=2, then="finish_no_done"))
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        payloads = _data_lines(response)  # no exception: a complete chunked body
    assert "[DONE]" not in payloads
    chunks = [json.loads(payload) for payload in payloads]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["choices"] for chunk in chunks)  # no usage-only chunk
    assert fake.stream_finished.wait(5)


def test_unknown_stream_endings_are_refused() -> None:
    with pytest.raises(ValueError, match="then"):
        StreamChunks(then="cut")  # "drop" is the abrupt cut


def test_script_forever_replaces_the_default_reply_until_changed_or_reset(
    client: openai.OpenAI, fake: FakeOpenAI
) -> None:
    fake.script_forever(Error(503))
    fake.script(Reply(content="queued first"))
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "queued first"
    for _ in range(3):  # an outage: every request, on every endpoint
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=USER)
        assert caught.value.status_code == 503
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="e", input="x")
    fake.script_forever(Reply(content="healthy again"))
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == "healthy again"
    assert len(fake.requests) == 6
    fake.script_forever(StreamChunks(chunks=1, then="drop"))
    fake.reset()
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content == DEFAULT_CONTENT


def test_streams_cut_short_are_still_recorded(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.script(StreamChunks(chunks=200, chunk_delay_s=0.02), StreamChunks(chunks=2, then="drop"))
    stream = client.chat.completions.create(model="m", messages=USER, stream=True)
    next(iter(stream))
    stream.close()
    assert fake.stream_cancelled.wait(5)
    with pytest.raises(openai.APIConnectionError):
        for _chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            pass
    assert len(fake.requests) == 2
