"""A scriptable fake OpenAI upstream: a real Starlette app for the gateway's `openai` adapter tests.

Serve it with `ServerThread(fake.app)` and point the adapter (or the official SDK) at
`server.url + "/v1"`. Each request pops the next scripted behaviour, so a test can say "first a 429,
then a good answer" and then assert on `fake.requests` to see exactly what the adapter sent.
`script_forever` sets what every request gets once the script runs out (an outage: `Error(503)`).

Wire shapes follow what the real service sends (OpenAI's API reference and the
recordings in tests/data/recordings/openai/): `refusal: null` and `annotations: []` on messages,
`obfuscation` padding on every stream chunk, a usage-only chunk with `choices: []` before `[DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from tests.fakes.common import sleep_unless_disconnected

DEFAULT_CONTENT = "Hello from the fake upstream."
SYSTEM_FINGERPRINT = "fp_fake0000000"
EMBEDDING_DIMS = 8


# --- behaviours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A valid answer built from the request (chat, embeddings or models; streamed if asked).

    `tool_calls` entries may be OpenAI-shaped (`{"id", "type", "function": {"name", "arguments"}}`) or
    short (`{"name": ..., "arguments": {...} | "..."}`); missing ids become `call_fake_<i>`.
    `usage`, when given, is sent verbatim instead of the computed one.
    """

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    delay_s: float = 0.0


STREAM_ENDINGS = ("done", "drop", "error_event", "stall", "malformed", "finish_no_done")


@dataclass(frozen=True)
class StreamChunks:
    """A streamed text answer of `chunks` content pieces (`"word0 "`, `"word1 "`, ...).

    `then`, what follows the content:
    - "done": finish normally (finish chunk, usage chunk if asked, `[DONE]`);
    - "drop": cut the connection abruptly (no finish chunk, no `[DONE]`, no end of the chunked body: the
      client's read fails);
    - "error_event": send an in-stream `{"error": ...}` event, then end the body cleanly;
    - "stall": send nothing more, keeping the connection open until the client hangs up, which sets
      `FakeOpenAI.stall_abandoned` (and `stream_cancelled`);
    - "malformed": send one `data:` event that is not valid JSON, then finish as "done";
    - "finish_no_done": send the finish chunk (`finish_reason` "stop"), then end the body cleanly with
      no usage chunk and no `[DONE]`.
    Always streams, whatever the request's `stream` flag; on non-chat endpoints it acts as `Reply()`.
    """

    chunk_delay_s: float = 0.0
    chunks: int = 5
    then: str = "done"

    def __post_init__(self) -> None:
        if self.then not in STREAM_ENDINGS:
            raise ValueError(f"StreamChunks.then must be one of {STREAM_ENDINGS}, not {self.then!r}")


@dataclass(frozen=True)
class Error:
    """An HTTP error. `body=None` gives OpenAI's envelope for the status; a dict is sent as JSON.

    A str is sent raw (text/plain unless `headers` set a content-type), except the keywords
    "context" (400 context_length_exceeded, param "messages") and "quota" (429 insufficient_quota),
    which select those real OpenAI envelopes. `stall_body_s` sends the headers and half the body, then
    waits that long before the rest (an upstream that stalls mid-error).
    """

    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] | None = None
    stall_body_s: float = 0.0


