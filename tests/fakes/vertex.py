"""A scriptable fake Google Vertex AI (Gemini) plus Google's OAuth token endpoint, in one Starlette app.

The gateway's `vertex` adapter authenticates with a service account (RS256 JWT-bearer grant) and then
calls `generateContent`, `streamGenerateContent?alt=sse` and `:predict` (text embeddings). Faking both
halves lets tests run the real google-auth / google-genai code end to end, including token expiry and
refresh, with no network. Use it as a context manager, which serves it on a free loopback port:

    with FakeVertex() as fake:
        creds = service_account.Credentials.from_service_account_info(
            fake.service_account_info(), scopes=[CLOUD_PLATFORM_SCOPE])
        client = genai.Client(vertexai=True, project="p", location="us-central1", credentials=creds,
                              http_options=HttpOptions(base_url=fake.url, api_version="v1"))

Each API request pops the next scripted behaviour (`Reply()` once the script is empty). Wire shapes
follow the provider's API reference and the recordings in tests/data/recordings/vertex/:
proto-JSON with zero values left out, `createTime`/`responseId`/`modelVersion`/`avgLogprobs`, usage
`trafficType`, SSE events ending in `\\r\\n\\r\\n` with no `[DONE]`, google.rpc.Status error bodies, and
blocked answers as HTTP 200 candidates with no `content`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import re
import secrets
import threading
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from tests.fakes.common import sleep_unless_disconnected
from tests.support.server import ServerThread, free_port

DEFAULT_TEXT = "Hello from the fake Vertex."
EMBEDDING_DIMS = 768  # text-embedding-005's default output size
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # google-auth always puts this in the JWT `aud`
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
API_VERSIONS = ("v1", "v1beta1")
ACTIONS = ("generateContent", "streamGenerateContent", "predict")

_JSON = "application/json; charset=UTF-8"
_VARY = {"vary": "Origin, X-Origin, Referer"}
_MISSING = "Request is missing required authentication credential."
_AUTH_HELP = (
    "Expected OAuth 2 access token, login cookie or other valid authentication credential. "
    "See https://developers.google.com/identity/sign-in/web/devconsole-project."
)


# --- behaviours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A successful answer built from the request (streamed when the endpoint streams).

    `text=None` means `DEFAULT_TEXT`, or no text part when there is a `function_call`.
    `function_call` is `{"name", "args"}` (or a list of them, for parallel calls); the request must
    declare each name in `tools[].functionDeclarations`, otherwise the fake answers 400, because real
    Gemini cannot call a function it was not given. `blocked=True` gives a safety-filtered answer:
    HTTP 200, a candidate with no `content`, `safetyRatings`, and finishReason "SAFETY" (or
    `finish_reason` when that is not "STOP", e.g. "MODEL_ARMOR"). `usage` replaces the computed
    `usageMetadata` verbatim. `delay_s` delays the first byte of the body (for streams: the first
    event, after the headers); `chunk_delay_s` separates stream events. `thought_signature` is put on
    the first part, as Gemini 3 does.
    """

    text: str | None = None
    function_call: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None
    finish_reason: str = "STOP"
    usage: Mapping[str, Any] | None = None
    delay_s: float = 0.0
    blocked: bool = False
    thoughts_tokens: int = 0
    chunk_delay_s: float = 0.0
    thought_signature: str | None = None


