"""Fault injection through the whole gateway: each upstream failure mode, end to end.

Every test scripts real HTTP fakes, sends one request through a real gateway with the official SDK
(`max_retries=0`, so every retry seen is the gateway's) or raw httpx where bytes matter, and checks three
things: what the client got, which attempts were made (the gateway's `x-gateway-attempts` /
`x-gateway-fallback-reason` headers and what each fake actually received), and that the request ended in
exactly one answer or one clear error (streams: content then `[DONE]`, or content then one error event;
never text twice).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.fakes.openai_upstream import DEFAULT_CONTENT, Error, Hang, Malformed, StreamChunks
from tests.resilience.conftest import (
    KEYS,
    MESSAGES,
    SSE,
    Gateway,
    Upstreams,
    dep,
    gateway_config,
    read_sse,
    wait_for,
)
from tests.support.server import free_port

StartGateway = Callable[[str], Gateway]
#: What the cut streams of the fake had sent before failing (`StreamChunks(chunks=3)`).
SENT = "word0 word1 word2 "
MOCK = "mock-chat-1"
CONTENT_FILTERED = Error(
    400,
    {
        "error": {
            "message": "The response was filtered due to the prompt triggering the content management policy.",
            "type": "invalid_request_error",
            "param": "prompt",
            "code": "content_filter",
        }
    },
)


def chat(gateway: Gateway, model: str = "gpt", **kwargs: Any) -> tuple[Any, Any, float]:
    """A non-streamed call with the SDK: (raw response, parsed completion, seconds it took)."""
    started = time.monotonic()
    raw = gateway.client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, **kwargs)
    return raw, raw.parse(), time.monotonic() - started


def stream_text(gateway: Gateway, model: str = "gpt", **kwargs: Any) -> tuple[Any, list[Any], float]:
    """A streamed call with the SDK, read to the end: (raw response, chunks, seconds it took)."""
    started = time.monotonic()
    raw = gateway.client.chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, stream=True, **kwargs
    )
    chunks = list(raw.parse())
    return raw, chunks, time.monotonic() - started


def sdk_text(chunks: list[Any]) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def expected_continuation(gateway: Gateway, prefix: str) -> str:
    """What the mock continues `prefix` with: asked directly, through the `plain-mock` alias."""
    prefilled = [*MESSAGES, {"role": "assistant", "content": prefix}]
    completion = gateway.client.chat.completions.create(model="plain-mock", messages=prefilled)  # type: ignore[arg-type]
    text = completion.choices[0].message.content
    assert text
    return text.lstrip() if prefix[-1:].isspace() else text


def assert_one_clean_answer(sse: SSE, *, usage: bool) -> None:
    """One completion: one id, the role once, one finish, usage once if asked (last), then `[DONE]` last."""
    assert sse.status == 200 and not sse.errors
    assert sse.done == 1 and sse.events[-1] == "[DONE]"
    assert len({chunk["id"] for chunk in sse.chunks}) == 1
    roles = [c for chunk in sse.chunks for c in chunk["choices"] if (c.get("delta") or {}).get("role")]
    assert len(roles) == 1
    assert len(sse.finish_reasons) == 1
    if usage:
        assert len(sse.usage_chunks) == 1 and sse.events[-2] is sse.usage_chunks[0]
        assert sse.usage_chunks[0]["usage"]["completion_tokens"] > 0
    else:
        assert not sse.usage_chunks


def assert_cut_with_one_error(sse: SSE, *, code: str) -> dict[str, Any]:
    """Content, then exactly one error event as the very last event, and no `[DONE]`."""
    assert sse.status == 200
    assert sse.done == 0
    assert len(sse.errors) == 1 and "error" in sse.events[-1]
    error = sse.errors[0]
    assert error["code"] == code
    assert not sse.finish_reasons  # a cut answer is never presented as finished
    return error


# --- 1. rate limits --------------------------------------------------------------------------------


def test_429_with_short_retry_after_waits_then_the_same_deployment_answers(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Error(429, headers={"retry-after-ms": "200"}))
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    raw, completion, elapsed = chat(gateway)

    assert completion.choices[0].message.content == DEFAULT_CONTENT and completion.model == "model-a"
    assert elapsed >= 0.19  # it waited as told (never sooner), ...
    assert elapsed < 1.5
    assert raw.headers["x-gateway-attempts"] == "2"  # ... then asked the same deployment again
    assert "x-gateway-fallback-reason" not in raw.headers  # the first-ranked deployment served
    assert upstreams.counts() == {"a": 2, "b": 0, "c": 0}


def test_429_with_long_retry_after_goes_to_the_next_deployment_without_waiting(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Error(429, headers={"retry-after": "10"}))
    models = {"gpt": {"deployments": [dep("a"), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"max_retry_after_s": 1}))

    raw, completion, elapsed = chat(gateway)

    assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert elapsed < 1.0
    assert raw.headers["x-gateway-fallback-reason"] == "rate_limited"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}


# --- 2. 5xx bursts ---------------------------------------------------------------------------------


def test_5xx_burst_retries_the_deployment_then_falls_back(upstreams: Upstreams, start_gateway: StartGateway) -> None:
    upstreams.a.script(Error(500), Error(503), Error(503))
    models = {"gpt": {"deployments": [dep("a"), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"attempts_per_deployment": 3}))

    raw, completion, elapsed = chat(gateway)

    assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert raw.headers["x-gateway-model"] == "model-b" and raw.headers["x-gateway-provider"] == "b"
    assert raw.headers["x-gateway-attempts"] == "4"
    assert raw.headers["x-gateway-fallback-reason"] == "unavailable"  # the kind of A's last failure
    assert upstreams.counts() == {"a": 3, "b": 1, "c": 0}
    assert elapsed < 1.0  # backoff_base_ms 10: the retries cost milliseconds


# --- 3. connection refused -------------------------------------------------------------------------


def test_connection_refused_falls_back_to_the_next_deployment(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    dead = {"dead": {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "sk-dead"}}
    models = {"gpt": {"deployments": [dep("dead"), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models, extra_providers=dead))

    raw, completion, elapsed = chat(gateway)

    assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert raw.headers["x-gateway-fallback-reason"] == "unavailable"
    assert raw.headers["x-gateway-attempts"] == "3"  # the refused deployment twice (retryable), then B
    assert upstreams.counts() == {"a": 0, "b": 1, "c": 0}
    assert elapsed < 1.0


# --- 4. hangs --------------------------------------------------------------------------------------


def test_hung_stream_falls_back_after_first_token_timeout_and_is_not_retried(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Hang(5))
    models = {"gpt": {"deployments": [dep("a", timeouts={"first_token_s": 0.5}), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"attempts_per_deployment": 3}))

    raw, chunks, elapsed = stream_text(gateway)

    assert sdk_text(chunks) == DEFAULT_CONTENT
    assert 0.45 <= elapsed < 1.3
    assert raw.headers["x-gateway-fallback-reason"] == "timeout"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}  # the timed-out deployment is not asked again
    assert wait_for(upstreams.a.client_gone.is_set)  # and the gateway hung up on it


def test_hung_call_is_bounded_by_total_timeout_and_is_not_retried(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Hang(5))
    models = {"gpt": {"deployments": [dep("a", timeouts={"total_s": 0.5}), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"attempts_per_deployment": 3}))

    raw, completion, elapsed = chat(gateway)

    assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert 0.45 <= elapsed < 1.3
    assert raw.headers["x-gateway-fallback-reason"] == "timeout"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}
    assert wait_for(upstreams.a.client_gone.is_set)


# --- 5. hedging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_hedge_wins_over_a_slow_tail_and_cancels_the_loser(
    upstreams: Upstreams, start_gateway: StartGateway, stream: bool
) -> None:
    upstreams.a.script(Hang(5))
    models = {"gpt": {"hedge": {"after_ms": 200}, "deployments": [dep("a"), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models))

    if stream:
        raw, chunks, elapsed = stream_text(gateway)
        assert sdk_text(chunks) == DEFAULT_CONTENT
        assert {chunk.model for chunk in chunks} == {"model-b"}
    else:
        raw, completion, elapsed = chat(gateway)
        assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT

    assert 0.19 <= elapsed < 1.0  # the hedge started after 200 ms; nobody waited for A's 5 s
    assert raw.headers["x-gateway-fallback-reason"] == "hedge"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}
    assert wait_for(upstreams.a.client_gone.is_set)  # the loser's connection was closed


# --- 6. streams failing before their first chunk -----------------------------------------------------


def test_stream_failing_before_its_first_chunk_falls_back_transparently(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script_forever(Error(503))
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES})

    assert_one_clean_answer(sse, usage=False)
    assert sse.text == DEFAULT_CONTENT
    assert sse.headers["x-gateway-model"] == "model-b"
    assert sse.headers["x-gateway-fallback-reason"] == "unavailable"
    assert sse.headers["x-gateway-attempts"] == "3"
    assert upstreams.counts() == {"a": 2, "b": 1, "c": 0}


def test_stream_dropped_after_only_the_role_chunk_restarts_elsewhere_as_one_stream(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    # Nothing but the role went out: any deployment may give the whole answer (A first, now down, then B).
    upstreams.a.script(StreamChunks(chunks=0, then="drop"))
    upstreams.a.script_forever(Error(503))
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES, "stream_options": {"include_usage": True}})

    assert_one_clean_answer(sse, usage=True)
    assert sse.text == DEFAULT_CONTENT
    assert sse.headers["x-gateway-attempts"] == "1"  # headers went out with A's role chunk
    assert upstreams.counts() == {"a": 3, "b": 1, "c": 0}  # the cut, A twice more (503), then B


# --- 7. and 8. streams cut after content ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("then", "said"), [("drop", "closed the connection"), ("error_event", "upstream exploded")], ids=["drop", "event"]
)
def test_stream_cut_after_content_without_prefill_deployment_ends_with_one_error(
    upstreams: Upstreams, start_gateway: StartGateway, then: str, said: str
) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then=then), StreamChunks(chunks=3, then=then))
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    # The SDK: the text that was sent, then an APIError (not a silently short answer).
    raw = gateway.client.chat.completions.with_raw_response.create(model="gpt", messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in raw.parse():
            received.extend(choice.delta.content or "" for choice in chunk.choices)
    assert "".join(received) == SENT
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "upstream_error"
    assert raw.headers["x-gateway-attempts"] == "1"

    # The wire, with usage asked for: content, the usage so far, one error event, no [DONE].
    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES, "stream_options": {"include_usage": True}})
    error = assert_cut_with_one_error(sse, code="upstream_error")
    assert sse.text == SENT
    assert len(sse.usage_chunks) == 1 and sse.events[-2] is sse.usage_chunks[0]
    assert sse.usage_chunks[0]["usage"]["completion_tokens"] > 0
    assert said in error["message"]
    assert upstreams.counts() == {"a": 2, "b": 0, "c": 0}  # B cannot continue a prefill: never asked


def test_stream_cut_after_content_is_continued_by_a_prefill_deployment_as_one_answer(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then="drop"))
    models = {
        "gpt": {"deployments": [dep("a"), dep("mock", MOCK)]},
        "plain-mock": {"deployments": [dep("mock", MOCK)]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES, "stream_options": {"include_usage": True}})

    assert_one_clean_answer(sse, usage=True)
    continuation = expected_continuation(gateway, SENT)
    assert sse.text == SENT + continuation  # the sent words once, then exactly the mock's rest
    assert SENT not in continuation and continuation
    assert sse.chunks[0]["id"].startswith("chatcmpl-")
    assert sse.headers["x-gateway-model"] == "model-a" and sse.headers["x-gateway-attempts"] == "1"
    sent_to_a = upstreams.a.requests
    assert len(sent_to_a) == 1 and sent_to_a[0].json["messages"] == MESSAGES
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}


# --- 9. and 10. errors that pick their own fallback chain ---------------------------------------------


def test_context_window_error_goes_to_the_longer_context_alias_not_siblings(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Error(400, "context"))
    models = {
        "gpt": {
            "deployments": [dep("a"), dep("b")],
            "fallbacks": {"default": ["backup"], "context_window": ["long"]},
        },
        "long": {"deployments": [dep("c")]},
        "backup": {"deployments": [dep("mock", MOCK)]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    raw, completion, _ = chat(gateway)

    assert completion.model == "model-c" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert raw.headers["x-gateway-alias"] == "long"
    assert raw.headers["x-gateway-fallback-reason"] == "context_window"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 1}  # B serves the same model: not tried


def test_content_filter_goes_only_to_the_content_filter_chain(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(CONTENT_FILTERED, CONTENT_FILTERED)
    models = {
        "gpt": {"deployments": [dep("a"), dep("b")], "fallbacks": {"content_filter": ["alt"]}},
        "strict": {"deployments": [dep("a"), dep("b")], "fallbacks": ["alt"]},  # a default chain only
        "alt": {"deployments": [dep("c")]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    raw, completion, _ = chat(gateway, "gpt")
    assert completion.model == "model-c" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert raw.headers["x-gateway-fallback-reason"] == "content_filter"
    assert raw.headers["x-gateway-attempts"] == "2"
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 1}

    with pytest.raises(openai.BadRequestError) as caught:
        chat(gateway, "strict")
    error = caught.value
    assert error.status_code == 400
    assert isinstance(error.body, dict) and error.body["code"] == "content_filter"
    assert "content management policy" in error.body["message"]
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert error.response.headers["x-should-retry"] == "false"
    assert upstreams.counts() == {"a": 2, "b": 0, "c": 1}  # neither the sibling nor the default chain


# --- 11. and 12. malformed upstream answers -----------------------------------------------------------


def test_malformed_json_answer_is_an_internal_error_retried_then_fallen_back(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(Malformed(), Malformed())
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    raw, completion, _ = chat(gateway)

    assert completion.model == "model-b" and completion.choices[0].message.content == DEFAULT_CONTENT
    assert raw.headers["x-gateway-fallback-reason"] == "internal"
    assert raw.headers["x-gateway-attempts"] == "3"
    assert upstreams.counts() == {"a": 2, "b": 1, "c": 0}


def test_malformed_chunk_mid_stream_is_never_passed_on_and_the_answer_is_continued(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    # The bad chunk ends A's segment (an upstream that sends garbage is not trusted with the rest);
    # the mock continues after the words already sent.
    upstreams.a.script(StreamChunks(chunks=3, then="malformed"))
    models = {
        "gpt": {"deployments": [dep("a"), dep("mock", MOCK)]},
        "plain-mock": {"deployments": [dep("mock", MOCK)]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES})  # every event parsed as JSON

    assert_one_clean_answer(sse, usage=False)
    assert sse.text == SENT + expected_continuation(gateway, SENT)
    assert sse.text.count("word2") == 1
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}


# --- 13. and 14. streams that end badly -------------------------------------------------------------


def test_stream_ending_without_done_is_finalised_at_once_with_usage(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then="finish_no_done"))
    models = {"gpt": {"deployments": [dep("a", timeouts={"idle_s": 5}), dep("b")]}}
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES, "stream_options": {"include_usage": True}})

    assert_one_clean_answer(sse, usage=True)
    assert sse.text == SENT and sse.finish_reasons == ["stop"]
    assert sse.elapsed_s < 1.0  # nobody waited for the 5 s idle limit
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}  # a whole answer: no continuation


def test_stream_stalled_mid_answer_is_continued_elsewhere_and_the_stalled_one_is_dropped(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then="stall"))
    # A could continue a prefill itself: only having timed out keeps it from being asked again.
    stalling = dep("a", prefill=True, timeouts={"idle_s": 0.5})
    models = {
        "gpt": {"deployments": [stalling, dep("mock", MOCK)]},
        "plain-mock": {"deployments": [dep("mock", MOCK)]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES, "stream_options": {"include_usage": True}})

    assert_one_clean_answer(sse, usage=True)
    assert sse.text == SENT + expected_continuation(gateway, SENT)
    assert 0.45 <= sse.elapsed_s < 3.0
    assert wait_for(upstreams.a.stall_abandoned.is_set)  # the gateway hung up on the stalled stream
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}


# --- 15. continuation targets that refuse a prefill ---------------------------------------------------


def test_continuation_skips_a_target_that_refuses_prefill(upstreams: Upstreams, start_gateway: StartGateway) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then="drop"))
    models = {
        "gpt": {"deployments": [dep("a"), dep("claude", "claude-test"), dep("mock", MOCK)]},
        "plain-mock": {"deployments": [dep("mock", MOCK)]},
    }
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES})

    assert_one_clean_answer(sse, usage=False)
    assert sse.text == SENT + expected_continuation(gateway, SENT)
    # Claude was asked to continue (the sent words as a final assistant turn) and refused.
    (asked,) = upstreams.claude.requests
    last = asked.json["messages"][-1]
    assert last["role"] == "assistant" and "word0 word1 word2" in str(last["content"])
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}


def test_when_every_continuation_target_refuses_the_client_sees_the_original_cut(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(StreamChunks(chunks=3, then="drop"))
    models = {"gpt": {"deployments": [dep("a"), dep("claude", "claude-test")]}}
    gateway = start_gateway(gateway_config(upstreams, models))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES})

    error = assert_cut_with_one_error(sse, code="upstream_error")
    assert sse.text == SENT
    assert "prefill" not in error["message"] and "closed the connection" in error["message"]
    assert len(upstreams.claude.requests) == 1
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}


# --- 16. the request's own fault ---------------------------------------------------------------------


def test_invalid_request_fails_fast_with_the_providers_words_and_no_secret(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    # A request the gateway accepts but this upstream refuses (and, carelessly, quotes our key in).
    message = f"Unsupported value: 'temperature' does not support 0.3 with this model (key {KEYS['a']})."
    body = {"error": {"message": message, "type": "invalid_request_error", "param": "temperature", "code": None}}
    upstreams.a.script(Error(400, body))
    gateway = start_gateway(gateway_config(upstreams, {"gpt": {"deployments": [dep("a"), dep("b")]}}))

    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as caught:
        chat(gateway, temperature=0.3)
    elapsed = time.monotonic() - started

    error = caught.value
    assert isinstance(error.body, dict)
    assert error.body["code"] == "invalid_request" and error.body["param"] == "temperature"
    assert "does not support 0.3 with this model" in error.body["message"]
    for key in KEYS.values():
        assert key not in error.response.text and key not in str(error.response.headers)
    assert error.response.headers["x-gateway-attempts"] == "1"
    assert error.response.headers["x-gateway-fallback-reason"] == "invalid_request"
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}
    assert elapsed < 0.5


# --- 17. open breakers ---------------------------------------------------------------------------------


def test_all_breakers_open_answers_503_with_retry_after_at_once(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script_forever(Error(503))
    upstreams.b.script_forever(Error(503))
    models = {"gpt": {"deployments": [dep("a"), dep("b")]}}
    breaker = {"consecutive_failures": 1, "cooldown_s": 30}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"attempts_per_deployment": 1}, breaker=breaker))

    with pytest.raises(openai.InternalServerError) as first:
        chat(gateway)
    assert first.value.status_code == 503
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}  # both failed once: both breakers open

    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as second:
        chat(gateway)
    elapsed = time.monotonic() - started

    response = second.value.response
    assert response.status_code == 503
    assert isinstance(second.value.body, dict) and second.value.body["code"] == "upstream_unavailable"
    assert 1 <= int(response.headers["retry-after"]) <= 30
    assert response.headers["x-gateway-fallback-reason"] == "circuit_open"
    assert response.headers["x-gateway-attempts"] == "0"
    assert upstreams.counts() == {"a": 1, "b": 1, "c": 0}  # no new upstream request
    assert elapsed < 0.3


def test_a_rate_limited_deployment_rests_and_the_next_request_gets_429_without_an_upstream_call(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    """A 429 is not a failure: no breaker opens, but the deployment rests for its retry-after. With no
    other deployment, the client is told to slow down (429), not that the service is down (503)."""
    upstreams.a.script(Error(429, headers={"retry-after": "5"}))
    models = {"gpt": {"deployments": [dep("a")]}}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"max_retry_after_s": 1}))

    with pytest.raises(openai.RateLimitError) as first:
        chat(gateway)
    assert 1 <= int(first.value.response.headers["retry-after"]) <= 6

    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as second:
        chat(gateway)
    assert time.monotonic() - started < 0.3
    response = second.value.response
    assert isinstance(second.value.body, dict) and second.value.body["code"] == "rate_limit_exceeded"
    assert 1 <= int(response.headers["retry-after"]) <= 5
    assert response.headers["x-gateway-attempts"] == "0"
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}  # the second was answered by the gateway alone


# --- 18. the request's deadline --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_request_deadline_answers_504_before_the_deployments_own_limit(
    upstreams: Upstreams, start_gateway: StartGateway, stream: bool
) -> None:
    upstreams.a.script(Hang(5))
    models = {"gpt": {"deployments": [dep("a", timeouts={"total_s": 10, "first_token_s": 10}), dep("b")]}}
    # A breaker that opens on one failure: the client's impatience must not count as one.
    breaker = {"consecutive_failures": 1, "cooldown_s": 30}
    gateway = start_gateway(gateway_config(upstreams, models, retry={"attempts_per_deployment": 3}, breaker=breaker))
    deadline = {"x-gateway-timeout-ms": "500"}

    if stream:
        sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES}, headers=deadline)
        status, body, headers, elapsed = sse.status, sse.events[0], sse.headers, sse.elapsed_s
        assert len(sse.events) == 1
    else:
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as caught:
            chat(gateway, extra_headers=deadline)
        elapsed = time.monotonic() - started
        status, body, headers = caught.value.status_code, {"error": caught.value.body}, caught.value.response.headers

    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    assert 0.45 <= elapsed < 1.0
    assert headers["x-gateway-attempts"] == "1"
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}  # the deadline passed: nobody else is asked
    assert wait_for(upstreams.a.client_gone.is_set)

    # The deadline was the request's, not A's limits: A is not blamed, and serves the next request.
    raw, completion, _ = chat(gateway)
    assert completion.model == "model-a" and raw.headers["x-gateway-attempts"] == "1"
    assert "x-gateway-fallback-reason" not in raw.headers


def test_request_deadline_mid_stream_ends_the_answer_with_one_error_and_no_continuation(
    upstreams: Upstreams, start_gateway: StartGateway
) -> None:
    upstreams.a.script(StreamChunks(chunks=20, chunk_delay_s=0.05))
    # B could continue the answer, but the deadline has passed: nobody is asked, and A is not blamed.
    models = {"gpt": {"deployments": [dep("a"), dep("b", prefill=True)]}}
    breaker = {"consecutive_failures": 1, "cooldown_s": 30}
    gateway = start_gateway(gateway_config(upstreams, models, breaker=breaker))

    sse = read_sse(gateway.url, {"model": "gpt", "messages": MESSAGES}, headers={"x-gateway-timeout-ms": "400"})

    assert_cut_with_one_error(sse, code="upstream_timeout")
    whole = "".join(f"word{i} " for i in range(20))
    assert sse.text and whole.startswith(sse.text) and sse.text != whole
    assert 0.35 <= sse.elapsed_s < 1.0
    assert upstreams.counts() == {"a": 1, "b": 0, "c": 0}

    raw, completion, _ = chat(gateway)
    assert completion.model == "model-a" and "x-gateway-fallback-reason" not in raw.headers
