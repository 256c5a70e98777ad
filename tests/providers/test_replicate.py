"""The `replicate` adapter against the stateful Replicate fake, through the gateway, with the OpenAI SDK."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ONE_ATTEMPT, serve_gateway
from tests.fakes import replicate as fake_replicate
from tests.fakes.replicate import Fail, FakeReplicate, Hang, Reply
from tests.support.openapi import OpenAPISchemas
from tests.support.server import ServerThread

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Paris?"}]
TOKENS = ["Paris", " is", " in", " France", "."]


@dataclass
class Rig:
    fake: FakeReplicate
    url: str
    client: openai.OpenAI


@pytest.fixture(scope="module")
def module_rig() -> Iterator[Rig]:
    fake = FakeReplicate()
    with ServerThread(fake.app) as upstream:
        config = f"""
{ONE_ATTEMPT}
providers:
  replicate: {{type: replicate, api_token: r8_fake, base_url: '{upstream.url}', wait_s: 1, poll_interval_s: 0.05}}
  replicate-badkey: {{type: replicate, api_token: r8_wrong_555, base_url: '{upstream.url}'}}
models:
  llama: {{deployments: [{{provider: replicate, model: meta/meta-llama-3-8b-instruct,
                          timeouts: {{first_token_s: 4, total_s: 6}}}}]}}
  llama-version: {{deployments: [{{provider: replicate, model: 'acme/llm:{"a" * 64}'}}]}}
  llama-badkey: {{deployments: [{{provider: replicate-badkey, model: meta/meta-llama-3-8b-instruct}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            yield Rig(fake, url, sdk)


@pytest.fixture
def rig(module_rig: Rig) -> Rig:
    module_rig.fake.reset()
    return module_rig


def test_chat_renders_the_prompt_and_reports_usage(rig: Rig, openapi: OpenAPISchemas) -> None:
    rig.fake.script(Reply(tokens=TOKENS, input_tokens=21, output_tokens=5, token_delay_s=0.01))
    raw = rig.client.chat.completions.with_raw_response.create(
        model="llama", messages=MESSAGES, max_tokens=50, stop=["\n\n", "END"], temperature=0.2
    )
    openapi.validate("CreateChatCompletionResponse", raw.http_response.json())
    completion = raw.parse()
    assert completion.choices[0].message.content == "Paris is in France."
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 5)  # type: ignore[union-attr]
    sent = rig.fake.requests[0]
    assert sent.path == "/v1/models/meta/meta-llama-3-8b-instruct/predictions" and sent.headers["prefer"] == "wait=1"
    model_input = sent.json["input"]
    assert model_input["prompt"].startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.")
    assert model_input["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert model_input["prompt_template"] == "{prompt}"
    assert (model_input["max_tokens"], model_input["stop_sequences"], model_input["temperature"]) == (
        50,
        "\n\n,END",
        0.2,
    )
    assert raw.headers["x-gateway-cold-start"] == "false" and float(raw.headers["x-gateway-predict-time"]) > 0


def test_cold_start_is_polled_through_and_reported(rig: Rig) -> None:
    rig.fake.script(
        Reply(tokens=TOKENS, cold_start_s=1.6, token_delay_s=0.01)
    )  # longer than Prefer: wait=1: the adapter polls
    raw = rig.client.chat.completions.with_raw_response.create(model="llama", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == "Paris is in France."
    assert raw.headers["x-gateway-cold-start"] == "true"
    assert float(raw.headers["x-gateway-queue-time"]) >= 1.5
    assert float(raw.headers["x-gateway-predict-time"]) > 0  # compute seconds, for the usage record
    assert sum(1 for r in rig.fake.requests if r.method == "GET") >= 1


def test_community_versions_use_the_predictions_endpoint(rig: Rig) -> None:
    rig.client.chat.completions.create(model="llama-version", messages=MESSAGES)
    sent = rig.fake.requests[0]
    assert sent.path == "/v1/predictions" and sent.json["version"] == "a" * 64


def test_usage_is_estimated_when_the_model_reports_no_token_counts(rig: Rig) -> None:
    rig.fake.script(Reply(tokens=TOKENS, metrics=False))
    usage = rig.client.chat.completions.create(model="llama", messages=MESSAGES).usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 10


def test_stream_with_usage(rig: Rig, openapi: OpenAPISchemas) -> None:
    rig.fake.script(Reply(tokens=TOKENS, token_delay_s=0.02, input_tokens=21, output_tokens=5))
    body = {"model": "llama", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", rig.url + "/v1/chat/completions", json=body) as response:
        payloads = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    for chunk in chunks:
        openapi.validate("CreateChatCompletionStreamResponse", chunk)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Paris is in France."
    )
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["prompt_tokens"] == 21 and chunks[-1]["usage"]["completion_tokens"] == 5
    assert rig.fake.requests[0].json["stream"] is True


@pytest.mark.parametrize(
    "field",
    [
        {"tools": [{"type": "function", "function": {"name": "f"}}]},
        {"response_format": {"type": "json_object"}},
        {"n": 2},
        {"stop": ["a,b"]},
    ],
)
def test_what_replicate_cannot_do_is_a_clear_400(rig: Rig, field: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        rig.client.chat.completions.create(model="llama", messages=MESSAGES, **field)
    assert caught.value.param == next(iter(field))
    assert not rig.fake.requests  # refused before any prediction was created (and billed)


ERRORS = [
    (fake_replicate.THROTTLED, 429, "rate_limit_exceeded"),
    (fake_replicate.INSUFFICIENT_CREDIT, 502, "upstream_auth_error"),
    (fake_replicate.INVALID_INPUT, 400, "invalid_request"),
    (fake_replicate.NOT_FOUND, 502, "upstream_model_not_found"),
    (fake_replicate.UNAVAILABLE, 503, "upstream_unavailable"),
    (Fail(), 502, "upstream_error"),
]


@pytest.mark.parametrize(("behaviour", "status", "code"), ERRORS)
@pytest.mark.parametrize("stream", [False, True])
def test_errors_map_to_status(
    rig: Rig, openapi: OpenAPISchemas, behaviour: Any, status: int, code: str, stream: bool
) -> None:
    rig.fake.script(behaviour)
    response = httpx.post(
        rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES, "stream": stream}
    )
    assert response.status_code == status, response.text  # a failure before any output is still an HTTP error
    body = response.json()
    openapi.validate("ErrorResponse", body)
    assert body["error"]["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "1"


def test_a_prediction_stuck_starting_times_out_and_is_cancelled(rig: Rig) -> None:
    rig.fake.script(Reply(tokens=TOKENS, cold_start_s=30))
    started = time.monotonic()
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES}, timeout=20)
    assert response.status_code == 504 and time.monotonic() - started < 9
    assert rig.fake.prediction_canceled.wait(timeout=3)


@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_the_prediction(rig: Rig, stream: bool) -> None:
    rig.fake.script(Reply(tokens=TOKENS * 40, cold_start_s=0.2, token_delay_s=0.05))
    if stream:
        with httpx.stream(
            "POST", rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES, "stream": True}
        ) as response:
            next(line for line in response.iter_lines() if line.startswith("data: "))
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES}, timeout=0.8)
    assert rig.fake.prediction_canceled.wait(timeout=3)
    assert rig.fake.canceled_ids


def test_wrong_token_is_an_auth_error_that_never_shows_the_token(rig: Rig) -> None:
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "llama-badkey", "messages": MESSAGES})
    assert response.status_code == 502 and "r8_wrong_555" not in response.text
    assert "replicate-badkey" in response.json()["error"]["message"]


def test_hang_on_create_is_a_timeout(rig: Rig) -> None:
    rig.fake.script(Hang(10))
    response = httpx.post(rig.url + "/v1/chat/completions", json={"model": "llama", "messages": MESSAGES}, timeout=20)
    assert response.status_code == 504
