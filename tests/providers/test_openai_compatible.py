"""The `openai` adapter against a fake OpenAI-compatible upstream, through the gateway, with the SDK.

Each upstream failure must come out as the right normalized error kind (what routing acts on) and the
right client-facing status, headers and body (what the SDKs act on).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from providers.errors import ErrorKind, ProviderError
from providers.openai_compatible import OpenAICompatibleAdapter, OpenAICompatibleConfig
from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes.openai_upstream import DEFAULT_CONTENT, Error, FakeOpenAI, Hang, Malformed, Reply, StreamChunks
from tests.support.adapters import adapter_error as call_adapter
from tests.support.openapi import OpenAPISchemas
from tests.support.server import ServerThread

API_KEY = "sk-test-secret-4242"
MESSAGES = [{"role": "user", "content": "hello"}]


@dataclass
class Rig:
    fake: FakeOpenAI
    upstream_url: str
    gateway_url: str
    client: openai.OpenAI


def gateway_config(
    upstream_url: str, *, stream_usage: bool = True, timeouts: str = "first_token_s: 1.0, idle_s: 1.0, total_s: 2.5"
) -> str:
    return f"""
{ONE_ATTEMPT}
providers:
  up:
    type: openai
    base_url: {upstream_url}/v1
    api_key: {API_KEY}
    stream_usage: {str(stream_usage).lower()}
    headers: {{x-team: platform}}
models:
  gpt:
    deployments:
      - provider: up
        model: upstream-model-1
        timeouts: {{{timeouts}}}
  vectors: {{mode: embeddings, deployments: [{{provider: up, model: text-embedding-3-small}}]}}
