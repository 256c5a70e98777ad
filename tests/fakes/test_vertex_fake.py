"""Prove FakeVertex speaks real Vertex: google-auth must get tokens from it and google-genai must parse it.

If the official SDKs accept every behaviour here, an adapter tested against the fake is tested against
shapes the real service sends, not against our reading of the docs.
"""

from __future__ import annotations

import datetime
import importlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.auth.transport.requests
import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google import genai
from google.auth.exceptions import RefreshError
from google.genai import errors, types
from google.oauth2 import credentials as oauth2_credentials
from google.oauth2 import service_account

from tests.fakes.vertex import (
    CLOUD_PLATFORM_SCOPE,
    CONTEXT_TOO_LONG,
    DEADLINE_EXCEEDED,
    DEFAULT_TEXT,
    EMBEDDING_DIMS,
    GOOGLE_TOKEN_URI,
    INTERNAL,
    MODEL_NOT_FOUND,
    PERMISSION_DENIED,
    QUOTA_EXCEEDED,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    CutStream,
    Error,
    FakeVertex,
    Hang,
    Reply,
    TokenError,
)

MODEL = "gemini-2.0-flash"
GENERATE = f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:generateContent"
STREAM = f"/v1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:streamGenerateContent"
USER_BODY: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}]}
WEATHER_TOOL = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Current weather for a city.",
            parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
)
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


@pytest.fixture(autouse=True)
def _no_ambient_google_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let google-auth probe the GCE metadata server or pick up a developer's real credentials."""
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    for name in (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GOOGLE_API_KEY",
        "GEMINI_API_KEY",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
        "GOOGLE_GENAI_USE_VERTEXAI",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeVertex]:
    """One server (and RSA key) for the module: starting and stopping uvicorn per test would dominate run time."""
    with FakeVertex() as running:
        yield running
    assert not any(t.name == f"uvicorn:{running.port}" for t in threading.enumerate()), "server thread leaked"


@pytest.fixture
def fake(shared_fake: FakeVertex) -> FakeVertex:
    shared_fake.reset()
    return shared_fake


@pytest.fixture
def creds(fake: FakeVertex) -> service_account.Credentials:
    return service_account.Credentials.from_service_account_info(
        fake.service_account_info(), scopes=[CLOUD_PLATFORM_SCOPE]
    )


def make_client(fake: FakeVertex, credentials: Any, api_version: str | None = "v1", timeout_ms: int = 10_000) -> Any:
    """The incantation that works (provider-protocols.md 2): project+location are required even with base_url."""
    options = types.HttpOptions(base_url=fake.url, api_version=api_version, timeout=timeout_ms)
    return genai.Client(
        vertexai=True, project="p", location="us-central1", credentials=credentials, http_options=options
    )


@pytest.fixture
def client(fake: FakeVertex, creds: service_account.Credentials) -> Iterator[Any]:
    with make_client(fake, creds) as sdk:
        yield sdk


def transport_errors(name: str) -> tuple[type[BaseException], ...]:
    """google-genai 3.x sends through `httpx2` when it is installed, else `httpx`: accept either's exception."""
    modules = [httpx, *(m for m in [_optional_module("httpx2")] if m is not None)]
    return tuple(getattr(m, name) for m in modules)


