"""Bad input at the front door: each case gets the right status and an OpenAI-shaped error body."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import openai
import pytest

from tests.support.openapi import OpenAPISchemas

CHAT = "/v1/chat/completions"
GOOD_MESSAGES = [{"role": "user", "content": "hi"}]


def post(url: str, content: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(url, content=content, headers=headers, timeout=10)


def assert_error(
    response: httpx.Response,
    openapi: OpenAPISchemas,
    status: int,
    *,
    param: str | None = None,
    code: str | None = None,
    error_type: str = "invalid_request_error",
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    body = response.json()
    openapi.validate("ErrorResponse", body)
    error = body["error"]
    assert error["type"] == error_type
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert "Traceback" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        (b'{"model": "chat", "messages": [', None, "invalid_json"),
        (b"", None, "invalid_json"),
        (b"[1, 2]", None, "invalid_json"),
        (b'{"model": "chat"}', "messages", "missing_required_parameter"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model", "missing_required_parameter"),
        (b'{"model": "chat", "messages": []}', "messages", "invalid_value"),
        (b'{"model": "chat", "messages": "hello"}', "messages", "invalid_value"),
        (b'{"model": "chat", "messages": [{"role": "user", "content": 5}]}', "messages[0].content", "invalid_value"),
        (b'{"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0]", "invalid_value"),
        (b'{"model": "chat", "messages": [{"role": "user"}]}', "messages[0].content", "missing_required_parameter"),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
            "temperature",
            "invalid_value",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 3}',
            "temperature",
            "invalid_value",
        ),
        (b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n", "invalid_value"),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
            "stream",
            "invalid_value",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "tool", "content": "x"}]}',
            "messages[0].tool_call_id",
            "missing_required_parameter",
        ),
        (
            b'{"model": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
            b'"function": {"name": "bad name!"}}]}',
            "tools[0].function.name",
            "invalid_value",
        ),
    ],
)
def test_invalid_chat_bodies_get_400_naming_the_param(
    gateway_url: str, openapi: OpenAPISchemas, body: bytes, param: str | None, code: str
) -> None:
    assert_error(post(gateway_url + CHAT, body), openapi, 400, param=param, code=code)


def test_unknown_fields_are_accepted_for_forward_compatibility(gateway_url: str) -> None:
    response = httpx.post(
        gateway_url + CHAT,
        json={"model": "chat", "messages": GOOD_MESSAGES, "some_future_field": {"x": 1}, "verbosity": "low"},
    )
    assert response.status_code == 200


def test_unknown_model_is_404_model_not_found(gateway_url: str, openapi: OpenAPISchemas) -> None:
    response = httpx.post(gateway_url + CHAT, json={"model": "gpt-17", "messages": GOOD_MESSAGES})
    error = assert_error(response, openapi, 404, param="model", code="model_not_found")
    assert "gpt-17" in error["message"]


def test_embedding_model_on_chat_endpoint_is_rejected(gateway_url: str, openapi: OpenAPISchemas) -> None:
    response = httpx.post(gateway_url + CHAT, json={"model": "embed", "messages": GOOD_MESSAGES})
    assert_error(response, openapi, 400, param="model", code="model_not_supported")
    response = httpx.post(gateway_url + "/v1/embeddings", json={"model": "chat", "input": "x"})
    assert_error(response, openapi, 400, param="model", code="model_not_supported")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "embed"}, "input"),
        ({"model": "embed", "input": ""}, "input"),
        ({"model": "embed", "input": []}, "input"),
        ({"model": "embed", "input": [1.5]}, "input"),
        ({"model": "embed", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_invalid_embedding_bodies(gateway_url: str, openapi: OpenAPISchemas, body: dict[str, Any], param: str) -> None:
    assert_error(httpx.post(gateway_url + "/v1/embeddings", json=body), openapi, 400, param=param)


def test_oversized_body_is_413(gateway_factory: Any, openapi: OpenAPISchemas) -> None:
    url = gateway_factory("""
