"""A scriptable fake AWS Bedrock Runtime: Converse, ConverseStream and InvokeModel (embeddings), SigV4-checked.

Serve it with `ServerThread(fake.app)` and point boto3 (`endpoint_url=server.url`) or the gateway's
`bedrock` adapter at it. Each valid request pops the next scripted behaviour; `fake.requests` shows
exactly what was sent. Wire shapes follow the provider's API reference and the real
traffic in tests/data/recordings/bedrock/: event-stream frames with `p` padding, no `contentBlockStart`
for text, `metadata` after `messageStop`, tool input streamed as JSON string pieces, errors as
`{"message": ...}` with the type in `x-amzn-ErrorType`.

Every request must carry a valid SigV4 signature (service `bedrock`), recomputed with botocore's
own signer from the bytes received, so an adapter that signs the decoded path, forgets a signed
header or alters the body after signing fails here as it would against AWS.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import json
import math
import re
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from tests.fakes.aws_eventstream import event_frame, exception_frame, json_payload
from tests.fakes.common import sleep_unless_disconnected

DEFAULT_TEXT = "Hello from the fake Bedrock."
DEFAULT_CREDENTIALS: Mapping[str, str] = {"AKIDFAKE": "fake-secret"}
SIGNING_NAME = "bedrock"
EVENTSTREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"

_BEDROCK_FAULT = "http://internal.amazon.com/coral/com.amazon.bedrock/"
_CORAL_FAULT = "http://internal.amazon.com/coral/com.amazon.coral.service/"
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. Consult the service documentation for details."
)
_INVALID_TOKEN = "The security token included in the request is invalid."

#: Messages as Bedrock commonly sends them (issue threads and AWS docs; statuses from botocore's model).
DEFAULT_MESSAGES: Mapping[str, str] = {
    "ThrottlingException": "Too many requests, please wait before trying again.",
    "ModelNotReadyException": "Model is not ready to serve inference requests. The AWS SDK will automatically "
    "retry the operation up to 5 times.",
    "ServiceUnavailableException": "Bedrock is unable to process your request.",
    "ValidationException": "Input is too long for requested model.",
    "AccessDeniedException": "You don't have access to the model with the specified model ID.",
    "ResourceNotFoundException": "Model not found.",
    "ModelTimeoutException": "Model has timed out in processing the request. Try your request again.",
    "ModelErrorException": "The system encountered an unexpected error during processing. Try your request again.",
    "InternalServerException": "The server encountered an internal error while processing the request.",
    "ServiceQuotaExceededException": "Your request exceeds the service quota for your account.",
    "throttlingException": "Too many requests, please wait before trying again.",
    "serviceUnavailableException": "Bedrock is unable to process your request.",
    "modelStreamErrorException": "The model encountered an error while streaming the response.",
    "internalServerException": "The server encountered an internal error while processing the request.",
    "validationException": "Input is too long for requested model.",
}


# --- behaviours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A valid answer built from the request: echo-ish text, optional tool call, computed usage.

    `text=None` gives "You said: <last user text>" (or nothing when a tool call is answered).
    `tool_use` = `{"name", "input": {...}, "toolUseId"?}`, used only when the request has a
    `toolConfig` (a model cannot call tools it was not given). `usage` is sent verbatim.
    Cache counts go into usage as `cacheRead/WriteInputTokens` and into `totalTokens`.
    `delay_s` delays the body (stream: after the headers, before `messageStart`).
    """

    text: str | None = None
    tool_use: dict[str, Any] | None = None
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    delay_s: float = 0.0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Error:
    """An HTTP error before any body: `{"message"}` JSON, type in `x-amzn-ErrorType` (with Coral's `:...` suffix).

    Statuses per botocore's service model: ThrottlingException 429, ModelNotReadyException 429,
    ValidationException 400, AccessDeniedException 403, ResourceNotFoundException 404,
    ModelTimeoutException 408, ModelErrorException 424, InternalServerException 500,
    ServiceUnavailableException 503, ServiceQuotaExceededException 400 (InvokeModel only).
    """

    status: int
    error_type: str
    message: str | None = None