def _optional_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def post(fake: FakeVertex, path: str, token: str | None, body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.post(fake.url + path, json=USER_BODY if body is None else body, headers=headers, timeout=5, **kwargs)


# --- OAuth: the service-account JWT-bearer flow --------------------------------------------------


def test_service_account_refresh_gets_a_token_from_the_fake(fake: FakeVertex, creds: Any) -> None:
    creds.refresh(google.auth.transport.requests.Request())
    assert fake.token_requests == 1
    assert creds.token and creds.valid
    assert creds.expiry is not None
    lifetime = creds.expiry - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    assert datetime.timedelta(minutes=59) < lifetime <= datetime.timedelta(hours=1)
    (claims,) = fake.token_claims
    assert claims["iss"] == fake.client_email
    assert claims["aud"] == GOOGLE_TOKEN_URI  # google-auth sends Google's URL even with a custom token_uri
    assert claims["scope"] == CLOUD_PLATFORM_SCOPE
    assert post(fake, GENERATE, creds.token).status_code == 200


def test_expired_token_is_rejected_and_refreshed_on_next_use(fake: FakeVertex, creds: Any) -> None:
    fake.expires_in = 1
    creds.refresh(google.auth.transport.requests.Request())
    first = creds.token
    assert post(fake, GENERATE, first).status_code == 200
    time.sleep(1.1)
    expired = post(fake, GENERATE, first)
    assert expired.status_code == 401
    error = expired.json()["error"]
    assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
    assert error["message"].startswith("Request had invalid authentication credentials.")
    assert error["details"][0]["reason"] == "ACCESS_TOKEN_EXPIRED"
    assert expired.headers["www-authenticate"].startswith("Bearer")
    # google-auth treats a token with < 3m45s left as expired, so the next use refreshes first.
    fake.expires_in = 3600
    session = google.auth.transport.requests.AuthorizedSession(creds)
    assert session.post(fake.url + GENERATE, json=USER_BODY, timeout=5).status_code == 200
    assert fake.token_requests == 2 and creds.token != first


def test_genai_refreshes_an_expired_token_before_the_call(fake: FakeVertex, creds: Any, client: Any) -> None:
    fake.expires_in = 1
    client.models.generate_content(model=MODEL, contents="hi")
    time.sleep(1.1)
    assert client.models.generate_content(model=MODEL, contents="hi").text == DEFAULT_TEXT
    assert fake.token_requests == 2
    first, second = (r.headers["authorization"] for r in fake.requests)
    assert first != second


def test_revoked_token_gets_401_and_authorized_session_retries_with_a_new_one(fake: FakeVertex, creds: Any) -> None:
    session = google.auth.transport.requests.AuthorizedSession(creds)
    assert session.post(fake.url + GENERATE, json=USER_BODY, timeout=5).status_code == 200
    fake.revoke_tokens()
    assert session.post(fake.url + GENERATE, json=USER_BODY, timeout=5).status_code == 200
    assert fake.token_requests == 2
    assert [r.headers["authorization"] for r in fake.requests][1] != fake.requests[2].headers["authorization"]


def test_service_account_file_round_trips(fake: FakeVertex, tmp_path: Path) -> None:
    path = fake.write_service_account_file(tmp_path / "sa.json")
    info = json.loads(path.read_text())
    assert info["type"] == "service_account" and info["token_uri"] == fake.url + "/token"
    assert info["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    creds = service_account.Credentials.from_service_account_file(str(path), scopes=[CLOUD_PLATFORM_SCOPE])
    creds.refresh(google.auth.transport.requests.Request())
    assert creds.service_account_email == fake.client_email and creds.token


def test_jwt_signed_by_another_key_is_rejected(fake: FakeVertex) -> None:
    info = fake.service_account_info()
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    info["private_key"] = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    creds = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM_SCOPE])
    with pytest.raises(RefreshError, match="invalid_grant: Invalid JWT Signature"):
        creds.refresh(google.auth.transport.requests.Request())