server: {max_body_bytes: 2048}
providers: {mock: {type: mock}}
models: {chat: {deployments: [{provider: mock, model: m}]}}
""")
    big = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * 4096 + b'"}]}'
    assert_error(post(url + CHAT, big), openapi, 413, code="request_too_large")

    # A client that streams the body without Content-Length is cut off at the limit too.
    def chunks() -> Any:
        yield big[:1000]
        yield big[1000:]

    response = httpx.post(url + CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert_error(response, openapi, 413, code="request_too_large")
    small = httpx.post(url + CHAT, json={"model": "chat", "messages": GOOD_MESSAGES})
    assert small.status_code == 200


def test_default_body_limit_is_10_mib(gateway_url: str, openapi: OpenAPISchemas) -> None:
    over = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * (10 * 1024 * 1024) + b'"}]}'
    assert_error(post(gateway_url + CHAT, over), openapi, 413, code="request_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_wrong_content_type_is_415(gateway_url: str, openapi: OpenAPISchemas, content_type: str) -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}'
    error = assert_error(post(gateway_url + CHAT, body, content_type), openapi, 415, code="unsupported_media_type")
    assert "application/json" in error["message"]


def test_json_content_type_with_charset_and_missing_content_type_are_accepted(gateway_url: str) -> None:
    body = b'{"model": "chat", "messages": [{"role": "user", "content": "x"}]}'
    assert post(gateway_url + CHAT, body, "application/json; charset=utf-8").status_code == 200
    assert post(gateway_url + CHAT, body, None).status_code == 200


def test_unknown_route_and_wrong_method(gateway_url: str, openapi: OpenAPISchemas) -> None:
    assert_error(httpx.get(gateway_url + "/v1/nothing-here"), openapi, 404, code="unknown_route")
    assert_error(httpx.get(gateway_url + CHAT), openapi, 405, code="method_not_allowed")


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=GOOD_MESSAGES)  # type: ignore[arg-type]
    assert not_found.value.code == "model_not_found" and not_found.value.param == "model"
    assert not_found.value.request_id  # from x-request-id
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="chat", messages=[])
    assert bad.value.param == "messages"


def test_request_id_is_echoed_or_generated(gateway_url: str) -> None:
    given = httpx.post(
        gateway_url + CHAT, json={"model": "chat", "messages": GOOD_MESSAGES}, headers={"x-request-id": "trace-abc-123"}
    )
    assert given.headers["x-request-id"] == "trace-abc-123"
    fresh = [httpx.post(gateway_url + CHAT, json={"model": "x", "messages": GOOD_MESSAGES}) for _ in range(2)]
    ids = {response.headers["x-request-id"] for response in fresh}
    assert len(ids) == 2 and all(rid.startswith("req_") for rid in ids)


def test_health_endpoints(gateway_url: str) -> None:
    assert httpx.get(gateway_url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gateway_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["config"]["ok"] is True


def test_readyz_checks_redis_when_configured(gateway_factory: Any, redis_url: str) -> None:
    config = """
state: {redis_url: "%s"}
providers: {mock: {type: mock}}
models: {chat: {deployments: [{provider: mock, model: m}]}}
"""
    ready = httpx.get(gateway_factory(config % redis_url) + "/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["redis"] == {"ok": True}

    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        dead_url = f"redis://:s3cret@127.0.0.1:{unused.getsockname()[1]}/0"
        not_ready = httpx.get(gateway_factory(config % dead_url) + "/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"]["ok"] is False
    assert "s3cret" not in not_ready.text


def test_a_gateway_bug_is_a_500_envelope_without_internals(
    gateway_url: str, openapi: OpenAPISchemas, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.mock import MockAdapter

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(MockAdapter, "chat", explode)
    response = httpx.post(gateway_url + CHAT, json={"model": "chat", "messages": GOOD_MESSAGES})
    error = assert_error(response, openapi, 500, code="internal_error", error_type="server_error")
    assert "secret internal detail" not in response.text and "RuntimeError" not in response.text
    assert error["message"] == "The gateway failed to process the request."


def test_a_gateway_bug_mid_stream_ends_the_stream_with_an_error_event(
    gateway_url: str, openapi: OpenAPISchemas, monkeypatch: pytest.MonkeyPatch
) -> None:
    from providers.mock import MockAdapter

    original = MockAdapter.stream

    async def break_after_first(self: MockAdapter, *args: Any, **kwargs: Any) -> Any:
        async for chunk in original(self, *args, **kwargs):
            yield chunk
            raise RuntimeError("secret internal detail")

    monkeypatch.setattr(MockAdapter, "stream", break_after_first)
    with httpx.stream(
        "POST", gateway_url + CHAT, json={"model": "chat", "messages": GOOD_MESSAGES, "stream": True}
    ) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(lines) == 2 and "[DONE]" not in lines[-1]
    import json

    last = json.loads(lines[-1][6:])
    openapi.validate("ErrorResponse", last)
    assert last["error"]["code"] == "internal_error" and "secret" not in lines[-1]
