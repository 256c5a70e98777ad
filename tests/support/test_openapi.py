"""Tests of the OpenAPI validator itself: it must accept valid bodies and reject the easy misses.

Bodies are hand-built on purpose: these test the validator, not the gateway.
"""

from __future__ import annotations

import base64
import copy
import struct
from typing import Any

import pytest

from tests.support.openapi import OpenAPISchemas, base64_embeddings_to_floats, load_openapi_schemas


@pytest.fixture(scope="module")
def schemas() -> OpenAPISchemas:
    return load_openapi_schemas()


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": "Hi"},
                "finish_reason": None,
                "logprobs": None,
            }
        ],
    }


def embeddings(embedding: object) -> dict[str, Any]:
    return {
        "object": "list",
        "model": "text-embedding-3-small",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }


def model() -> dict[str, Any]:
    return {"id": "gpt-4o-mini", "object": "model", "created": 1700000000, "owned_by": "openai"}


def test_load_is_cached() -> None:
    assert load_openapi_schemas() is load_openapi_schemas()


def test_chat_completion_valid(schemas: OpenAPISchemas) -> None:
    schemas.validate("CreateChatCompletionResponse", chat_completion())


def test_chat_completion_without_logprobs_fails(schemas: OpenAPISchemas) -> None:
    body = chat_completion()
    del body["choices"][0]["logprobs"]
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\].*'logprobs' is a required property"):
        schemas.validate("CreateChatCompletionResponse", body)


def test_chat_completion_without_refusal_fails(schemas: OpenAPISchemas) -> None:
    body = chat_completion()
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.message.*'refusal' is a required property"):
        schemas.validate("CreateChatCompletionResponse", body)


def test_stream_chunk_with_null_finish_reason_and_logprobs_valid(schemas: OpenAPISchemas) -> None:
    # Only passes thanks to the `nullable: true` rewrite (finish_reason/logprobs are 3.0-style nullable).
    schemas.validate("CreateChatCompletionStreamResponse", chunk())


def test_final_stream_chunk_with_stop_valid(schemas: OpenAPISchemas) -> None:
    body = chunk()
    body["choices"][0].update(delta={}, finish_reason="stop")
    schemas.validate("CreateChatCompletionStreamResponse", body)


def test_usage_stream_chunk_valid(schemas: OpenAPISchemas) -> None:
    body = chunk()
    body["choices"] = []
    body["usage"] = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    schemas.validate("CreateChatCompletionStreamResponse", body)


def test_stream_chunk_with_null_usage_valid(schemas: OpenAPISchemas) -> None:
    # `usage` is `$ref` + `nullable: true`: the rewrite must handle a bare $ref too.
    body = chunk()
    body["usage"] = None
    schemas.validate("CreateChatCompletionStreamResponse", body)


def test_stream_chunk_with_wrong_object_fails(schemas: OpenAPISchemas) -> None:
    body = chunk()
    body["object"] = "chat.completion"
    with pytest.raises(AssertionError, match=r"at \$\.object:"):
        schemas.validate("CreateChatCompletionStreamResponse", body)


def test_embeddings_float_valid(schemas: OpenAPISchemas) -> None:
    schemas.validate("CreateEmbeddingResponse", embeddings([0.1, -0.2, 0.3]))


def test_embeddings_base64_string_rejected_by_spec(schemas: OpenAPISchemas) -> None:
    # The spec only describes float embeddings; a base64 body must be decoded before validating.
    encoded = base64.b64encode(struct.pack("<3f", 0.5, -0.25, 1.0)).decode()
    body = embeddings(encoded)
    with pytest.raises(AssertionError, match=r"\$\.data\[0\]\.embedding.*is not of type 'array'"):
        schemas.validate("CreateEmbeddingResponse", body)
    decoded = base64_embeddings_to_floats(body)
    assert decoded["data"][0]["embedding"] == [0.5, -0.25, 1.0]
    assert body["data"][0]["embedding"] == encoded  # the input is not modified
    schemas.validate("CreateEmbeddingResponse", decoded)


def test_models_valid(schemas: OpenAPISchemas) -> None:
    schemas.validate("Model", model())
    schemas.validate("ListModelsResponse", {"object": "list", "data": [model(), model() | {"id": "other"}]})


def test_model_missing_owned_by_fails(schemas: OpenAPISchemas) -> None:
    body = model()
    del body["owned_by"]
    with pytest.raises(AssertionError, match="'owned_by' is a required property"):
        schemas.validate("Model", body)


def test_error_response(schemas: OpenAPISchemas) -> None:
    body = {"error": {"message": "bad key", "type": "invalid_request_error", "param": None, "code": None}}
    schemas.validate("ErrorResponse", body)
    missing_param = copy.deepcopy(body)
    del missing_param["error"]["param"]
    with pytest.raises(AssertionError, match=r"\$\.error.*'param' is a required property"):
        schemas.validate("ErrorResponse", missing_param)


def test_message_is_readable(schemas: OpenAPISchemas) -> None:
    body = chat_completion()
    body["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError) as excinfo:
        schemas.validate("CreateChatCompletionResponse", body)
    message = str(excinfo.value)
    assert "CreateChatCompletionResponse" in message
    assert "$.choices[0].finish_reason" in message
    assert "'done' is not one of" in message
    assert '"id": "chatcmpl-123"' in message  # body excerpt


def test_unknown_schema_name(schemas: OpenAPISchemas) -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        schemas.validate("NoSuchSchema", {})