@dataclass(frozen=True)
class Error:
    """An HTTP error with a google.rpc.Status body: `{"error": {"code", "message", "status", "details"?}}`.

    `{project}`, `{location}` and `{model}` in `message` are filled in from the request path.
    On `streamGenerateContent` the error comes before any event, as the real service does.
    """

    status_code: int
    status: str
    message: str
    details: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class CutStream:
    """Send `after_events` text events (`"word0 "`, `"word1 "`, ...) with no finishReason, then stop.

    With `error=None` the connection is dropped (incomplete chunked body); with an `Error` an
    in-stream `data: {"error": ...}` event is sent and the stream then ends cleanly, which is how
    Vertex reports failures after the 200 headers. On non-streaming endpoints: half a JSON body, then
    the connection drops.
    """

    after_events: int = 1
    error: Error | None = None


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds` (slow first byte), then reply normally; ends early if the client leaves."""

    seconds: float


@dataclass(frozen=True)
class TokenError:
    """A failure of the OAuth token endpoint (google-auth raises `RefreshError`)."""

    status_code: int = 400
    error: str = "invalid_grant"
    description: str = "Invalid JWT Signature."


Behaviour = Reply | Error | CutStream | Hang

# Real Vertex error bodies (provider-protocols.md section 2, "Errors").
QUOTA_EXCEEDED = Error(
    429,
    "RESOURCE_EXHAUSTED",
    "Quota exceeded for aiplatform.googleapis.com/generate_content_requests_per_minute_per_project_per_base_model "
    "with base model: {model}. Please submit a quota increase request. "
    "https://cloud.google.com/vertex-ai/docs/generative-ai/quotas-genai.",
)
RESOURCE_EXHAUSTED = Error(
    429,
    "RESOURCE_EXHAUSTED",
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details.",
)
UNAVAILABLE = Error(503, "UNAVAILABLE", "The service is currently unavailable.")
CONTEXT_TOO_LONG = Error(
    400,
    "INVALID_ARGUMENT",
    "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
)
PERMISSION_DENIED = Error(
    403,
    "PERMISSION_DENIED",
    "Permission 'aiplatform.endpoints.predict' denied on resource "
    "'//aiplatform.googleapis.com/projects/{project}/locations/{location}/publishers/google/models/{model}' "
    "(or it may not exist).",
    (
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": "IAM_PERMISSION_DENIED",
            "domain": "aiplatform.googleapis.com",
            "metadata": {"permission": "aiplatform.endpoints.predict"},
        },
    ),
)
MODEL_NOT_FOUND = Error(
    404,
    "NOT_FOUND",
    "Publisher Model `projects/{project}/locations/{location}/publishers/google/models/{model}` was not found "
    "or your project does not have access to it. Please ensure you are using a valid model version. "
    "For more information, see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions",
)
INTERNAL = Error(500, "INTERNAL", "Internal error encountered.")
DEADLINE_EXCEEDED = Error(504, "DEADLINE_EXCEEDED", "Deadline expired before operation could complete.")


@dataclass
class RecordedRequest:
    """One API request as the fake received it, so tests can assert what the adapter sent."""

    method: str  # HTTP method
    path: str
    query: dict[str, str]
    version: str  # "v1" or "v1beta1"
    project: str
    location: str
    model: str
    action: str  # "generateContent", "streamGenerateContent" or "predict"
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, or None when absent or not JSON


@dataclass
class _Token:
    expires_at: float  # time.monotonic()
    scopes: frozenset[str]


@dataclass
class _Call:
    """Where a request was aimed, for messages and error metadata."""

    version: str
    project: str
    location: str
    model: str
    action: str
    stream: bool
    sse: bool


class _GrantError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


# --- the fake -----------------------------------------------------------------------------------


class FakeVertex:
    """Google OAuth token endpoint + Vertex Gemini API, served on 127.0.0.1 while used as a context manager."""

    def __init__(self, *, project: str = "fake-project", expires_in: int = 3600, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token_uri = self.url + "/token"
        self.project = project
        self.expires_in = expires_in  # lifetime of tokens issued from now on; tests shorten it
        self._default_expires_in = expires_in
        self.client_email = f"fake-vertex@{project}.iam.gserviceaccount.com"
        self.private_key_id = secrets.token_hex(20)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.requests: list[RecordedRequest] = []
        self.auth_failures = 0  # API calls refused for a missing, unknown or expired token
        self.token_requests = 0
        self.token_claims: list[dict[str, Any]] = []  # verified JWT claims of each granted token
        self.stream_cancelled = threading.Event()
        self.stream_finished = threading.Event()
        self._tokens: dict[str, _Token] = {}
        self._queue: deque[Behaviour] = deque()
        self._token_queue: deque[TokenError] = deque()
        self._lock = threading.Lock()
        self._server: ServerThread | None = None
        self.app = Starlette(
            routes=[
                Route("/token", self._token, methods=["POST"]),
                Route(
                    "/{version}/projects/{project}/locations/{location}/publishers/google/models/{target}",
                    self._api,
                    methods=["POST"],
                ),
            ]
        )

    # -- lifecycle and credentials --

    def __enter__(self) -> FakeVertex:
        self._server = ServerThread(self.app, port=self.port).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc)
            self._server = None

    def service_account_info(self) -> dict[str, str]:
        """A complete service-account key JSON whose `token_uri` is this fake, as google-auth loads it."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode("ascii")
        return {
            "type": "service_account",
            "project_id": self.project,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": "1" + str(zlib.crc32(self.client_email.encode())).rjust(20, "0"),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + self.client_email.replace("@", "%40"),
            "universe_domain": "googleapis.com",
        }

    def write_service_account_file(self, path: str | Path) -> Path:
        """Write `service_account_info()` as a key file (for code that takes a path); returns the path."""
        target = Path(path)
        target.write_text(json.dumps(self.service_account_info(), indent=2), encoding="utf-8")
        return target

    def issue_token(self, *, expires_in: int | None = None, scopes: Sequence[str] = (CLOUD_PLATFORM_SCOPE,)) -> str:
        """A valid access token without the JWT flow, for tests using static `google.oauth2.credentials`."""
        lifetime = self.expires_in if expires_in is None else expires_in
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = _Token(time.monotonic() + lifetime, frozenset(scopes))
        return token

    def reset(self) -> None:
        """Forget requests, scripts, tokens and counters, keeping the key and server (for a shared fake)."""
        with self._lock:
            self.requests.clear()
            self.token_claims.clear()
            self.token_requests = 0
            self.auth_failures = 0
            self.expires_in = self._default_expires_in
            self._tokens.clear()
            self._queue.clear()
            self._token_queue.clear()
        self.stream_cancelled.clear()
        self.stream_finished.clear()

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far: the next API call gets 401 (tests refresh-on-401)."""
        with self._lock:
            self._tokens.clear()

    # -- scripting --

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each authenticated API request pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def script_token(self, *errors: TokenError) -> None:
        """Queue token-endpoint failures; each token request pops one, then tokens are granted again."""
        with self._lock:
            self._token_queue.extend(errors)

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    # -- OAuth token endpoint --

    async def _token(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True).items()}
        with self._lock:
            self.token_requests += 1
            scripted = self._token_queue.popleft() if self._token_queue else None
        if scripted is not None:
            body = {"error": scripted.error, "error_description": scripted.description}
            return _json(scripted.status_code, body, pretty=False)
        try:
            if form.get("grant_type") != JWT_BEARER_GRANT:
                raise _GrantError("unsupported_grant_type", f"Invalid grant_type: {form.get('grant_type', '')}")
            claims = self._verify_assertion(form.get("assertion", ""))
        except _GrantError as exc:
            return _json(400, {"error": exc.error, "error_description": exc.description}, pretty=False)
        token = self.issue_token(scopes=str(claims["scope"]).split())
        with self._lock:
            self.token_claims.append(claims)
        granted: dict[str, Any] = {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        return _json(200, granted, pretty=False)

    def _verify_assertion(self, assertion: str) -> dict[str, Any]:
        """Check the JWT like Google does: RS256 signature by the known key, issuer, audience, scope, lifetime."""
        try:
            header_b64, claims_b64, signature_b64 = assertion.split(".")
            header = json.loads(_b64url(header_b64))
            claims = json.loads(_b64url(claims_b64))
            signature = _b64url(signature_b64)
        except ValueError:
            raise _GrantError("invalid_grant", "Invalid JWT: malformed assertion.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            raise _GrantError("invalid_grant", "Invalid JWT: only RS256 assertions are accepted.")
        if claims.get("iss") != self.client_email:
            raise _GrantError("invalid_grant", "Invalid grant: account not found")
        if header.get("kid") not in (None, self.private_key_id):
            raise _GrantError("invalid_grant", "Invalid JWT Signature.")
        try:
            self._key.public_key().verify(
                signature, f"{header_b64}.{claims_b64}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            raise _GrantError("invalid_grant", "Invalid JWT Signature.") from None
        if claims.get("aud") not in (GOOGLE_TOKEN_URI, self.token_uri):
            raise _GrantError("invalid_grant", "Invalid JWT: Failed audience check.")
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(iat, int | float)
            or not isinstance(exp, int | float)
            or iat > now + 300
            or exp < now - 300
            or exp - iat > 3600
        ):
            raise _GrantError(
                "invalid_grant",
                "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
                "Check your iat and exp values in the JWT claim.",
            )
        if not str(claims.get("scope") or "").split():
            raise _GrantError("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return claims

    # -- Vertex API --

    async def _api(self, request: Request) -> Response:
        params = request.path_params
        model, _, action = str(params["target"]).rpartition(":")
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        query = {k: v[0] for k, v in parse_qs(request.url.query).items()}
        call = _Call(
            version=params["version"],
            project=params["project"],
            location=params["location"],
            model=model,
            action=action,
            stream=action == "streamGenerateContent",
            sse=query.get("alt") == "sse",
        )
        recorded = RecordedRequest(
            method=request.method,
            path=request.url.path,
            query=query,
            version=call.version,
            project=call.project,
            location=call.location,
            model=model,
            action=action,
            headers=headers,
            json=body,
        )
        with self._lock:
            self.requests.append(recorded)
        if call.version not in API_VERSIONS or not model or action not in ACTIONS:
            return _status_response(404, "NOT_FOUND", f"Method not found: {request.url.path}")
        denied = self._auth_failure(headers, call)
        if denied is not None:
            with self._lock:
                self.auth_failures += 1
            return denied
        if raw and body is None:
            return _status_response(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unexpected token.")
        req = body if isinstance(body, dict) else {}
        invalid = _validate_predict(req) if action == "predict" else _validate_generate(req)
        if invalid is not None:
            return _status_response(400, "INVALID_ARGUMENT", invalid)

        behaviour = self._next()
        if isinstance(behaviour, Error):
            return _error_response(behaviour, call)
        if isinstance(behaviour, Hang):
            if await sleep_unless_disconnected(request, behaviour.seconds):
                return Response(b"", 499)  # nobody is listening; uvicorn drops it
            behaviour = Reply()
        if isinstance(behaviour, CutStream):
            if call.stream:
                events = _cut_events(call, behaviour)
                return _StreamResponse(self._guarded(_frames(events, call.sse, cut=behaviour.error is None)), call)
            whole = _dumps(_generate_response(req, Reply(), call) if action != "predict" else _predict_response(req))
            return _StreamResponse(self._guarded(_truncated(whole)), call, media_type=_JSON)
        if action == "predict":
            if await sleep_unless_disconnected(request, behaviour.delay_s):
                return Response(b"", 499)
            return _json(200, _predict_response(req))
        declared = _declared_functions(req)
        for name in (c.get("name") for c in _calls(behaviour.function_call)):
            if name not in declared:
                return _status_response(
                    400,
                    "INVALID_ARGUMENT",
                    f"fake Vertex: the script asks for functionCall {name!r} but the request declares "
                    f"{sorted(declared)} in tools[].functionDeclarations",
                )
        if call.stream:
            events = _stream_events(req, behaviour, call)
            frames = _frames(events, call.sse, delay_s=behaviour.delay_s, chunk_delay_s=behaviour.chunk_delay_s)
            return _StreamResponse(self._guarded(frames), call)
        if await sleep_unless_disconnected(request, behaviour.delay_s):
            return Response(b"", 499)
        return _json(200, _generate_response(req, behaviour, call))

    def _auth_failure(self, headers: Mapping[str, str], call: _Call) -> Response | None:
        """401/403 like Google's front end: missing, unknown, expired or under-scoped bearer tokens."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            known = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        invalid = f"Request had invalid authentication credentials. {_AUTH_HELP}"
        if not scheme:
            message, reason = f"{_MISSING} {_AUTH_HELP}", "CREDENTIALS_MISSING"
        elif known is None:
            message, reason = invalid, "ACCESS_TOKEN_TYPE_UNSUPPORTED"
        elif time.monotonic() >= known.expires_at:
            message, reason = invalid, "ACCESS_TOKEN_EXPIRED"
        elif CLOUD_PLATFORM_SCOPE not in known.scopes:
            info = _error_info("ACCESS_TOKEN_SCOPE_INSUFFICIENT", call)
            return _status_response(403, "PERMISSION_DENIED", "Request had insufficient authentication scopes.", info)
        else:
            return None
        extra = {"www-authenticate": 'Bearer realm="https://accounts.google.com/"'}
        return _status_response(401, "UNAUTHENTICATED", message, _error_info(reason, call), extra)

    async def _guarded(self, frames: AsyncIterator[bytes | None]) -> AsyncIterator[bytes | None]:
        """Report how a stream ended: the client leaving shows up here as CancelledError/GeneratorExit/OSError."""
        try:
            async for frame in frames:
                yield frame
                if frame is None:
                    return  # a scripted cut: neither finished nor cancelled
        except (asyncio.CancelledError, GeneratorExit, OSError):
            self.stream_cancelled.set()
            raise
        self.stream_finished.set()


class _StreamResponse(StreamingResponse):
    """Streams frames as separate chunked writes; a `None` frame abandons the connection mid-body.

    Starlette cancels the body task when uvicorn reports `http.disconnect` (ASGI spec 2.3), which is
    how the guarded generator learns that the client went away.
    """

    def __init__(self, frames: AsyncIterator[bytes | None], call: _Call, media_type: str | None = None) -> None:
        kind = media_type or ("text/event-stream" if call.sse else _JSON)
        body: AsyncIterator[Any] = frames  # None frames are handled by stream_response below
        super().__init__(body, 200, {**_VARY, "x-content-type-options": "nosniff"}, kind)

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        iterator: AsyncIterator[Any] = self.body_iterator  # type: ignore[assignment]
        async for chunk in iterator:
            if chunk is None:
                return  # uvicorn closes the transport: the client sees an incomplete chunked body
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- generateContent ----------------------------------------------------------------------------


def _generate_response(req: Mapping[str, Any], reply: Reply, call: _Call) -> dict[str, Any]:
    """A whole GenerateContentResponse, keys in the order Vertex sends them."""
    n = _candidate_count(req)
    text, calls = _answer(reply)
    candidates = []
    for index in range(n):
        candidate = _blocked_candidate(reply) if reply.blocked else _candidate(text, calls, reply)
        candidate["avgLogprobs"] = _avg_logprobs(text or json.dumps(calls))
        if index:
            candidate["index"] = index  # proto3 JSON leaves out zero values, so candidate 0 has no index
        candidates.append(candidate)
    return {
        "candidates": candidates,
        "usageMetadata": _usage(req, reply, text, calls, n),
        **_envelope(call),
    }


def _stream_events(req: Mapping[str, Any], reply: Reply, call: _Call) -> list[dict[str, Any]]:
    """Stream chunks: new text only per event; the last carries finishReason, calls and full usage."""
    n = _candidate_count(req)
    envelope = _envelope(call)
    text, calls = _answer(reply)
    usage = _usage(req, reply, text, calls, n)
    if reply.blocked:
        candidates = [_with_index(_blocked_candidate(reply), i) for i in range(n)]
        return [{"candidates": candidates, "usageMetadata": usage, **envelope}]
    pieces = re.findall(r"\s*\S+\s*", text) if text and text.strip() else ([text] if text else [])
    partial_usage = {k: usage[k] for k in ("promptTokenCount", "trafficType") if k in usage}
    events = []
    for number, piece in enumerate(pieces[:-1]):
        part = _text_part(piece, reply.thought_signature if number == 0 else None)
        candidates = [_with_index({"content": {"role": "model", "parts": [part]}}, i) for i in range(n)]
        events.append({"candidates": candidates, "usageMetadata": partial_usage, **envelope})
    last_text = pieces[-1] if pieces else None
    last = _candidate(last_text, calls, reply, sign=not events)
    events.append({"candidates": [_with_index(dict(last), i) for i in range(n)], "usageMetadata": usage, **envelope})
    return events


def _cut_events(call: _Call, cut: CutStream) -> list[dict[str, Any]]:
    envelope = _envelope(call)
    events: list[dict[str, Any]] = [
        {"candidates": [{"content": {"role": "model", "parts": [{"text": f"word{i} "}]}}], **envelope}
        for i in range(cut.after_events)
    ]
    if cut.error is not None:
        events.append(_status_body(cut.error.status_code, cut.error.status, _fill(cut.error.message, call)))
    return events


async def _frames(
    events: list[dict[str, Any]], sse: bool, *, cut: bool = False, delay_s: float = 0.0, chunk_delay_s: float = 0.0
) -> AsyncIterator[bytes | None]:
    """SSE `data: {json}\\r\\n\\r\\n` events (no `[DONE]`), or without `alt=sse` one JSON array in pieces."""
    if delay_s > 0:
        await asyncio.sleep(delay_s)  # headers are already out: this is time-to-first-token
    for number, event in enumerate(events):
        if number and chunk_delay_s > 0:
            await asyncio.sleep(chunk_delay_s)
        compact = json.dumps(event, separators=(",", ": "), ensure_ascii=False)
        if sse:
            yield f"data: {compact}\r\n\r\n".encode()
        else:
            yield (("[" if number == 0 else ",\r\n") + json.dumps(event, indent=2, ensure_ascii=False)).encode()
        await asyncio.sleep(0)  # let uvicorn flush each event and notice a disconnect between them
    if cut:
        yield None
        return
    if not sse:
        yield b"]" if events else b"[]"


async def _truncated(whole: bytes) -> AsyncIterator[bytes | None]:
    yield whole[: len(whole) // 2]
    yield None


def _answer(reply: Reply) -> tuple[str | None, list[dict[str, Any]]]:
    """The text and functionCall objects a reply stands for (an `id` only when the script gives one)."""
    calls = []
    for raw in _calls(reply.function_call):
        call: dict[str, Any] = {"name": raw["name"], "args": dict(raw.get("args") or {})}
        if raw.get("id"):
            call = {"id": raw["id"], **call}
        calls.append(call)
    text = reply.text if reply.text is not None else (None if calls else DEFAULT_TEXT)
    return text, calls


def _calls(raw: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
    if raw is None:
        return []
    return [raw] if isinstance(raw, Mapping) else list(raw)


def _text_part(text: str, signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": text}
    if signature:
        part["thoughtSignature"] = signature
    return part


def _candidate(text: str | None, calls: list[dict[str, Any]], reply: Reply, sign: bool = True) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": text}] if text is not None else []
    parts += [{"functionCall": call} for call in calls]
    if sign and reply.thought_signature and parts:
        parts[0]["thoughtSignature"] = reply.thought_signature
    return {"content": {"role": "model", "parts": parts}, "finishReason": reply.finish_reason}


def _blocked_candidate(reply: Reply) -> dict[str, Any]:
    reason = reply.finish_reason if reply.finish_reason != "STOP" else "SAFETY"
    candidate: dict[str, Any] = {"finishReason": reason}
    if reason == "MODEL_ARMOR":
        candidate["finishMessage"] = (
            "The response violated Responsible AI Safety settings (Hate Speech, Harassment, Dangerous) filters."
        )
    else:
        candidate["safetyRatings"] = _safety_ratings()
    return candidate


def _safety_ratings() -> list[dict[str, Any]]:
    ratings: list[dict[str, Any]] = [
        {
            "category": "HARM_CATEGORY_HATE_SPEECH",
            "probability": "NEGLIGIBLE",
            "probabilityScore": 0.05,
            "severity": "HARM_SEVERITY_NEGLIGIBLE",
            "severityScore": 0.04,
        },
        {
            "category": "HARM_CATEGORY_DANGEROUS_CONTENT",
            "probability": "HIGH",
            "probabilityScore": 0.93,
            "severity": "HARM_SEVERITY_HIGH",
            "severityScore": 0.88,
            "blocked": True,
        },
        {
            "category": "HARM_CATEGORY_HARASSMENT",
            "probability": "LOW",
            "probabilityScore": 0.21,
            "severity": "HARM_SEVERITY_LOW",
            "severityScore": 0.17,
        },
        {
            "category": "HARM_CATEGORY_SEXUALLY_EXPLICIT",
            "probability": "NEGLIGIBLE",
            "probabilityScore": 0.02,
            "severity": "HARM_SEVERITY_NEGLIGIBLE",
            "severityScore": 0.01,
        },
    ]
    return ratings


def _with_index(candidate: dict[str, Any], index: int) -> dict[str, Any]:
    if index:
        candidate["index"] = index
    return candidate


def _usage(
    req: Mapping[str, Any], reply: Reply, text: str | None, calls: list[dict[str, Any]], n: int
) -> dict[str, Any]:
    """Deterministic word-based counts; proto3 JSON drops zero fields (no thoughtsTokenCount on Gemini 2.0)."""
    if reply.usage is not None:
        return dict(reply.usage)
    prompt = _prompt_tokens(req)
    output = 0 if reply.blocked else n * (_count(text) + sum(_count(json.dumps(c)) for c in calls))
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    if output:
        usage["candidatesTokenCount"] = output
    usage["totalTokenCount"] = prompt + output + reply.thoughts_tokens
    usage["trafficType"] = "ON_DEMAND"
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if output:
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": output}]
    if reply.thoughts_tokens:
        usage["thoughtsTokenCount"] = reply.thoughts_tokens
    return usage


def _prompt_tokens(req: Mapping[str, Any]) -> int:
    contents = _get(req, "contents") or []
    system = _get(req, "systemInstruction", "system_instruction")
    total = 0
    for content in [*contents, *([system] if isinstance(system, dict) else [])]:
        for part in (content.get("parts") or []) if isinstance(content, dict) else []:
            total += _count(json.dumps(part) if not isinstance(part, dict) or "text" not in part else part["text"])
    return max(total, 1)


def _count(text: str | None) -> int:
    return len(re.findall(r"\w+|[^\w\s]", text or ""))


def _avg_logprobs(text: str) -> float:
    return -((zlib.crc32(text.encode("utf-8")) % 100_000) / 1_000_000 + 0.0001)


def _envelope(call: _Call) -> dict[str, Any]:
    created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    # Real response ids are 21-24 urlsafe characters, e.g. "1VpeaKq4CfH_2PgPh_z--AY".
    return {"modelVersion": call.model, "createTime": created, "responseId": secrets.token_urlsafe(17)[:23]}


def _declared_functions(req: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for tool in _get(req, "tools") or []:
        if isinstance(tool, dict):
            for declaration in _get(tool, "functionDeclarations", "function_declarations") or []:
                if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                    names.add(declaration["name"])
    return names


def _candidate_count(req: Mapping[str, Any]) -> int:
    config = _get(req, "generationConfig", "generation_config") or {}
    n = _get(config, "candidateCount", "candidate_count") if isinstance(config, dict) else None
    return n if isinstance(n, int) and n > 1 else 1


def _validate_generate(req: Mapping[str, Any]) -> str | None:
    """The few checks real Vertex makes that adapters most often trip over (empty turns, bad roles)."""
    contents = _get(req, "contents")
    if not isinstance(contents, list) or not contents:
        return (
            "Unable to submit request because it must include at least one parts field, which describes the "
            "prompt input. Learn more: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
        )
    for content in contents:
        if not isinstance(content, dict):
            return "Invalid value at 'contents': expected an object."
        if content.get("role", "user") not in ("user", "model", "function"):
            return "Please use a valid role: user, model."
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return (
                "Unable to submit request because it must include at least one parts field, which describes the "
                "prompt input. Learn more: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
            )
        for part in parts:
            if isinstance(part, dict) and part.get("text") == "" and len(part) == 1:
                return (
                    "Unable to submit request because it has an empty text parameter. Add a value to the "
                    "parameter and try again. Learn more: "
                    "https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
                )
    return None


# --- predict (text embeddings) ------------------------------------------------------------------


def _validate_predict(req: Mapping[str, Any]) -> str | None:
    instances = req.get("instances")
    if not isinstance(instances, list) or not instances:
        return "Invalid request: instances must be a non-empty list."
    if not all(isinstance(i, dict) and isinstance(i.get("content"), str) for i in instances):
        return "Invalid request: every instance needs a string `content`."
    return None


def _predict_response(req: Mapping[str, Any]) -> dict[str, Any]:
    """`{"predictions": [{"embeddings": {"values", "statistics"}}], "metadata": {"billableCharacterCount"}}`."""
    parameters = req.get("parameters") if isinstance(req.get("parameters"), dict) else {}
    dims = _get(parameters, "outputDimensionality", "output_dimensionality")
    dims = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMS
    predictions = []
    billable = 0
    for instance in req.get("instances") or []:
        content = str(instance.get("content", ""))
        billable += len(re.sub(r"\s", "", content))
        statistics = {"truncated": False, "token_count": max(_count(content), 1)}
        predictions.append({"embeddings": {"values": _vector(instance, dims), "statistics": statistics}})
    return {"predictions": predictions, "metadata": {"billableCharacterCount": billable}}


def _vector(instance: Mapping[str, Any], dims: int) -> list[float]:
    """Deterministic per (content, task_type), unit length like text-embedding-00x vectors."""
    key = json.dumps([instance.get("content"), instance.get("task_type") or instance.get("taskType")])
    seed = zlib.crc32(key.encode("utf-8")) % 10_000
    raw = [math.sin(seed + j * 0.7) for j in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


# --- errors and helpers -------------------------------------------------------------------------


def _status_body(code: int, status: str, message: str, details: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = [dict(d) for d in details]
    return {"error": error}


def _status_response(
    code: int,
    status: str,
    message: str,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    return _json(code, _status_body(code, status, message, details), headers)


def _error_response(error: Error, call: _Call) -> Response:
    return _status_response(error.status_code, error.status, _fill(error.message, call), error.details)


def _error_info(reason: str, call: _Call) -> tuple[dict[str, Any], ...]:
    method = {"generateContent": "GenerateContent", "streamGenerateContent": "StreamGenerateContent"}.get(
        call.action, "Predict"
    )
    return (
        {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": reason,
            "domain": "googleapis.com",
            "metadata": {
                "service": "aiplatform.googleapis.com",
                "method": f"google.cloud.aiplatform.{call.version}.PredictionService.{method}",
            },
        },
    )


def _fill(message: str, call: _Call) -> str:
    for key in ("project", "location", "model"):
        message = message.replace("{" + key + "}", getattr(call, key))
    return message


def _get(obj: Any, *names: str) -> Any:
    """Proto-JSON accepts lowerCamel and snake_case keys (google-genai sends some snake_case)."""
    if not isinstance(obj, Mapping):
        return None
    for name in names:
        if name in obj:
            return obj[name]
    if len(names) == 1:
        snake = re.sub(r"(?<!^)([A-Z])", r"_\1", names[0]).lower()
        return obj.get(snake)
    return None


def _dumps(body: Any) -> bytes:
    return json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8")


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None, *, pretty: bool = True) -> Response:
    """Vertex pretty-prints JSON bodies (2-space indent); the token endpoint does not."""
    content = _dumps(body) if pretty else json.dumps(body, separators=(",", ":")).encode("utf-8")
    return Response(content, status, {**_VARY, **(headers or {})}, _JSON)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
