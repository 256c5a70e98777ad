"""Prove FakeBedrock speaks real Bedrock: boto3 must sign for it, parse it and raise on it as it would on AWS.

The event-stream encoder is checked against botocore's CRC-checking decoder and against the real
frames recorded in tests/data/recordings/bedrock/, which it reproduces byte for byte.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.session
import httpx
import pytest
import urllib3
import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError, ReadTimeoutError
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Receive, Scope, Send

from tests.fakes.aws_eventstream import encode_frame, error_frame, event_frame, exception_frame
from tests.fakes.bedrock import (
    CutStream,
    Error,
    FakeBedrock,
    Hang,
    Reply,
    StreamException,
)
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "bedrock"
NOVA = "us.amazon.nova-micro-v1:0"
CLAUDE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
USER = [{"role": "user", "content": [{"text": "What is the capital of France?"}]}]
TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": "Get the current weather for a city.",
                "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}}},
            }
        }
    ]
}
WEATHER = {"name": "get_weather", "input": {"city": "Paris", "units": "celsius", "days": [1, 2]}}
_SESSION = boto3.session.Session()  # one loader for all clients: service models are parsed once


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No IMDS probing, and no bearer token that botocore would prefer over SigV4."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)


class _Swappable:
    """One uvicorn for the whole module, serving whichever fake the current test installed.

    Starting and stopping a server costs ~0.2 s (uvicorn polls for shutdown), more than most tests here.
    """

    def __init__(self) -> None:
        self.fake = FakeBedrock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await self.fake.app(scope, receive, send)


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[_Swappable, ServerThread]]:
    app = _Swappable()
    with ServerThread(app) as running:
        yield app, running
    assert not any(t.name == f"uvicorn:{running.port}" for t in threading.enumerate()), "server thread leaked"


@pytest.fixture
def server(shared: tuple[_Swappable, ServerThread], fake: FakeBedrock) -> ServerThread:
    """The module's server, with this test's fresh default fake installed."""
    return shared[1]


def serve(shared: tuple[_Swappable, ServerThread], fake: FakeBedrock) -> str:
    """Install `fake` on the module's server; returns its URL."""
    shared[0].fake = fake
    return shared[1].url


@pytest.fixture
def fake(shared: tuple[_Swappable, ServerThread]) -> FakeBedrock:
    fresh = FakeBedrock()
    serve(shared, fresh)
    return fresh


def make_client(url: str, *, secret: str = "fake-secret", key: str = "AKIDFAKE", **kwargs: Any) -> Any:
    config = Config(retries={"total_max_attempts": 1}, read_timeout=kwargs.pop("read_timeout", 10))
    return _SESSION.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=config,
        **kwargs,
    )


@pytest.fixture
def client(server: ServerThread, fake: FakeBedrock) -> Iterator[Any]:
    sdk = make_client(server.url)
    yield sdk
    sdk.close()  # drop the keep-alive connection, or uvicorn's shutdown waits on it


def signed_post(url: str, body: bytes, **credentials: Any) -> httpx.Response:
    """Sign like an adapter would (AWSRequest + SigV4Auth), then send the same bytes with httpx."""
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": "application/json"})
    creds = Credentials(credentials.get("key", "AKIDFAKE"), credentials.get("secret", "fake-secret"))
    SigV4Auth(creds, "bedrock", "us-east-1").add_auth(request)
    return httpx.post(url, content=credentials.get("send", body), headers=dict(request.headers.items()))


def events_of(data: bytes) -> list[tuple[dict[str, Any], bytes]]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    return [(message.headers, message.payload) for message in buffer]


def recorded_streams() -> list[tuple[str, bytes]]:
    streams = []
    for path in sorted(RECORDINGS.glob("*.yaml")):
        for i, interaction in enumerate(yaml.safe_load(path.read_text())["interactions"]):
            body = interaction["response"].get("body")
            if isinstance(body, dict) and isinstance(body.get("string"), bytes):
                streams.append((f"{path.stem}[{i}]", body["string"]))
    return streams


# --- the encoder --------------------------------------------------------------------------------


def test_encode_frame_is_accepted_by_botocore() -> None:
    headers = {":event-type": "contentBlockDelta", ":content-type": "application/json", "x-note": "café ☕"}
    frame = encode_frame(headers, b'{"a":1}')
    assert events_of(frame) == [(headers, b'{"a":1}')]
    total, headers_length = struct.unpack(">II", frame[:8])
    assert total == len(frame) and 12 + headers_length + 7 + 4 == total