"""


@pytest.fixture
def rig() -> Iterator[Rig]:
    fake = FakeOpenAI()
    with ServerThread(fake.app) as upstream, serve_gateway(gateway_config(upstream.url)) as gateway_url:
        with openai.OpenAI(base_url=gateway_url + "/v1", api_key="client-key", max_retries=0) as client:
            yield Rig(fake, upstream.url, gateway_url, client)


def sse_payloads(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> list[Any]:
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as response:
        assert response.status_code == 200, response.read()
        return [
            line[6:] if line == "data: [DONE]" else json.loads(line[6:])
            for line in response.iter_lines()
            if line.startswith("data: ")
        ]


# --- happy paths ---------------------------------------------------------------------------------


def test_chat_forwards_the_body_with_the_deployment_model_and_credentials(rig: Rig, openapi: OpenAPISchemas) -> None:
    raw = rig.client.chat.completions.with_raw_response.create(
        model="gpt", messages=MESSAGES, temperature=0.2, extra_body={"vendor_option": {"a": 1}}
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    assert raw.parse().choices[0].message.content == DEFAULT_CONTENT
    sent = rig.fake.requests[-1]
    assert sent.json["model"] == "upstream-model-1"
    assert sent.json["temperature"] == 0.2 and sent.json["vendor_option"] == {"a": 1}
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.headers["x-team"] == "platform"
    assert raw.headers["x-gateway-provider"] == "up" and raw.headers["x-gateway-model"] == "upstream-model-1"


def test_tool_calls_pass_through(rig: Rig) -> None:
    rig.fake.script(Reply(tool_calls=[{"name": "lookup", "arguments": {"q": "gateways"}}]))
    reply = rig.client.chat.completions.create(model="gpt", messages=MESSAGES)
    call = reply.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert reply.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "gateways"}  # type: ignore[union-attr]


def test_stream_passes_chunks_through_and_always_asks_for_usage(rig: Rig, openapi: OpenAPISchemas) -> None:
    body = {"model": "gpt", "messages": MESSAGES, "stream": True}
    payloads = sse_payloads(rig.gateway_url, body)
    assert payloads[-1] == "[DONE]"
    chunks = payloads[:-1]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == DEFAULT_CONTENT
    assert all(chunk["choices"] for chunk in chunks)  # the client did not ask for the usage chunk...
    assert rig.fake.requests[-1].json["stream_options"] == {"include_usage": True}  # ...but we did, for accounting
    assert all("obfuscation" in chunk for chunk in chunks)  # upstream fields pass through untouched

    text, usage = "", None
    for chunk in rig.client.chat.completions.create(**body, stream_options={"include_usage": True}):
        text += "".join(choice.delta.content or "" for choice in chunk.choices)
        usage = chunk.usage or usage
    assert text == DEFAULT_CONTENT and usage is not None and usage.completion_tokens > 0


def test_stream_usage_is_estimated_when_the_upstream_gives_none(rig: Rig) -> None:
    with serve_gateway(gateway_config(rig.upstream_url, stream_usage=False)) as url:
        body = {"model": "gpt", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        payloads = sse_payloads(url, body)
    assert "stream_options" not in rig.fake.requests[-1].json
    usage_chunk = payloads[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["id"] == payloads[0]["id"]
    assert usage_chunk["usage"]["prompt_tokens"] > 0 and usage_chunk["usage"]["completion_tokens"] > 0


def test_embeddings_pass_through(rig: Rig) -> None:
    floats = rig.client.embeddings.create(model="vectors", input=["a", "b"], encoding_format="float")
    decoded = rig.client.embeddings.create(model="vectors", input=["a", "b"])  # SDK asks for base64
    assert len(floats.data) == 2
    assert decoded.data[1].embedding == pytest.approx(floats.data[1].embedding, abs=1e-6)
    assert rig.fake.requests[-1].json["model"] == "text-embedding-3-small"


# --- failures before the answer starts ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind", "status", "code"),
    [
        (Error(429, headers={"retry-after": "2"}), ErrorKind.RATE_LIMITED, 429, "rate_limit_exceeded"),
        (Error(500), ErrorKind.INTERNAL, 502, "upstream_error"),
        (Error(503), ErrorKind.UNAVAILABLE, 503, "upstream_unavailable"),
        (Error(400, "context"), ErrorKind.CONTEXT_WINDOW, 400, "context_length_exceeded"),
        (Error(401), ErrorKind.AUTH, 502, "upstream_auth_error"),
        (Error(404), ErrorKind.NOT_FOUND, 502, "upstream_model_not_found"),
        (Error(502, "<html>bad gateway</html>"), ErrorKind.UNAVAILABLE, 503, "upstream_unavailable"),
        (Malformed(), ErrorKind.INTERNAL, 502, "upstream_error"),
        (Hang(5), ErrorKind.TIMEOUT, 504, "upstream_timeout"),
        # An error whose body stalls: bounded by the same limits as any answer.
        (Error(503, stall_body_s=5), ErrorKind.TIMEOUT, 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_map_to_kind_and_client_status(
    rig: Rig, openapi: OpenAPISchemas, behaviour: Any, kind: ErrorKind, status: int, code: str, stream: bool
) -> None:
    rig.fake.script(behaviour)
    started = time.monotonic()
    response = httpx.post(
        rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES, "stream": stream}
    )
    # A hanging upstream costs the first-token limit (1 s) when streaming, the total limit (2.5 s) when not
    # (a non-streamed answer arrives all at once), never minutes.
    assert time.monotonic() - started < (2.5 if stream else 4.0)
    assert response.status_code == status, response.text
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == code
    assert API_KEY not in response.text
    if status in (400, 502) and kind is not ErrorKind.INTERNAL:
        assert response.headers["x-should-retry"] == "false"  # a retry cannot fix it: don't triple the load
    if kind is ErrorKind.RATE_LIMITED:
        assert response.headers["retry-after"] == "2" and response.headers["retry-after-ms"] == "2000"

    rig.fake.script(behaviour)
    assert adapter_error(rig.upstream_url, stream=stream).kind is kind


def adapter_error(upstream_url: str, *, stream: bool) -> ProviderError:
    """Call the adapter directly, without the gateway, and return the normalized error it raised."""
    config = OpenAICompatibleConfig(type="openai", base_url=upstream_url + "/v1", api_key=API_KEY)  # type: ignore[arg-type]
    error = call_adapter(lambda http: OpenAICompatibleAdapter("up", config, http), "m", MESSAGES, stream=stream)
    assert API_KEY not in error.message
    return error


def test_sdk_sees_rate_limit_with_retry_after(rig: Rig) -> None:
    rig.fake.script(Error(429, headers={"retry-after": "7"}))
    with pytest.raises(openai.RateLimitError) as caught:
        rig.client.chat.completions.create(model="gpt", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.response.headers["retry-after"] == "7"


def test_provider_secret_echoed_by_upstream_is_scrubbed(rig: Rig) -> None:
    message = f"Incorrect API key provided: {API_KEY}. You can find your API key at example."
    rig.fake.script(
        Error(
            401,
            body={
                "error": {"message": message, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}
            },
        )
    )
    response = httpx.post(rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES})
    assert response.status_code == 502
    assert API_KEY not in response.text and "***" in response.json()["error"]["message"]


def test_invalid_request_keeps_the_upstream_message_and_param(rig: Rig) -> None:
    error = {
        "message": "Unsupported value: 'messages[0].role' does not support 'developer' with this model.",
        "type": "invalid_request_error",
        "param": "messages[0].role",
        "code": "unsupported_value",
    }
    rig.fake.script(Error(400, body={"error": error}))
    with pytest.raises(openai.BadRequestError) as caught:
        rig.client.chat.completions.create(model="gpt", messages=MESSAGES)  # type: ignore[arg-type]
    assert caught.value.code == "unsupported_value" and caught.value.param == "messages[0].role"
    assert "does not support 'developer'" in caught.value.message


def test_connection_refused_is_503_unavailable(openapi: OpenAPISchemas) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
        with serve_gateway(gateway_config(dead)) as url:
            response = httpx.post(url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES})
    assert response.status_code == 503
    openapi.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_client_read_timeout_header_bounds_the_upstream_wait(rig: Rig) -> None:
    with serve_gateway(gateway_config(rig.upstream_url, timeouts="first_token_s: 30, total_s: 30")) as url:
        rig.fake.script(Hang(10))
        started = time.monotonic()
        response = httpx.post(
            url + "/v1/chat/completions",
            json={"model": "gpt", "messages": MESSAGES},
            headers={"x-stainless-read-timeout": "0.5"},
        )
        assert response.status_code == 504
        assert time.monotonic() - started < 3.0


# --- failures after the stream has started ------------------------------------------------------------


def test_mid_stream_error_event_reaches_the_sdk_as_an_error(rig: Rig) -> None:
    rig.fake.script(StreamChunks(chunks=3, then="error_event"))
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in rig.client.chat.completions.create(model="gpt", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            received += "".join(choice.delta.content or "" for choice in chunk.choices)
    assert received == "word0 word1 word2 "


@pytest.mark.parametrize(
    ("behaviour", "code"),
    [
        (StreamChunks(chunks=3, then="drop"), "upstream_error"),
        (StreamChunks(chunks=3, chunk_delay_s=3.0), "upstream_timeout"),
    ],
)
def test_cut_or_stalled_stream_ends_with_an_error_event_never_done(
    rig: Rig, openapi: OpenAPISchemas, behaviour: Any, code: str
) -> None:
    rig.fake.script(behaviour)
    payloads = sse_payloads(rig.gateway_url, {"model": "gpt", "messages": MESSAGES, "stream": True})
    assert "[DONE]" not in payloads
    openapi.validate("ErrorResponse", payloads[-1])
    assert payloads[-1]["error"]["code"] == code


def test_client_disconnect_mid_stream_cancels_the_upstream_request(rig: Rig) -> None:
    rig.fake.script(StreamChunks(chunks=400, chunk_delay_s=0.02))
    with httpx.stream(
        "POST", rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES, "stream": True}
    ) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    # Leaving the block closed our connection; the gateway must close its upstream call promptly.
    assert rig.fake.stream_cancelled.wait(timeout=3.0)
    assert not rig.fake.stream_finished.is_set()
    # and the gateway keeps serving
    assert rig.client.chat.completions.create(model="gpt", messages=MESSAGES).choices  # type: ignore[arg-type]


def test_upstream_calls_go_through_the_configured_proxy() -> None:
    """The fake plays the proxy: the upstream host does not resolve, so only a proxied call can succeed."""
    fake = FakeOpenAI()
    with ServerThread(fake.app) as proxy:
        config = gateway_config("http://upstream.invalid:9").replace(ONE_ATTEMPT, "", 1)
        config = f"server: {{http_client: {{proxy: '{proxy.url}'}}}}\n" + config
        with serve_gateway(config) as url:
            response = httpx.post(url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES})
    assert response.status_code == 200, response.text
    assert fake.requests[-1].headers["host"] == "upstream.invalid:9"


# --- limits and cancellation, precisely -------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_before_the_answer_starts_cancels_the_upstream_call(rig: Rig, stream: bool) -> None:
    rig.fake.script(Hang(5) if not stream else Reply(delay_s=5))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            rig.gateway_url + "/v1/chat/completions",
            timeout=0.5,
            json={"model": "gpt", "messages": MESSAGES, "stream": stream},
        )
    # The gateway noticed at once and hung up on the upstream, long before its 2.5 s limit.
    gone = rig.fake.stream_cancelled if stream else rig.fake.client_gone
    assert gone.wait(timeout=1.5)


def test_idle_limit_longer_than_first_token_limit_is_honoured(rig: Rig) -> None:
    timeouts = "first_token_s: 0.5, idle_s: 3, total_s: 10"
    with serve_gateway(gateway_config(rig.upstream_url, timeouts=timeouts)) as url:
        rig.fake.script(StreamChunks(chunks=3, chunk_delay_s=1.0))  # 1 s gaps: over first_token_s, under idle_s
        payloads = sse_payloads(url, {"model": "gpt", "messages": MESSAGES, "stream": True})
    assert payloads[-1] == "[DONE]"


def test_first_token_limit_covers_headers_and_first_chunk_together(rig: Rig) -> None:
    # Headers at once, first chunk after 1.6 s: one 1 s budget for both, so this must time out.
    rig.fake.script(Reply(delay_s=1.6))
    response = httpx.post(
        rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES, "stream": True}
    )
    assert response.status_code == 504 and "first chunk" in response.json()["error"]["message"]


def test_multi_line_sse_data_is_reframed_not_forwarded_raw(rig: Rig) -> None:
    """An upstream may split one JSON chunk over several `data:` lines; clients must still get valid SSE."""
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", "logprobs": None}
        ],
    }
    pretty = json.dumps(chunk, indent=1).replace("\n", "\ndata: ")
    rig.fake.script(Error(200, f"data: {pretty}\n\ndata: [DONE]\n\n", headers={"content-type": "text/event-stream"}))
    text = ""
    for event in rig.client.chat.completions.create(model="gpt", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
        text += "".join(choice.delta.content or "" for choice in event.choices)
    assert text == "hi"


def test_out_of_credit_is_not_a_retryable_rate_limit(rig: Rig) -> None:
    rig.fake.script(Error(429, "quota"))
    response = httpx.post(rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES})
    assert response.status_code == 502 and response.headers["x-should-retry"] == "false"
    assert response.json()["error"]["code"] == "insufficient_quota"
    rig.fake.script(Error(429, "quota"))
    assert adapter_error(rig.upstream_url, stream=False).kind is ErrorKind.AUTH


def test_credentials_in_custom_headers_are_scrubbed_too(rig: Rig) -> None:
    config = gateway_config(rig.upstream_url).replace(
        "headers: {x-team: platform}", "headers: {api-key: hdr-secret-99}"
    )
    with serve_gateway(config) as url:
        rig.fake.script(
            Error(
                401, body={"error": {"message": "bad api-key hdr-secret-99", "type": "x", "param": None, "code": None}}
            )
        )
        response = httpx.post(url + "/v1/chat/completions", json={"model": "gpt", "messages": MESSAGES})
    assert response.status_code == 502 and "hdr-secret-99" not in response.text


def test_custom_tool_calls_in_history_are_accepted_and_forwarded(rig: Rig) -> None:
    messages = [
        {"role": "user", "content": "run it"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "ct_1", "type": "custom", "custom": {"name": "shell", "input": "ls"}}],
        },
        {"role": "tool", "tool_call_id": "ct_1", "content": "README.md"},
    ]
    response = httpx.post(rig.gateway_url + "/v1/chat/completions", json={"model": "gpt", "messages": messages})
    assert response.status_code == 200, response.text
    assert rig.fake.requests[-1].json["messages"][1]["tool_calls"][0]["type"] == "custom"