def test_unknown_service_account_and_missing_scope_are_rejected(fake: FakeVertex) -> None:
    info = fake.service_account_info()
    stranger = service_account.Credentials.from_service_account_info(
        {**info, "client_email": "someone@else.iam.gserviceaccount.com"}, scopes=[CLOUD_PLATFORM_SCOPE]
    )
    with pytest.raises(RefreshError, match="account not found"):
        stranger.refresh(google.auth.transport.requests.Request())
    unscoped = service_account.Credentials.from_service_account_info(info)
    response = httpx.post(
        fake.url + "/token",
        data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": _assertion(unscoped)},
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"
    wrong_grant = httpx.post(fake.url + "/token", data={"grant_type": "client_credentials"})
    assert wrong_grant.json()["error"] == "unsupported_grant_type"


def _assertion(creds: service_account.Credentials) -> str:
    return creds._make_authorization_grant_assertion().decode()  # the JWT google-auth would send


def test_scripted_token_error_raises_refresh_error(fake: FakeVertex, creds: Any) -> None:
    fake.script_token(TokenError(description="Invalid grant: account disabled"))
    with pytest.raises(RefreshError, match="account disabled"):
        creds.refresh(google.auth.transport.requests.Request())
    creds.refresh(google.auth.transport.requests.Request())  # the script is used up: tokens flow again
    assert fake.token_requests == 2 and creds.valid


def test_api_rejects_missing_unknown_and_underscoped_tokens(fake: FakeVertex) -> None:
    missing = post(fake, GENERATE, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["message"].startswith("Request is missing required authentication credential")
    assert post(fake, GENERATE, "ya29.not-from-this-fake").json()["error"]["status"] == "UNAUTHENTICATED"
    narrow = fake.issue_token(scopes=["https://www.googleapis.com/auth/userinfo.email"])
    fake.script(UNAVAILABLE)
    denied = post(fake, GENERATE, narrow).json()["error"]
    assert (denied["code"], denied["status"]) == (403, "PERMISSION_DENIED")
    assert post(fake, GENERATE, fake.issue_token()).status_code == 503  # auth failures left the script alone
    with make_client(fake, oauth2_credentials.Credentials(token="bogus")) as sdk:
        with pytest.raises(errors.ClientError) as caught:
            sdk.models.generate_content(model=MODEL, contents="hi")
    assert (caught.value.code, caught.value.status) == (401, "UNAUTHENTICATED")


def test_static_issued_token_works_with_plain_oauth2_credentials(fake: FakeVertex) -> None:
    with make_client(fake, oauth2_credentials.Credentials(token=fake.issue_token())) as sdk:
        assert sdk.models.generate_content(model=MODEL, contents="hi").text == DEFAULT_TEXT
    assert fake.token_requests == 0


# --- generateContent ----------------------------------------------------------------------------


def test_generate_content_text_and_usage(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(text="The capital of France is Paris.\n"))
    response = client.models.generate_content(
        model=MODEL,
        contents="What is the capital of France?",
        config=types.GenerateContentConfig(system_instruction="You are a helpful chatbot.", temperature=0.2),
    )
    candidate = response.candidates[0]
    assert response.text == "The capital of France is Paris.\n"
    assert candidate.content.role == "model"
    assert candidate.finish_reason == types.FinishReason.STOP
    assert candidate.avg_logprobs is not None and candidate.avg_logprobs < 0
    usage = response.usage_metadata
    assert usage.candidates_token_count == 7  # words and punctuation
    assert usage.prompt_token_count == 13  # words and punctuation of the user text and system instruction
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.thoughts_token_count is None  # proto3 JSON drops zero fields, like Gemini 2.0
    assert usage.traffic_type == types.TrafficType.ON_DEMAND
    assert response.model_version == MODEL and response.response_id and response.create_time is not None

    (seen,) = fake.requests
    assert (seen.method, seen.path, seen.version) == ("POST", GENERATE, "v1")
    assert (seen.project, seen.location, seen.model, seen.action) == ("p", "us-central1", MODEL, "generateContent")
    assert seen.headers["authorization"].startswith("Bearer ya29.fake-")
    assert seen.headers["x-goog-api-client"].startswith("google-genai-sdk/")
    assert seen.json["contents"] == [{"role": "user", "parts": [{"text": "What is the capital of France?"}]}]
    assert seen.json["systemInstruction"]["parts"] == [{"text": "You are a helpful chatbot."}]
    assert seen.json["generationConfig"]["temperature"] == 0.2


def test_default_api_version_v1beta1_is_served(fake: FakeVertex, creds: Any) -> None:
    with make_client(fake, creds, api_version=None) as sdk:
        assert sdk.models.generate_content(model=MODEL, contents="hi").text == DEFAULT_TEXT
    assert fake.requests[0].version == "v1beta1"
    assert fake.requests[0].path.startswith("/v1beta1/projects/p/locations/us-central1/publishers/google/models/")


def test_thoughts_tokens_signature_and_verbatim_usage(fake: FakeVertex, client: Any) -> None:
    fake.script(
        Reply(text="OK", thoughts_tokens=100, thought_signature="c2ln"),
        Reply(usage={"promptTokenCount": 1, "candidatesTokenCount": 2, "totalTokenCount": 3}),
    )
    response = client.models.generate_content(model="gemini-3-flash-preview", contents="Reply with exactly: OK")
    usage = response.usage_metadata
    assert usage.thoughts_token_count == 100
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count + 100
    assert response.candidates[0].content.parts[0].thought_signature == b"sig"
    verbatim = client.models.generate_content(model=MODEL, contents="hi").usage_metadata
    assert (verbatim.prompt_token_count, verbatim.candidates_token_count, verbatim.total_token_count) == (1, 2, 3)


def test_function_call(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(function_call={"name": "get_weather", "args": {"city": "Paris"}}))
    config = types.GenerateContentConfig(tools=[WEATHER_TOOL], automatic_function_calling=NO_AFC)
    response = client.models.generate_content(model=MODEL, contents="Weather in Paris?", config=config)
    (call,) = response.function_calls
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    assert response.candidates[0].finish_reason == types.FinishReason.STOP  # Gemini says STOP for tool calls
    assert response.text is None
    assert response.usage_metadata.candidates_token_count > 0
    declared = fake.requests[0].json["tools"][0]["functionDeclarations"][0]
    assert declared["name"] == "get_weather"
    assert declared["parameters_json_schema"]["type"] == "object"  # the SDK sends this key in snake_case


def test_function_call_needs_a_declared_function(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(function_call={"name": "get_weather", "args": {}}))
    with pytest.raises(errors.ClientError) as caught:
        client.models.generate_content(model=MODEL, contents="Weather?")
    assert (caught.value.code, caught.value.status) == (400, "INVALID_ARGUMENT")
    assert "get_weather" in str(caught.value.message)


def test_blocked_answer_is_200_with_no_content(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(blocked=True), Reply(blocked=True, finish_reason="MODEL_ARMOR"))
    response = client.models.generate_content(model=MODEL, contents="something nasty")
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.SAFETY
    assert candidate.content is None and response.text is None
    assert any(rating.blocked for rating in candidate.safety_ratings)
    armor = client.models.generate_content(model=MODEL, contents="something nasty").candidates[0]
    assert armor.finish_reason == types.FinishReason.MODEL_ARMOR and armor.finish_message


def test_candidate_count_gives_indexed_candidates(fake: FakeVertex) -> None:
    body = {**USER_BODY, "generationConfig": {"candidateCount": 2}}
    candidates = post(fake, GENERATE, fake.issue_token(), body).json()["candidates"]
    assert [c.get("index") for c in candidates] == [None, 1]  # zero index is left out, as in proto3 JSON


def test_invalid_requests_get_400_invalid_argument(fake: FakeVertex) -> None:
    token = fake.issue_token()
    bodies: list[dict[str, Any]] = [{"contents": []}, {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}]
    for body in bodies:
        error = post(fake, GENERATE, token, body).json()["error"]
        assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    broken = httpx.post(fake.url + GENERATE, content=b"{", headers={"authorization": f"Bearer {token}"})
    assert broken.json()["error"]["message"].startswith("Invalid JSON payload received")


# --- streamGenerateContent ----------------------------------------------------------------------


def test_stream_joined_text_and_final_usage(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(text="Paris is the capital of France."))
    chunks = list(client.models.generate_content_stream(model=MODEL, contents="Capital of France?"))
    assert len(chunks) > 1
    assert "".join(chunk.text or "" for chunk in chunks) == "Paris is the capital of France."
    assert [c.candidates[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    final = chunks[-1]
    assert final.candidates[0].finish_reason == types.FinishReason.STOP
    assert final.usage_metadata.candidates_token_count == 7
    assert final.usage_metadata.total_token_count == final.usage_metadata.prompt_token_count + 7
    assert chunks[0].usage_metadata.total_token_count is None  # partial usage on early chunks: take the last
    assert len({c.response_id for c in chunks}) == 1
    assert fake.requests[0].action == "streamGenerateContent" and fake.requests[0].query == {"alt": "sse"}
    assert fake.stream_finished.wait(2) and not fake.stream_cancelled.is_set()


def test_stream_wire_format_is_crlf_sse_without_done(fake: FakeVertex) -> None:
    fake.script(Reply(text="one two three"))
    response = post(fake, STREAM + "?alt=sse", fake.issue_token())
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content.endswith(b"\r\n\r\n") and b"[DONE]" not in response.content
    events = [json.loads(block[len(b"data: ") :]) for block in response.content.split(b"\r\n\r\n") if block]
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in events] == ["one ", "two ", "three"]
    assert "finishReason" not in events[0]["candidates"][0] and events[-1]["candidates"][0]["finishReason"] == "STOP"


def test_stream_without_alt_sse_is_a_json_array(fake: FakeVertex) -> None:
    fake.script(Reply(text="one two"))
    response = post(fake, STREAM, fake.issue_token())
    assert response.headers["content-type"].startswith("application/json")
    assert [e["candidates"][0]["content"]["parts"][0]["text"] for e in response.json()] == ["one ", "two"]


def test_stream_function_call_and_single_event_answer(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(function_call={"name": "get_weather", "args": {"city": "Paris"}}), Reply(text="OK"))
    config = types.GenerateContentConfig(tools=[WEATHER_TOOL], automatic_function_calling=NO_AFC)
    (chunk,) = list(client.models.generate_content_stream(model=MODEL, contents="Weather?", config=config))
    assert chunk.function_calls[0].args == {"city": "Paris"}
    (single,) = list(client.models.generate_content_stream(model=MODEL, contents="Reply with exactly: OK"))
    assert single.text == "OK" and single.candidates[0].finish_reason == types.FinishReason.STOP
    assert single.usage_metadata.total_token_count is not None


def test_stream_blocked_answer(fake: FakeVertex, client: Any) -> None:
    fake.script(Reply(blocked=True))
    (chunk,) = list(client.models.generate_content_stream(model=MODEL, contents="something nasty"))
    assert chunk.candidates[0].finish_reason == types.FinishReason.SAFETY and chunk.candidates[0].content is None


def test_stream_events_are_flushed_separately(fake: FakeVertex) -> None:
    fake.script(Reply(text="a b c", delay_s=0.2, chunk_delay_s=0.2))
    arrivals = []
    started = time.monotonic()
    with httpx.stream(
        "POST",
        fake.url + STREAM + "?alt=sse",
        json=USER_BODY,
        headers={"authorization": f"Bearer {fake.issue_token()}"},
    ) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 3
    assert arrivals[0] >= 0.15 and arrivals[-1] - arrivals[0] >= 0.3


def test_cut_stream_drops_the_connection(fake: FakeVertex, client: Any) -> None:
    fake.script(CutStream(after_events=2))
    received = []
    with pytest.raises(transport_errors("RemoteProtocolError")):
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hi"):
            received.append(chunk.text)
    assert received == ["word0 ", "word1 "]
    assert not fake.stream_finished.is_set()


def test_cut_stream_with_error_event_raises_api_error_mid_stream(fake: FakeVertex, client: Any) -> None:
    fake.script(CutStream(after_events=1, error=UNAVAILABLE))
    received = []
    with pytest.raises(errors.APIError) as caught:
        for chunk in client.models.generate_content_stream(model=MODEL, contents="hi"):
            received.append(chunk.text)
    assert received == ["word0 "]
    assert (caught.value.code, caught.value.status) == (503, "UNAVAILABLE")


def test_client_leaving_mid_stream_sets_stream_cancelled(fake: FakeVertex) -> None:
    fake.script(Reply(text="slow answer", delay_s=5))
    with httpx.stream(
        "POST",
        fake.url + STREAM + "?alt=sse",
        json=USER_BODY,
        headers={"authorization": f"Bearer {fake.issue_token()}"},
    ) as response:
        assert response.status_code == 200
    assert fake.stream_cancelled.wait(3)
    assert not fake.stream_finished.is_set()


# --- errors and timing --------------------------------------------------------------------------

ERRORS = [QUOTA_EXCEEDED, RESOURCE_EXHAUSTED, UNAVAILABLE, CONTEXT_TOO_LONG, PERMISSION_DENIED, MODEL_NOT_FOUND]
ERRORS += [INTERNAL, DEADLINE_EXCEEDED]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: f"{e.status_code}-{e.status}")
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_scripted_errors_reach_the_sdk_as_api_errors(fake: FakeVertex, client: Any, error: Error, stream: bool) -> None:
    fake.script(error)
    with pytest.raises(errors.APIError) as caught:
        if stream:
            list(client.models.generate_content_stream(model=MODEL, contents="hi"))
        else:
            client.models.generate_content(model=MODEL, contents="hi")
    expected_type = errors.ServerError if error.status_code >= 500 else errors.ClientError
    assert isinstance(caught.value, expected_type)
    assert (caught.value.code, caught.value.status) == (error.status_code, error.status)
    message = str(caught.value.message)
    assert message and "{model}" not in message and "{project}" not in message
    if error is MODEL_NOT_FOUND:
        assert f"projects/p/locations/us-central1/publishers/google/models/{MODEL}" in message


def test_error_body_is_google_rpc_status(fake: FakeVertex) -> None:
    fake.script(PERMISSION_DENIED)
    response = post(fake, GENERATE, fake.issue_token())
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/json; charset=UTF-8"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "status", "details"}
    assert error["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"


def test_hang_times_out_the_client_then_replies(fake: FakeVertex, creds: Any) -> None:
    fake.script(Hang(seconds=3))
    with make_client(fake, creds, timeout_ms=300) as sdk:
        started = time.monotonic()
        with pytest.raises(transport_errors("TimeoutException")):
            sdk.models.generate_content(model=MODEL, contents="hi")
        assert time.monotonic() - started < 2
        assert sdk.models.generate_content(model=MODEL, contents="hi").text == DEFAULT_TEXT


# --- predict (text embeddings) ------------------------------------------------------------------


def test_embed_content_uses_predict(fake: FakeVertex, client: Any) -> None:
    response = client.models.embed_content(
        model="text-embedding-005",
        contents=["What is your name?", "Hello"],
        config=types.EmbedContentConfig(output_dimensionality=64, task_type="RETRIEVAL_DOCUMENT"),
    )
    assert [len(e.values) for e in response.embeddings] == [64, 64]
    assert [e.statistics.token_count for e in response.embeddings] == [5, 1]
    assert response.embeddings[0].statistics.truncated is False
    assert response.metadata.billable_character_count == len("Whatisyourname?Hello")
    assert abs(sum(v * v for v in response.embeddings[0].values) - 1) < 1e-9  # unit length
    (seen,) = fake.requests
    assert seen.action == "predict" and seen.path.endswith("/models/text-embedding-005:predict")
    assert seen.json == {
        "instances": [
            {"content": "What is your name?", "task_type": "RETRIEVAL_DOCUMENT"},
            {"content": "Hello", "task_type": "RETRIEVAL_DOCUMENT"},
        ],
        "parameters": {"outputDimensionality": 64},
    }


def test_predict_defaults_and_determinism(fake: FakeVertex) -> None:
    path = "/v1beta1/projects/p/locations/us-central1/publishers/google/models/text-embedding-005:predict"
    body = {"instances": [{"content": "same text"}]}
    first = post(fake, path, fake.issue_token(), body).json()
    second = post(fake, path, fake.issue_token(), body).json()
    assert len(first["predictions"][0]["embeddings"]["values"]) == EMBEDDING_DIMS
    assert first["predictions"] == second["predictions"]
    assert first["metadata"] == {"billableCharacterCount": 8}
    fake.script(QUOTA_EXCEEDED)
    assert post(fake, path, fake.issue_token(), body).json()["error"]["status"] == "RESOURCE_EXHAUSTED"


def test_cut_stream_on_unary_call_truncates_the_body(fake: FakeVertex) -> None:
    fake.script(CutStream())
    with pytest.raises(httpx.RemoteProtocolError):
        post(fake, GENERATE, fake.issue_token())


# --- shapes match the recordings of the real service ----------------------------------------------

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "vertex"


def _recorded(name: str) -> dict[str, Any]:
    return yaml.safe_load((RECORDINGS / name).read_text(encoding="utf-8"))["interactions"][0]


def _key_shape(value: Any) -> Any:
    """Keys (recursively) without values, to compare our bodies with recorded ones."""
    if isinstance(value, dict):
        return {k: _key_shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_key_shape(value[0])] if value else []
    return type(value).__name__ if not isinstance(value, int | float) else "number"


def test_unary_body_has_the_recorded_shape(fake: FakeVertex) -> None:
    recorded = _recorded("test_google_model_vertex_provider.yaml")
    path = "/v1beta1/" + recorded["request"]["uri"].split("/v1beta1/", 1)[1]
    fake.script(Reply(text="The capital of France is Paris.\n"))
    ours = post(fake, path, fake.issue_token(), recorded["request"]["parsed_body"]).json()
    assert _key_shape(ours) == _key_shape(recorded["response"]["parsed_body"])
    assert (
        ours["usageMetadata"]["promptTokenCount"]
        == recorded["response"]["parsed_body"]["usageMetadata"]["promptTokenCount"]
    )


def test_stream_body_has_the_recorded_shape(fake: FakeVertex) -> None:
    recorded = _recorded("test_google_vertex_service_tier_flex_stream.yaml")
    wire = recorded["response"]["body"]["string"].encode()
    path = "/v1beta1/" + recorded["request"]["uri"].split("/v1beta1/", 1)[1].split("?")[0] + "?alt=sse"
    fake.script(Reply(text="OK", thoughts_tokens=100, thought_signature="c2ln"))
    ours = post(fake, path, fake.issue_token(), recorded["request"]["parsed_body"]).content
    assert ours.startswith(b"data: {") and wire.startswith(b"data: {")
    assert ours.endswith(b"}\r\n\r\n") and wire.endswith(b"}\r\n\r\n")
    (recorded_event,) = [json.loads(b[6:]) for b in wire.split(b"\r\n\r\n") if b]
    (our_event,) = [json.loads(b[6:]) for b in ours.split(b"\r\n\r\n") if b]
    recorded_event["usageMetadata"]["trafficType"] = "ON_DEMAND"  # flex tier is a request option we ignore
    assert _key_shape(our_event) == _key_shape(recorded_event)


def test_blocked_body_has_the_recorded_shape(fake: FakeVertex) -> None:
    recorded = _recorded("test_google_model_armor_response_template_real_block.yaml")["response"]["parsed_body"]
    fake.script(Reply(blocked=True, finish_reason="MODEL_ARMOR", thoughts_tokens=27))
    ours = post(fake, GENERATE, fake.issue_token()).json()
    assert _key_shape(ours["candidates"]) == _key_shape(recorded["candidates"])
    assert set(ours) == set(recorded)