def test_corrupted_frame_fails_botocore_crc() -> None:
    frame = bytearray(event_frame("messageStart", {"role": "assistant"}))
    frame[-6] ^= 0x01  # a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        events_of(bytes(frame))


def test_event_frame_shape_and_padding() -> None:
    ((headers, payload),) = events_of(event_frame("messageStop", {"stopReason": "end_turn"}))
    assert headers == {":event-type": "messageStop", ":content-type": "application/json", ":message-type": "event"}
    body = json.loads(payload)
    assert body["stopReason"] == "end_turn"
    assert "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".startswith(body["p"])
    paddings = {json.loads(events_of(event_frame("metadata", {}))[0][1])["p"] for _ in range(50)}
    assert len(paddings) > 5  # random length, like Bedrock's


def test_exception_and_error_frames() -> None:
    ((headers, payload),) = events_of(exception_frame("throttlingException", "slow down", fields={"x": 1}))
    assert headers[":message-type"] == "exception" and headers[":exception-type"] == "throttlingException"
    assert json.loads(payload) == {"message": "slow down", "x": 1}
    ((headers, payload),) = events_of(error_frame("InternalFailure", "boom"))
    assert headers == {":error-code": "InternalFailure", ":error-message": "boom", ":message-type": "error"}
    assert payload == b""


@pytest.mark.parametrize(("name", "recorded"), recorded_streams(), ids=lambda v: v if isinstance(v, str) else "")
def test_recorded_frames_reencode_byte_identically(name: str, recorded: bytes) -> None:
    offset = 0
    for headers, payload in events_of(recorded):
        (total,) = struct.unpack(">I", recorded[offset : offset + 4])
        original = recorded[offset : offset + total]
        offset += total
        assert encode_frame(headers, payload) == original
        body = json.loads(payload)
        padding = body.pop("p")
        # Also the JSON itself: sorted keys, compact, raw UTF-8 (the recordings hold "30°C" and escaped quotes).
        assert event_frame(headers[":event-type"], body, padding=padding) == original
    assert offset == len(recorded)


# --- Converse -----------------------------------------------------------------------------------


def test_converse_text_usage_and_recorded_request(client: Any, fake: FakeBedrock) -> None:
    response = client.converse(
        modelId=NOVA, messages=USER, system=[{"text": "Be brief."}], inferenceConfig={"temperature": 0.2}
    )
    assert response["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": "You said: What is the capital of France?"}],
    }
    assert response["stopReason"] == "end_turn"
    usage = response["usage"]
    assert usage["inputTokens"] == 2 + 3 + 6 and usage["outputTokens"] == 8
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"]
    assert response["metrics"]["latencyMs"] >= 1
    assert response["ResponseMetadata"]["RequestId"]
    (recorded,) = fake.requests
    assert recorded.path == "/model/us.amazon.nova-micro-v1%3A0/converse"
    assert (recorded.model_id, recorded.operation, recorded.access_key) == (NOVA, "converse", "AKIDFAKE")
    assert recorded.json["inferenceConfig"] == {"temperature": 0.2}
    assert recorded.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDFAKE/")
    assert "/us-east-1/bedrock/aws4_request" in recorded.headers["authorization"]


def test_converse_max_tokens_truncates(client: Any, fake: FakeBedrock) -> None:
    fake.script(Reply(text="one two three four five six"))
    response = client.converse(modelId=NOVA, messages=USER, inferenceConfig={"maxTokens": 3})
    assert response["output"]["message"]["content"] == [{"text": "one two three"}]
    assert response["stopReason"] == "max_tokens"


def test_converse_tool_use_claude_style(client: Any, fake: FakeBedrock) -> None:
    fake.script(Reply(tool_use=WEATHER, cache_read_tokens=100, cache_write_tokens=7))
    response = client.converse(modelId=CLAUDE, messages=USER, toolConfig=TOOLS)
    (block,) = response["output"]["message"]["content"]
    assert block["toolUse"]["name"] == "get_weather"
    assert block["toolUse"]["input"] == WEATHER["input"]
    assert block["toolUse"]["toolUseId"].startswith("tooluse_")
    assert response["stopReason"] == "tool_use"
    usage = response["usage"]
    assert (usage["cacheReadInputTokens"], usage["cacheWriteInputTokens"]) == (100, 7)
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] + 107