@dataclass(frozen=True)
class StreamException:
    """ConverseStream: `messageStart`, `after_chunks` text deltas ("word0 ", ...), then an exception frame.

    `exception_type` is the lower-camel union member: throttlingException, validationException,
    modelStreamErrorException, internalServerException, serviceUnavailableException.
    Other endpoints treat it as `Reply()`.
    """

    after_chunks: int
    exception_type: str
    message: str | None = None
    original_status_code: int | None = None  # modelStreamErrorException members
    original_message: str | None = None
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class CutStream:
    """ConverseStream: `messageStart` and `after_chunks` deltas, then the connection drops (no final chunk).

    Other endpoints treat it as `Reply()`.
    """

    after_chunks: int
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds` (slow first byte), then reply normally; ends early if the client leaves."""

    seconds: float


Behaviour = Reply | Error | StreamException | CutStream | Hang

#: Ready-made errors with Bedrock's statuses and messages.
THROTTLING = Error(429, "ThrottlingException")
MODEL_NOT_READY = Error(429, "ModelNotReadyException")
SERVICE_UNAVAILABLE = Error(503, "ServiceUnavailableException")
CONTEXT_TOO_LONG = Error(400, "ValidationException", "Input is too long for requested model.")
INVALID_MODEL = Error(400, "ValidationException", "The provided model identifier is invalid.")
ACCESS_DENIED = Error(403, "AccessDeniedException")
MODEL_TIMEOUT = Error(408, "ModelTimeoutException")
MODEL_ERROR = Error(424, "ModelErrorException")
INTERNAL = Error(500, "InternalServerException")


@dataclass
class RecordedRequest:
    """One request as the fake received it (before auth is judged), so tests can assert what was sent."""

    method: str
    path: str  # raw, still percent-encoded, as signed
    model_id: str  # decoded
    operation: str  # "converse" | "converse-stream" | "invoke"
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, or None when absent or not JSON
    access_key: str | None  # from the Authorization credential scope


class _BedrockError(Exception):
    """Raised inside a handler to answer with an AWS-style JSON error."""

    def __init__(self, status: int, error_type: str, message: str, fault: str = _BEDROCK_FAULT) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.fault = fault


# --- the fake -----------------------------------------------------------------------------------

_PATH = re.compile(r"/model/([^/]+)/(converse|converse-stream|invoke)")


class FakeBedrock:
    """Bedrock Runtime upstream that verifies SigV4 and serves Converse, ConverseStream and InvokeModel.

    `credentials`: access key -> secret key accepted. `session_tokens`: access key -> the
    `x-amz-security-token` it must send (keys not listed must send none). `region`: if set, the
    only credential-scope region accepted. `max_skew_s`: allowed clock skew of `x-amz-date` (AWS: 5 min;
    None disables). `validate`: reject malformed Converse bodies with Bedrock's ValidationExceptions.
    """

    def __init__(
        self,
        credentials: Mapping[str, str] | None = None,
        *,
        session_tokens: Mapping[str, str] | None = None,
        region: str | None = None,
        max_skew_s: float | None = 300.0,
        validate: bool = True,
    ) -> None:
        self.credentials = dict(DEFAULT_CREDENTIALS if credentials is None else credentials)
        self.session_tokens = dict(session_tokens or {})
        self.region = region
        self.max_skew_s = max_skew_s
        self.validate = validate
        self.requests: list[RecordedRequest] = []
        self.stream_cancelled = threading.Event()
        self.stream_finished = threading.Event()
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/model/{rest:path}", self._handle, methods=["POST"])])

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each authenticated request pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    # -- request handling --

    async def _handle(self, request: Request) -> Response:
        # Route on the raw path: a model ARN's `/` arrives as %2F, which Starlette's decoded path hides.
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1")
        body = await request.body()
        headers = _header_map(request)
        match = _PATH.fullmatch(path)
        try:
            parsed: Any = json.loads(body) if body else None
        except ValueError:
            parsed = None
        access_key = _access_key(headers.get("authorization", ""))
        model_id = unquote(match.group(1)) if match else ""
        operation = match.group(2) if match else ""
        self.requests.append(RecordedRequest(request.method, path, model_id, operation, headers, parsed, access_key))
        started = time.monotonic()
        try:
            self._verify_sigv4(request, path, headers, body)
            if match is None:
                raise _BedrockError(404, "UnknownOperationException", "Unknown operation", _CORAL_FAULT)
            if body and parsed is None:
                raise _BedrockError(400, "SerializationException", "Request body is not valid JSON.", _CORAL_FAULT)
            req = parsed if isinstance(parsed, dict) else {}
            behaviour = self._next()
            if isinstance(behaviour, Error):
                message = behaviour.message or DEFAULT_MESSAGES.get(behaviour.error_type, "Error.")
                raise _BedrockError(behaviour.status, behaviour.error_type, message)
            if isinstance(behaviour, Hang):
                if await sleep_unless_disconnected(request, behaviour.seconds):
                    return Response(b"", 499)  # nobody is listening; uvicorn drops it
                behaviour = Reply()
            if operation == "invoke":
                return await self._invoke(request, model_id, req, behaviour, started)
            if self.validate:
                _validate_converse(req)
            if operation == "converse-stream":
                frames = self._guarded(_stream_frames(req, model_id, behaviour, started))
                return _EventStreamResponse(frames, headers=_headers())  # type: ignore[arg-type]  # None = cut
            reply = behaviour if isinstance(behaviour, Reply) else Reply()
            if await sleep_unless_disconnected(request, reply.delay_s):
                return Response(b"", 499)
            return _json(200, _converse_response(req, model_id, reply, started))
        except _BedrockError as error:
            return _error_response(error)

    async def _invoke(
        self, request: Request, model_id: str, req: dict[str, Any], behaviour: Behaviour, started: float
    ) -> Response:
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        if await sleep_unless_disconnected(request, reply.delay_s):
            return Response(b"", 499)
        if "titan-embed" in model_id:
            body, tokens = _titan_embedding(model_id, req)
        elif "cohere.embed" in model_id:
            body, tokens = _cohere_embedding(model_id, req)
        else:
            raise _BedrockError(400, "ValidationException", "The provided model identifier is invalid.")
        latency = _latency_ms(started)
        headers = _headers(
            {"x-amzn-bedrock-input-token-count": str(tokens), "x-amzn-bedrock-invocation-latency": str(latency)}
        )
        return _json(200, body, headers)

    async def _guarded(self, frames: AsyncIterator[bytes | None]) -> AsyncIterator[bytes | None]:
        """Report how a stream ended: the client leaving shows up here as CancelledError/GeneratorExit."""
        dropping = False
        try:
            async for frame in frames:
                dropping = frame is None
                yield frame
        except (asyncio.CancelledError, GeneratorExit, OSError):
            if not dropping:
                self.stream_cancelled.set()
            raise
        else:
            self.stream_finished.set()

    # -- SigV4 --

    def _verify_sigv4(self, request: Request, path: str, headers: dict[str, str], body: bytes) -> None:
        """Recompute the signature with botocore from what arrived; raise AWS's 403 on any mismatch.

        The canonical request uses the raw path (botocore percent-encodes it once more, so `%3A` is
        signed as `%253A`), only the headers named in SignedHeaders, and the SHA-256 of the body
        actually received, never a client-supplied `x-amz-content-sha256`.
        """
        authorization = headers.get("authorization")
        if not authorization:
            raise _BedrockError(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token", _CORAL_FAULT
            )
        algorithm, _, rest = authorization.partition(" ")
        params = dict(part.strip().split("=", 1) for part in rest.split(",") if "=" in part)
        missing = [name for name in ("Credential", "SignedHeaders", "Signature") if name not in params]
        if algorithm != "AWS4-HMAC-SHA256" or missing:
            problems = " ".join(f"Authorization header requires '{name}' parameter." for name in missing)
            raise _BedrockError(
                403,
                "IncompleteSignatureException",
                f"{problems or 'Unsupported signing algorithm.'} Authorization={authorization}",
                _CORAL_FAULT,
            )
        scope = params["Credential"].split("/")
        if len(scope) != 5 or scope[4] != "aws4_request":
            raise _BedrockError(
                403, "IncompleteSignatureException", f"Credential is malformed: {params['Credential']}", _CORAL_FAULT
            )
        access_key, scope_date, region, service, _ = scope
        secret = self.credentials.get(access_key)
        if secret is None or headers.get("x-amz-security-token") != self.session_tokens.get(access_key):
            raise _BedrockError(403, "UnrecognizedClientException", _INVALID_TOKEN, _CORAL_FAULT)
        if service != SIGNING_NAME:
            raise _BedrockError(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SIGNING_NAME}'.",
                _CORAL_FAULT,
            )
        if self.region is not None and region != self.region:
            raise _BedrockError(
                403, "InvalidSignatureException", "Credential should be scoped to a valid region.", _CORAL_FAULT
            )
        amz_date = headers.get("x-amz-date", "")
        try:
            signed_at = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            raise _BedrockError(
                403,
                "IncompleteSignatureException",
                "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. "
                f"Authorization={authorization}",
                _CORAL_FAULT,
            ) from None
        if amz_date[:8] != scope_date:
            raise _BedrockError(
                403,
                "InvalidSignatureException",
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: "
                f"'{scope_date}' != '{amz_date[:8]}', from '{amz_date}'.",
                _CORAL_FAULT,
            )
        self._check_skew(signed_at)
        signed_names = params["SignedHeaders"].split(";")
        if "host" not in signed_names:
            raise _BedrockError(
                403,
                "IncompleteSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
                _CORAL_FAULT,
            )
        signed = HTTPHeaders()
        for name, value in request.headers.items():  # keeps repeated headers, in arrival order
            if name.lower() in signed_names:
                signed[name.lower()] = value
        query = request.scope.get("query_string", b"").decode("latin-1")
        url = f"{request.url.scheme}://{headers.get('host', '')}{path}" + (f"?{query}" if query else "")
        aws_request = AWSRequest(method=request.method, url=url, data=body)
        aws_request.context["timestamp"] = amz_date
        signer = _ReceivedSigV4(Credentials(access_key, secret), service, region, signed)
        canonical = signer.canonical_request(aws_request)
        string_to_sign = signer.string_to_sign(aws_request, canonical)
        expected = signer.signature(string_to_sign, aws_request)
        if not hmac.compare_digest(expected, params["Signature"]):
            message = (
                f"{_SIGNATURE_MISMATCH}\n\nThe Canonical String for this request should have been\n'{canonical}'\n\n"
                f"The String-to-Sign should have been\n'{string_to_sign}'\n"
            )
            raise _BedrockError(403, "InvalidSignatureException", message, _CORAL_FAULT)

    def _check_skew(self, signed_at: dt.datetime) -> None:
        if self.max_skew_s is None:
            return
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        skew = dt.timedelta(seconds=self.max_skew_s)
        minutes = f"{self.max_skew_s / 60:g} min."
        fmt = "%Y%m%dT%H%M%SZ"
        if signed_at < now - skew:
            message = (
                f"Signature expired: {signed_at:{fmt}} is now earlier than {now - skew:{fmt}} ({now:{fmt}} - {minutes})"
            )
            raise _BedrockError(403, "InvalidSignatureException", message, _CORAL_FAULT)
        if signed_at > now + skew:
            message = (
                f"Signature not yet current: {signed_at:{fmt}} is still later than {now + skew:{fmt}} "
                f"({now:{fmt}} + {minutes})"
            )
            raise _BedrockError(403, "InvalidSignatureException", message, _CORAL_FAULT)


class _ReceivedSigV4(SigV4Auth):
    """botocore's SigV4 maths over exactly the headers the client listed in SignedHeaders.

    Stock `headers_to_sign` would pick every header of the request minus a blacklist, so a client
    that signed fewer (or more) headers than botocore would would be misjudged.
    """

    def __init__(self, credentials: Credentials, service: str, region: str, signed: HTTPHeaders) -> None:
        super().__init__(credentials, service, region)
        self._signed = signed

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed


class _EventStreamResponse(StreamingResponse):
    """Streams event-stream frames one `send` each; `None` abandons the connection (no terminating chunk)."""

    media_type = EVENTSTREAM_CONTENT_TYPE

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        iterator: AsyncIterator[Any] = self.body_iterator  # type: ignore[assignment]
        async for chunk in iterator:
            if chunk is None:
                return  # uvicorn closes the transport: the client sees an incomplete chunked body
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- Converse -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    text: str | None
    tool: dict[str, Any] | None  # {"toolUseId", "name", "input"}
    stop_reason: str
    usage: dict[str, Any]


def _answer(req: dict[str, Any], model_id: str, reply: Reply) -> _Answer:
    """What the "model" says, shared by Converse and ConverseStream so both agree for one script."""
    tool = None
    if reply.tool_use is not None and req.get("toolConfig"):
        tool = {
            "toolUseId": reply.tool_use.get("toolUseId") or _tool_use_id(),
            "name": reply.tool_use["name"],
            "input": reply.tool_use.get("input", {}),
        }
    text = reply.text
    if text is None and tool is None:
        last = _last_user_text(req)
        text = f"You said: {last}" if last else DEFAULT_TEXT
    stop_reason = reply.stop_reason or ("tool_use" if tool else "end_turn")
    max_tokens = (req.get("inferenceConfig") or {}).get("maxTokens")
    if text and tool is None and reply.stop_reason is None and isinstance(max_tokens, int):
        words = re.findall(r"\s*\S+", text)
        if len(words) > max_tokens:  # one word = one token here, so truncation is predictable
            text, stop_reason = "".join(words[:max_tokens]), "max_tokens"
    usage = reply.usage if reply.usage is not None else _usage(req, model_id, text, tool, reply)
    return _Answer(text, tool, stop_reason, usage)


def _converse_response(req: dict[str, Any], model_id: str, reply: Reply, started: float) -> dict[str, Any]:
    answer = _answer(req, model_id, reply)
    content: list[dict[str, Any]] = []
    if answer.text is not None:
        content.append({"text": answer.text})
    if answer.tool is not None:
        tool = dict(answer.tool)
        if "anthropic" in model_id:
            tool["type"] = "tool_use"  # Claude on Bedrock adds this (recorded)
        content.append({"toolUse": tool})
    return {
        "metrics": {"latencyMs": _latency_ms(started)},
        "output": {"message": {"content": content, "role": "assistant"}},
        "stopReason": answer.stop_reason,
        "usage": answer.usage,
    }


async def _stream_frames(
    req: dict[str, Any], model_id: str, behaviour: Behaviour, started: float
) -> AsyncIterator[bytes | None]:
    """Frames in the order real Bedrock sends them; each is yielded (and so flushed) on its own."""
    if isinstance(behaviour, StreamException | CutStream):
        yield event_frame("messageStart", {"role": "assistant"})
        for i in range(behaviour.after_chunks):
            await asyncio.sleep(behaviour.chunk_delay_s)
            yield event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": f"word{i} "}})
        if isinstance(behaviour, CutStream):
            yield None
            return
        fields: dict[str, Any] = {}
        if behaviour.original_status_code is not None:
            fields["originalStatusCode"] = behaviour.original_status_code
        if behaviour.original_message is not None:
            fields["originalMessage"] = behaviour.original_message
        message = behaviour.message or DEFAULT_MESSAGES.get(behaviour.exception_type, "Error.")
        yield exception_frame(behaviour.exception_type, message, fields=fields)
        return

    reply = behaviour if isinstance(behaviour, Reply) else Reply()
    answer = _answer(req, model_id, reply)
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)  # headers are already out: this is time-to-first-token
    yield event_frame("messageStart", {"role": "assistant"})
    index = 0
    if answer.text is not None:
        for piece in re.findall(r"\s*\S+|\s+$", answer.text) or [answer.text]:
            yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": piece}})
            await asyncio.sleep(reply.chunk_delay_s)  # also lets uvicorn flush and notice a disconnect
        yield event_frame("contentBlockStop", {"contentBlockIndex": index})
        index += 1
    if answer.tool is not None:
        start = {"toolUse": {"name": answer.tool["name"], "toolUseId": answer.tool["toolUseId"]}}
        yield event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start})
        arguments = json.dumps(answer.tool["input"], separators=(",", ":"), ensure_ascii=False)
        for piece in _json_pieces(arguments):
            yield event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}})
            await asyncio.sleep(reply.chunk_delay_s)
        yield event_frame("contentBlockStop", {"contentBlockIndex": index})
    yield event_frame("messageStop", {"stopReason": answer.stop_reason})
    yield event_frame("metadata", {"metrics": {"latencyMs": _latency_ms(started)}, "usage": answer.usage})


def _json_pieces(arguments: str, size: int = 8) -> list[str]:
    """Tool input as the model streams it: arbitrary string slices that only parse once joined."""
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


def _validate_converse(req: dict[str, Any]) -> None:
    """The checks Bedrock applies before any model runs, with its messages, so adapter bugs surface here."""
    messages = req.get("messages")
    if not isinstance(messages, list):
        raise _BedrockError(
            400,
            "ValidationException",
            "1 validation error detected: Value null at 'messages' failed to satisfy constraint: "
            "Member must not be null",
        )
    uses_tools = False
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if i == 0 and role != "user":
            raise _BedrockError(
                400,
                "ValidationException",
                "A conversation must start with a user message. Try again with a conversation that starts "
                "with a user message.",
            )
        if i > 0 and isinstance(messages[i - 1], dict) and role == messages[i - 1].get("role"):
            raise _BedrockError(
                400,
                "ValidationException",
                "A conversation must alternate between user and assistant roles. Make sure the conversation "
                "alternates between user and assistant roles and try again.",
            )
        for j, block in enumerate((message.get("content") if isinstance(message, dict) else None) or []):
            if not isinstance(block, dict):
                continue
            if "text" in block and not str(block["text"]).strip():
                raise _BedrockError(
                    400,
                    "ValidationException",
                    f"The text field in the ContentBlock object at messages.{i}.content.{j} is blank. "
                    "Add text to the text field, and try again.",
                )
            uses_tools = uses_tools or "toolUse" in block or "toolResult" in block
    if uses_tools and not req.get("toolConfig"):
        raise _BedrockError(
            400,
            "ValidationException",
            "The toolConfig field must be defined when using toolUse and toolResult content blocks.",
        )
    config = req.get("inferenceConfig") or {}
    for name, low, high in (("temperature", 0, 1), ("topP", 0, 1), ("maxTokens", 1, None)):
        value = config.get(name)
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        if value < low:
            bound = f"greater than or equal to {low}"
        elif high is not None and value > high:
            bound = f"less than or equal to {high}"
        else:
            continue
        raise _BedrockError(
            400,
            "ValidationException",
            f"1 validation error detected: Value '{value}' at 'inferenceConfig.{name}' failed to satisfy "
            f"constraint: Member must have value {bound}",
        )


def _last_user_text(req: dict[str, Any]) -> str:
    for message in reversed(req.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(_block_texts(message.get("content") or [])).strip()
    return ""


def _block_texts(blocks: list[Any]) -> list[str]:
    texts = []
    for block in blocks:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        result = block.get("toolResult")
        if isinstance(result, dict):
            texts.extend(_block_texts(result.get("content") or []))
    return texts


def _usage(
    req: dict[str, Any], model_id: str, text: str | None, tool: dict[str, Any] | None, reply: Reply
) -> dict[str, Any]:
    """Deterministic counts: words, plus a little per message and tool; Claude-style cache fields for Claude."""
    words = sum(len(t.split()) for t in _block_texts(req.get("system") or []))
    for message in req.get("messages") or []:
        if isinstance(message, dict):
            words += 3 + sum(len(t.split()) for t in _block_texts(message.get("content") or []))
    words += 10 * len((req.get("toolConfig") or {}).get("tools") or [])
    output = len((text or "").split()) + (len(json.dumps(tool["input"])) // 4 + 1 if tool else 0)
    cache_read, cache_write = reply.cache_read_tokens, reply.cache_write_tokens
    usage: dict[str, Any] = {
        "inputTokens": words,
        "outputTokens": output,
        "totalTokens": words + output + cache_read + cache_write,
    }
    if "anthropic" in model_id:  # as recorded: both spellings, always present, plus serverToolUsage
        usage |= {
            "cacheReadInputTokenCount": cache_read,
            "cacheReadInputTokens": cache_read,
            "cacheWriteInputTokenCount": cache_write,
            "cacheWriteInputTokens": cache_write,
            "serverToolUsage": {},
        }
    else:
        if cache_read:
            usage["cacheReadInputTokens"] = cache_read
        if cache_write:
            usage["cacheWriteInputTokens"] = cache_write
    return usage


# --- InvokeModel embeddings ---------------------------------------------------------------------


def _malformed(detail: str) -> _BedrockError:
    return _BedrockError(
        400, "ValidationException", f"Malformed input request: {detail}, please reformat your input and try again."
    )


def _titan_embedding(model_id: str, req: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Titan Text Embeddings: v2 takes `dimensions` (256/512/1024) and `normalize`; v1 is fixed at 1536."""
    text = req.get("inputText")
    if not isinstance(text, str):
        raise _malformed("#: required key [inputText] not found")
    if not text:
        raise _malformed("#/inputText: expected minLength: 1, actual: 0")
    if "v1" in model_id:
        dims = 1536
    else:
        dims = req.get("dimensions", 1024)
        if dims not in (256, 512, 1024):
            raise _malformed(f"#/dimensions: {dims} is not a valid enum value")
    vector = _vector(text, dims, normalize=req.get("normalize", True) is not False)
    tokens = max(1, len(text.split()))
    body: dict[str, Any] = {"embedding": vector, "inputTextTokenCount": tokens}
    types = req.get("embeddingTypes")
    if isinstance(types, list):
        by_type: dict[str, Any] = {}
        if "float" in types:
            by_type["float"] = vector
        if "binary" in types:
            by_type["binary"] = [1 if x > 0 else 0 for x in vector]
        body["embeddingsByType"] = by_type
    return body, tokens


def _cohere_embedding(model_id: str, req: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Cohere Embed on Bedrock: `texts` + required `input_type`; floats unless `embedding_types` is given."""
    texts = req.get("texts")
    if not isinstance(texts, list):
        raise _malformed("#: required key [texts] not found")
    if "input_type" not in req:
        raise _malformed("#: required key [input_type] not found")
    dims = req.get("output_dimension") or (1536 if "v4" in model_id else 1024)
    vectors = [_vector(text, dims, normalize=True) for text in texts]
    body: dict[str, Any] = {"id": str(uuid.uuid4()), "texts": texts}
    types = req.get("embedding_types")
    if isinstance(types, list):
        embeddings: dict[str, Any] = {}
        for kind in types:
            if kind == "float":
                embeddings["float"] = vectors
            else:  # int8/uint8/binary/ubinary: integers, which is all a client can check without Cohere
                embeddings[kind] = [[round(x * 127) for x in vector] for vector in vectors]
        body |= {"embeddings": embeddings, "response_type": "embeddings_by_type"}
    else:
        body |= {"embeddings": vectors, "response_type": "embeddings_floats"}
    return body, sum(max(1, len(str(text).split())) for text in texts)


def _vector(item: Any, dims: int, *, normalize: bool) -> list[float]:
    """Deterministic per input, so the same text always embeds to the same vector."""
    seed = zlib.crc32(json.dumps(item).encode("utf-8")) % 10_000
    vector = [math.sin(seed + j * 0.7) for j in range(dims)]
    if normalize:
        norm = math.sqrt(sum(x * x for x in vector)) or 1.0
        vector = [x / norm for x in vector]
    return vector


# --- helpers ------------------------------------------------------------------------------------


def _header_map(request: Request) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}


def _access_key(authorization: str) -> str | None:
    match = re.search(r"Credential=([^/,\s]+)/", authorization)
    return match.group(1) if match else None


def _error_response(error: _BedrockError) -> Response:
    headers = _headers({"x-amzn-ErrorType": f"{error.error_type}:{error.fault}"})
    return _json(error.status, {"message": error.message}, headers)


def _tool_use_id() -> str:
    """Shaped like Bedrock's (`tooluse_` + 22 base64url chars)."""
    return "tooluse_" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii")[:22]


def _latency_ms(started: float) -> int:
    return max(1, int((time.monotonic() - started) * 1000))


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"x-amzn-RequestId": str(uuid.uuid4())}
    headers.update(extra or {})
    return headers


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json_payload(body), status, headers if headers is not None else _headers(), "application/json")