@dataclass(frozen=True)
class Malformed:
    """Status 200 with a truncated JSON body, to test the adapter's parse-failure path."""


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds` (slow first byte), then reply normally; ends early if the client leaves."""

    seconds: float


Behaviour = Reply | StreamChunks | Error | Malformed | Hang


@dataclass
class RecordedRequest:
    """One request as the fake received it, so tests can assert what the adapter sent."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, or None when absent or not JSON
    query: dict[str, str] = field(default_factory=dict)


# --- the fake -----------------------------------------------------------------------------------


class FakeOpenAI:
    """OpenAI-compatible upstream serving chat completions, embeddings and models.

    Fakes of OpenAI-compatible providers (tests/fakes/azure.py, together.py) subclass it: they serve
    their own routes, gate them (auth, unknown model), then call `_chat_reply`/`_embeddings_reply`, and
    override the hooks `_apply` (their own behaviours), `_shape_completion` and `_shape_stream` (their
    dialect of the OpenAI bodies) and `_new_record`.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.stream_cancelled = threading.Event()
        self.client_gone = threading.Event()  # the caller hung up while a reply was being delayed
        self.stream_finished = threading.Event()
        self.stall_abandoned = threading.Event()  # the client hung up on a `StreamChunks(then="stall")`
        self._queue: deque[object] = deque()  # subclasses queue their own behaviours too
        self._default: object = Reply()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
            ]
        )

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each request (on any endpoint) pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def script_forever(self, behaviour: object) -> None:
        """What each request gets once the queued script is used up, instead of `Reply()`, until changed.

        `script_forever(Error(503))` starts an outage, `script_forever(Reply())` ends it; `reset()` also
        restores `Reply()`. Takes any behaviour `script` takes (subclasses' own too).
        """
        with self._lock:
            self._default = behaviour

    def reset(self) -> None:
        """Forget requests, script, default and stream events, keeping the app (for one fake shared by a module)."""
        with self._lock:
            self.requests.clear()
            self._queue.clear()
            self._default = Reply()
        for event in (self.stream_cancelled, self.client_gone, self.stream_finished, self.stall_abandoned):
            event.clear()

    # -- plumbing --

    def _next(self) -> object:
        with self._lock:
            return self._queue.popleft() if self._queue else self._default

    async def _record(self, request: Request) -> Any:
        """Record the request as it arrives, before any behaviour: requests cut short still count."""
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(self._new_record(request, body))
        return body

    def _new_record(self, request: Request, body: Any) -> RecordedRequest:
        """Hook: subclasses record more (e.g. Azure's deployment) by returning a RecordedRequest subclass."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        return RecordedRequest(request.method, request.url.path, headers, body, dict(request.query_params))

    async def _common(self, request: Request, body: Any) -> tuple[Behaviour, Response | None]:
        """Pop the next behaviour and apply it; None means "build a reply" from the returned behaviour."""
        return await self._apply(request, self._next(), body)

    async def _apply(self, request: Request, behaviour: object, body: Any) -> tuple[Behaviour, Response | None]:
        """Apply the behaviours that look the same on every endpoint (hook: subclasses add their own)."""
        model = _model(body, "gpt-4o-mini")
        if isinstance(behaviour, Error):
            return behaviour, _error_response(behaviour, model)
        if isinstance(behaviour, Malformed):
            return behaviour, Response(b'{"id": "chatcmpl-x", "choices": [', 200, _headers(), "application/json")
        if isinstance(behaviour, Hang):
            if await sleep_unless_disconnected(request, behaviour.seconds):
                self.client_gone.set()
                return behaviour, Response(b"", 499)  # nobody is listening; uvicorn drops it
            return Reply(), None
        if isinstance(behaviour, Reply | StreamChunks):
            return behaviour, None
        raise TypeError(f"{type(self).__name__} does not know the behaviour {behaviour!r}")

    def _shape_completion(self, completion: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
        """Hook for OpenAI-compatible dialects: the non-streamed chat body as it goes on the wire."""
        return completion

    def _shape_stream(self, frames: AsyncIterator[bytes | None], req: dict[str, Any]) -> AsyncIterator[bytes | None]:
        """Hook for dialects: the SSE frames as they go on the wire (`None` drops the connection)."""
        return frames

    # -- endpoints --

    async def _chat(self, request: Request) -> Response:
        return await self._chat_reply(request, await self._record(request))

    async def _chat_reply(self, request: Request, body: Any) -> Response:
        """Chat completions for an already recorded (and, in subclasses, already authorised) request."""
        behaviour, early = await self._common(request, body)
        if early is not None:
            return early
        req = body if isinstance(body, dict) else {}
        if isinstance(behaviour, StreamChunks):
            frames = self._shape_stream(_stream_chunks_frames(req, behaviour, self.stall_abandoned), req)
            return _SSEResponse(self._guarded(frames), headers=_headers())
        assert isinstance(behaviour, Reply)
        if req.get("stream"):
            frames = self._shape_stream(_reply_frames(req, behaviour), req)
            return _SSEResponse(self._guarded(frames), headers=_headers())
        if await sleep_unless_disconnected(request, behaviour.delay_s):
            self.client_gone.set()
            return Response(b"", 499)
        return _json(200, self._shape_completion(_completion(req, behaviour), req))

    async def _embeddings(self, request: Request) -> Response:
        return await self._embeddings_reply(request, await self._record(request))

    async def _embeddings_reply(self, request: Request, body: Any) -> Response:
        """Embeddings for an already recorded (and, in subclasses, already authorised) request."""
        behaviour, early = await self._common(request, body)
        if early is not None:
            return early
        if isinstance(behaviour, Reply) and await sleep_unless_disconnected(request, behaviour.delay_s):
            return Response(b"", 499)
        return _json(200, _embedding_response(body if isinstance(body, dict) else {}))

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        _behaviour, early = await self._common(request, None)
        if early is not None:
            return early
        model = {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}
        return _json(200, {"object": "list", "data": [model]})

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


class _SSEResponse(StreamingResponse):
    """StreamingResponse that abandons the connection (no terminating chunk) when it meets `None`.

    Starlette cancels the body task when uvicorn reports `http.disconnect` (ASGI spec 2.3), which
    is how the guarded generator learns that the client went away.
    """

    media_type = "text/event-stream"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        iterator: AsyncIterator[Any] = self.body_iterator  # type: ignore[assignment]
        async for chunk in iterator:
            if chunk is None:
                return  # uvicorn closes the transport: the client sees an incomplete chunked body
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# --- chat completions ---------------------------------------------------------------------------


def _completion(req: dict[str, Any], reply: Reply) -> dict[str, Any]:
    tools = _tool_calls(reply.tool_calls)
    text = _text(reply, tools)
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if tools:
        message["tool_calls"] = tools
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": _finish(reply, tools)}
        for i in range(_n(req))
    ]
    return {
        "id": _completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": _model(req, "gpt-4o-mini"),
        "choices": choices,
        "usage": reply.usage if reply.usage is not None else _usage(req, text, tools, _n(req)),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


class _Chunks:
    """Builds `chat.completion.chunk` frames sharing one id/created, as one real completion does."""

    def __init__(self, req: dict[str, Any]) -> None:
        self.id = _completion_id()
        self.created = int(time.time())
        self.model = _model(req, "gpt-4o-mini")
        options = req.get("stream_options") if isinstance(req.get("stream_options"), dict) else {}
        self.include_usage = bool(options.get("include_usage"))
        self.obfuscate = options.get("include_obfuscation", True) is not False
        self.count = 0

    def frame(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = usage
        if self.obfuscate:
            chunk["obfuscation"] = _padding(self.id, self.count)
        self.count += 1
        return _sse(chunk)

    def delta(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.frame([{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}])


async def _reply_frames(req: dict[str, Any], reply: Reply) -> AsyncIterator[bytes | None]:
    chunks = _Chunks(req)
    tools = _tool_calls(reply.tool_calls)
    text = _text(reply, tools)
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)  # headers are already out: this is time-to-first-token
    for index in range(_n(req)):
        for delta in _deltas(text, tools):
            yield chunks.delta(index, delta)
            await asyncio.sleep(0)  # let uvicorn flush and notice a disconnect between chunks
        yield chunks.delta(index, {}, _finish(reply, tools))
    if chunks.include_usage:
        usage = reply.usage if reply.usage is not None else _usage(req, text, tools, _n(req))
        yield chunks.frame([], usage)
    yield b"data: [DONE]\n\n"


def _deltas(text: str | None, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deltas in real OpenAI order: role first, text per word, tool header then argument fragments."""
    first: dict[str, Any] = {
        "role": "assistant",
        "content": "" if text is not None else None,
        "refusal": None,
    }
    deltas = [first]
    deltas += [{"content": piece} for piece in re.findall(r"\s*\S+|\s+$", text or "")]
    for i, call in enumerate(tools):
        function = call["function"]
        header = {
            "index": i,
            "id": call["id"],
            "type": "function",
            "function": {"name": function["name"], "arguments": ""},
        }
        if i == 0 and text is None:
            first["tool_calls"] = [header]  # real streams put the first call in the role chunk
        else:
            deltas.append({"tool_calls": [header]})
        for fragment in re.findall(r"\w+|\W+", function["arguments"]):
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]})
    return deltas


async def _stream_chunks_frames(
    req: dict[str, Any], spec: StreamChunks, abandoned: threading.Event
) -> AsyncIterator[bytes | None]:
    chunks = _Chunks(req)
    yield chunks.delta(0, {"role": "assistant", "content": "", "refusal": None})
    text = ""
    for i in range(spec.chunks):
        await asyncio.sleep(spec.chunk_delay_s)
        piece = f"word{i} "
        text += piece
        yield chunks.delta(0, {"content": piece})
    if spec.then == "drop":
        yield None
        return
    if spec.then == "error_event":
        error = {"message": "upstream exploded", "type": "server_error", "param": None, "code": None}
        yield _sse({"error": error})
        return
    if spec.then == "stall":
        try:
            await asyncio.Future()  # never done: only the client hanging up (Starlette cancels us) ends this
        except asyncio.CancelledError:
            abandoned.set()
            raise
    if spec.then == "malformed":
        yield b'data: {"id":"' + chunks.id.encode() + b'","object":"chat.completion.chunk","choices":[{"ind\n\n'
    yield chunks.delta(0, {}, "stop")
    if spec.then == "finish_no_done":
        return
    if chunks.include_usage:
        yield chunks.frame([], _usage(req, text, [], 1))
    yield b"data: [DONE]\n\n"


def _tool_calls(raw: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    calls = []
    for i, call in enumerate(raw or []):
        function = call.get("function", call)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, separators=(",", ":"))
        calls.append(
            {
                "id": call.get("id", f"call_fake_{i}"),
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls


def _text(reply: Reply, tools: list[dict[str, Any]]) -> str | None:
    if reply.content is not None:
        return reply.content
    return None if tools else DEFAULT_CONTENT


def _finish(reply: Reply, tools: list[dict[str, Any]]) -> str:
    return reply.finish_reason or ("tool_calls" if tools else "stop")


def _n(req: dict[str, Any]) -> int:
    n = req.get("n")
    return n if isinstance(n, int) and n > 1 else 1


def _usage(req: dict[str, Any], text: str | None, tools: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Rough but deterministic token counts: words, plus a little per message and per call."""
    prompt = 0
    for message in req.get("messages") or []:
        prompt += 3
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            prompt += len(content.split())
        elif isinstance(content, list):
            prompt += sum(len(str(part.get("text", "")).split()) for part in content if isinstance(part, dict))
    per_choice = len((text or "").split()) + sum(len(t["function"]["arguments"]) // 4 + 1 for t in tools)
    completion = per_choice * n
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# --- embeddings ---------------------------------------------------------------------------------


def _embedding_response(req: dict[str, Any]) -> dict[str, Any]:
    raw = req.get("input", "")
    # A flat list of ints is ONE token array; any other list is a batch of inputs.
    if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        items: list[Any] = [raw]
    elif isinstance(raw, list):
        items = list(raw)
    else:
        items = [raw]
    dims = req.get("dimensions")
    dims = dims if isinstance(dims, int) and dims > 0 else EMBEDDING_DIMS
    as_base64 = req.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = _vector(item, dims)
        embedding: Any = vector
        if as_base64:  # OpenAI sends little-endian float32 bytes, base64-encoded
            embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(len(item) if isinstance(item, list) else len(str(item).split()) for item in items)
    return {
        "object": "list",
        "data": data,
        "model": _model(req, "text-embedding-3-small"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _vector(item: Any, dims: int) -> list[float]:
    """Deterministic per input, so the same text always embeds to the same vector."""
    seed = zlib.crc32(json.dumps(item).encode("utf-8")) % 10_000
    return [math.sin(seed + j * 0.7) for j in range(dims)]


# --- errors and helpers -------------------------------------------------------------------------


def _error_envelope(status: int, model: str) -> dict[str, Any]:
    """The bodies real OpenAI sends, per its API reference."""
    known: dict[int, tuple[str, str, str | None]] = {
        400: ("Invalid request sent to the fake upstream.", "invalid_request_error", None),
        401: (
            "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        ),
        403: (f"Project does not have access to model `{model}`", "invalid_request_error", "model_not_found"),
        404: (
            f"The model `{model}` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        429: ("Rate limit reached for requests", "requests", "rate_limit_exceeded"),
        500: (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        503: ("The engine is currently overloaded, please try again later", "server_error", None),
    }
    fallback = ("Upstream error.", "server_error" if status >= 500 else "invalid_request_error", None)
    message, kind, code = known.get(status, fallback)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


_KEYWORD_ENVELOPES: dict[str, dict[str, Any]] = {
    "context": {
        "error": {
            "message": "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    },
    "quota": {
        "error": {
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    },
}


def _error_response(error: Error, model: str) -> Response:
    headers = _headers(error.headers)
    if isinstance(error.body, str) and error.body not in _KEYWORD_ENVELOPES:
        has_type = any(name.lower() == "content-type" for name in headers)
        return Response(error.body.encode("utf-8"), error.status, headers, None if has_type else "text/plain")
    if isinstance(error.body, str):
        body: Any = _KEYWORD_ENVELOPES[error.body]
    else:
        body = error.body if error.body is not None else _error_envelope(error.status, model)
    response = _json(error.status, body, headers)
    if error.stall_body_s <= 0:
        return response
    content, delay = response.body, error.stall_body_s

    async def stalling() -> AsyncIterator[bytes]:
        yield content[: len(content) // 2]
        await asyncio.sleep(delay)
        yield content[len(content) // 2 :]

    return StreamingResponse(stalling(), error.status, headers, "application/json")


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    headers = {"x-request-id": f"req_{uuid.uuid4().hex}", "openai-processing-ms": "1"}
    headers.update(extra or {})
    return headers


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return Response(content, status, headers if headers is not None else _headers(), "application/json")


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode("utf-8") + b"\n\n"


def _sse_json(frame: bytes | None) -> dict[str, Any] | None:
    """The object in a `data: {...}` frame made by `_sse` (for dialect hooks); None for `[DONE]`, drops and
    frames that are not JSON (`StreamChunks(then="malformed")`), which dialects pass on as they are."""
    if frame is None or not frame.startswith(b"data: {"):
        return None
    try:
        parsed: dict[str, Any] = json.loads(frame[len(b"data: ") :])
    except ValueError:
        return None
    return parsed


def _padding(seed: str, count: int) -> str:
    """Like OpenAI's `obfuscation` field: junk of varying length that hides the payload size."""
    digest = hashlib.sha256(f"{seed}:{count}".encode()).hexdigest()
    return digest[: 3 + count % 13]


def _completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex[:29]


def _model(body: Any, default: str) -> str:
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) else default