def test_converse_tool_use_needs_tool_config(client: Any, fake: FakeBedrock) -> None:
    fake.script(Reply(tool_use=WEATHER), Reply(text="Checking.", tool_use={**WEATHER, "toolUseId": "tooluse_x"}))
    plain = client.converse(modelId=NOVA, messages=USER)
    assert plain["stopReason"] == "end_turn" and "toolUse" not in plain["output"]["message"]["content"][0]
    both = client.converse(modelId=NOVA, messages=USER, toolConfig=TOOLS)
    assert both["output"]["message"]["content"][0] == {"text": "Checking."}
    assert both["output"]["message"]["content"][1]["toolUse"]["toolUseId"] == "tooluse_x"


def test_verbatim_usage_and_stop_reason(client: Any, fake: FakeBedrock) -> None:
    usage = {"inputTokens": 11, "outputTokens": 22, "totalTokens": 33}
    fake.script(Reply(usage=usage, stop_reason="guardrail_intervened"))
    response = client.converse(modelId=NOVA, messages=USER)
    assert response["usage"] == usage and response["stopReason"] == "guardrail_intervened"


def test_model_arn_is_one_encoded_segment(client: Any, fake: FakeBedrock) -> None:
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.amazon.nova-micro-v1:0"
    client.converse(modelId=arn, messages=USER)
    assert fake.requests[0].path.startswith(
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
    )
    assert fake.requests[0].model_id == arn


def test_validation_like_bedrock(client: Any) -> None:
    with pytest.raises(ClientError) as info:
        client.converse(modelId=NOVA, messages=[{"role": "assistant", "content": [{"text": "hi"}]}])
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "must start with a user message" in info.value.response["Error"]["Message"]


# --- ConverseStream -----------------------------------------------------------------------------


def test_converse_stream_text_in_bedrock_order(client: Any, fake: FakeBedrock) -> None:
    response = client.converse_stream(modelId=NOVA, messages=USER)
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == "application/vnd.amazon.eventstream"
    events = list(response["stream"])
    names = [next(iter(event)) for event in events]
    assert names[0] == "messageStart" and names[-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert set(names[1:-3]) == {"contentBlockDelta"}  # no contentBlockStart for a text block
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e)
    assert text == "You said: What is the capital of France?"
    assert events[-2]["messageStop"] == {"stopReason": "end_turn"}
    usage = events[-1]["metadata"]["usage"]
    assert usage["totalTokens"] == usage["inputTokens"] + usage["outputTokens"] == 9 + 8
    assert fake.stream_finished.wait(2) and not fake.stream_cancelled.is_set()


def test_converse_stream_tool_use(client: Any, fake: FakeBedrock) -> None:
    fake.script(Reply(text="Let me check.", tool_use=WEATHER))
    events = list(client.converse_stream(modelId=NOVA, messages=USER, toolConfig=TOOLS)["stream"])
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert len(starts) == 1 and starts[0]["contentBlockIndex"] == 1
    assert starts[0]["start"]["toolUse"]["name"] == "get_weather"
    pieces = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "toolUse" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert len(pieces) > 1 and json.loads("".join(pieces)) == WEATHER["input"]
    stops = [e["contentBlockStop"]["contentBlockIndex"] for e in events if "contentBlockStop" in e]
    assert stops == [0, 1]
    assert events[-2]["messageStop"]["stopReason"] == "tool_use" and "metadata" in events[-1]


EXCEPTION_MEMBERS = [
    "throttlingException",
    "modelStreamErrorException",
    "serviceUnavailableException",
    "internalServerException",
    "validationException",
]


@pytest.mark.parametrize("exception_type", EXCEPTION_MEMBERS)
def test_stream_exception_raises_event_stream_error(client: Any, fake: FakeBedrock, exception_type: str) -> None:
    original = 500 if exception_type == "modelStreamErrorException" else None
    fake.script(StreamException(2, exception_type, "it broke", original_status_code=original))
    texts: list[str] = []
    with pytest.raises(EventStreamError) as info:
        for event in client.converse_stream(modelId=NOVA, messages=USER)["stream"]:
            if "contentBlockDelta" in event:
                texts.append(event["contentBlockDelta"]["delta"]["text"])
    assert texts == ["word0 ", "word1 "]
    assert info.value.response["Error"] == {"Code": exception_type, "Message": "it broke"}


def test_stream_exception_names_match_botocore_model() -> None:
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    members = model.shape_for("ConverseStreamOutput").members
    assert sorted(n for n, m in members.items() if m.metadata.get("exception")) == sorted(EXCEPTION_MEMBERS)


def test_cut_stream_breaks_the_sdk(client: Any, fake: FakeBedrock) -> None:
    fake.script(CutStream(3))
    texts: list[str] = []
    with pytest.raises(urllib3.exceptions.ProtocolError, match="Response ended prematurely"):
        for event in client.converse_stream(modelId=NOVA, messages=USER)["stream"]:
            texts.append(event.get("contentBlockDelta", {}).get("delta", {}).get("text", ""))
    assert "".join(texts) == "word0 word1 word2 "
    assert not fake.stream_finished.is_set()


def test_client_leaving_mid_stream_is_seen(client: Any, fake: FakeBedrock) -> None:
    fake.script(Reply(text=" ".join(f"w{i}" for i in range(100)), chunk_delay_s=0.02))
    stream = client.converse_stream(modelId=NOVA, messages=USER)["stream"]
    next(iter(stream))
    stream.close()
    assert fake.stream_cancelled.wait(5) and not fake.stream_finished.is_set()


def test_hang_delays_first_byte_then_replies(server: ServerThread, fake: FakeBedrock) -> None:
    fake.script(Hang(2.0), Hang(0.3))
    with pytest.raises(ReadTimeoutError):
        make_client(server.url, read_timeout=0.3).converse(modelId=NOVA, messages=USER)
    started = time.monotonic()
    response = make_client(server.url).converse(modelId=NOVA, messages=USER)
    assert time.monotonic() - started >= 0.3 and response["stopReason"] == "end_turn"


# --- errors -------------------------------------------------------------------------------------

SCRIPTED_ERRORS = [
    Error(429, "ThrottlingException", "Too many requests, please wait before trying again."),
    Error(429, "ModelNotReadyException"),
    Error(503, "ServiceUnavailableException"),
    Error(400, "ValidationException", "Input is too long for requested model."),
    Error(403, "AccessDeniedException"),
    Error(404, "ResourceNotFoundException"),
    Error(408, "ModelTimeoutException"),
    Error(424, "ModelErrorException"),
    Error(500, "InternalServerException"),
]


@pytest.mark.parametrize("error", SCRIPTED_ERRORS, ids=lambda e: e.error_type)
@pytest.mark.parametrize("operation", ["converse", "converse_stream"])
def test_scripted_errors_reach_botocore(client: Any, fake: FakeBedrock, error: Error, operation: str) -> None:
    fake.script(error)
    with pytest.raises(ClientError) as info:
        getattr(client, operation)(modelId=NOVA, messages=USER)
    response = info.value.response
    assert response["Error"]["Code"] == error.error_type
    assert response["ResponseMetadata"]["HTTPStatusCode"] == error.status
    assert response["Error"]["Message"]
    if error.message:
        assert response["Error"]["Message"] == error.message
    # the modeled exception class, as a caller would catch it
    assert isinstance(info.value, getattr(client.exceptions, error.error_type))


# --- SigV4 --------------------------------------------------------------------------------------


def test_wrong_secret_is_invalid_signature(server: ServerThread, fake: FakeBedrock) -> None:
    with pytest.raises(ClientError) as info:
        make_client(server.url, secret="not-the-secret").converse(modelId=NOVA, messages=USER)
    response = info.value.response
    assert response["Error"]["Code"] == "InvalidSignatureException"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 403
    message = response["Error"]["Message"]
    assert message.startswith("The request signature we calculated does not match the signature you provided.")
    # AWS shows the canonical request: the already-encoded path is encoded again (%3A -> %253A)
    assert "'POST\n/model/us.amazon.nova-micro-v1%253A0/converse\n" in message
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert fake.requests and not fake._queue  # recorded, and no scripted behaviour consumed


def test_unknown_access_key(server: ServerThread) -> None:
    with pytest.raises(ClientError) as info:
        make_client(server.url, key="AKIDOTHER").converse(modelId=NOVA, messages=USER)
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert info.value.response["Error"]["Message"] == "The security token included in the request is invalid."


def test_session_token_is_checked(shared: tuple[_Swappable, ServerThread]) -> None:
    fake = FakeBedrock({"ASIAFAKE": "temp-secret"}, session_tokens={"ASIAFAKE": "token-1"})
    url = serve(shared, fake)
    ok = make_client(url, key="ASIAFAKE", secret="temp-secret", aws_session_token="token-1")
    assert ok.converse(modelId=NOVA, messages=USER)["stopReason"] == "end_turn"
    assert fake.requests[0].headers["x-amz-security-token"] == "token-1"
    for token in ("token-2", None):
        bad = make_client(url, key="ASIAFAKE", secret="temp-secret", aws_session_token=token)
        with pytest.raises(ClientError) as info:
            bad.converse(modelId=NOVA, messages=USER)
        assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_region_can_be_pinned(shared: tuple[_Swappable, ServerThread]) -> None:
    url = serve(shared, FakeBedrock(region="eu-west-1"))
    with pytest.raises(ClientError) as info:
        make_client(url).converse(modelId=NOVA, messages=USER)
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_manual_signing_like_an_adapter(server: ServerThread, fake: FakeBedrock) -> None:
    url = server.url + "/model/us.amazon.nova-micro-v1%3A0/converse"
    body = json.dumps({"messages": USER}).encode()
    good = signed_post(url, body)
    assert good.status_code == 200 and good.json()["stopReason"] == "end_turn"
    tampered = signed_post(url, body, send=body.replace(b"France", b"Spain!"))
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    assert tampered.json()["message"].startswith("The request signature we calculated does not match")


def test_stale_signature_expires(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> None:
    old = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=20)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: old)
    response = signed_post(server.url + "/model/m/converse", json.dumps({"messages": USER}).encode())
    assert response.status_code == 403
    assert response.json()["message"].startswith(f"Signature expired: {old:%Y%m%dT%H%M%SZ} is now earlier than")


def test_missing_authorization(server: ServerThread) -> None:
    response = httpx.post(server.url + "/model/m/converse", json={"messages": USER})
    assert response.status_code == 403
    assert response.headers["x-amzn-errortype"].startswith("MissingAuthenticationTokenException")


# --- InvokeModel embeddings ---------------------------------------------------------------------


def test_invoke_titan_embedding(client: Any, fake: FakeBedrock) -> None:
    body = {"inputText": "hello embedding world", "dimensions": 256, "normalize": True}
    response = client.invoke_model(
        modelId="amazon.titan-embed-text-v2:0", body=json.dumps(body), contentType="application/json"
    )
    result = json.loads(response["body"].read())
    assert len(result["embedding"]) == 256 and result["inputTextTokenCount"] == 3
    assert math.isclose(math.sqrt(sum(x * x for x in result["embedding"])), 1.0, rel_tol=1e-9)
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-bedrock-input-token-count"] == "3"
    assert response["contentType"] == "application/json"
    assert fake.requests[0].path == "/model/amazon.titan-embed-text-v2%3A0/invoke"
    again = json.loads(
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps(body))["body"].read()
    )
    assert again["embedding"] == result["embedding"]  # deterministic
    default = json.loads(
        client.invoke_model(modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "x"}))["body"].read()
    )
    assert len(default["embedding"]) == 1024


def test_invoke_cohere_embedding(client: Any) -> None:
    body = {"texts": ["first text", "second"], "input_type": "search_document"}
    result = json.loads(client.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps(body))["body"].read())
    assert result["response_type"] == "embeddings_floats"
    assert result["texts"] == body["texts"] and result["id"]
    assert len(result["embeddings"]) == 2 and all(len(v) == 1024 for v in result["embeddings"])
    assert result["embeddings"][0] != result["embeddings"][1]


def test_invoke_validation_errors(client: Any) -> None:
    with pytest.raises(ClientError) as info:
        client.invoke_model(modelId="cohere.embed-english-v3", body=json.dumps({"texts": ["x"]}))
    assert info.value.response["Error"]["Code"] == "ValidationException"
    assert "input_type" in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as info:
        client.invoke_model(
            modelId="amazon.titan-embed-text-v2:0", body=json.dumps({"inputText": "x", "dimensions": 7})
        )
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


# --- the stream under arbitrary TCP splits ------------------------------------------------------


@pytest.fixture(scope="module")
def stream_bytes(shared: tuple[_Swappable, ServerThread]) -> bytes:
    fake = FakeBedrock()
    fake.script(Reply(text='Paris is the capital of France, 30°C "quoted".', tool_use=WEATHER))
    body = json.dumps({"messages": USER, "toolConfig": TOOLS}).encode()
    response = signed_post(serve(shared, fake) + "/model/us.amazon.nova-micro-v1%3A0/converse-stream", body)
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    return response.content


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_stream_decodes_the_same_however_it_is_split(stream_bytes: bytes, cuts: list[int]) -> None:
    whole = events_of(stream_bytes)
    points = sorted({c % (len(stream_bytes) + 1) for c in cuts})
    buffer = EventStreamBuffer()
    pieced: list[tuple[dict[str, Any], bytes]] = []
    for start, end in zip([0, *points], [*points, len(stream_bytes)], strict=True):
        buffer.add_data(stream_bytes[start:end])
        pieced.extend((message.headers, message.payload) for message in buffer)
    assert pieced == whole
    names = [headers[":event-type"] for headers, _ in whole]
    assert names[0] == "messageStart" and names[-2:] == ["messageStop", "metadata"]
    assert names.count("contentBlockStart") == 1
