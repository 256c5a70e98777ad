"""A scriptable fake Anthropic Messages API: a real Starlette app for the gateway's `anthropic` adapter tests.

Use it as a context manager (`with FakeAnthropic() as fake:`), which serves it on a free loopback port at
`fake.url`, or serve `fake.app` yourself with `ServerThread`. Point the official SDK at it with
`anthropic.Anthropic(base_url=fake.url, api_key="sk-ant-fake", max_retries=0)`.

Each request that passes the auth, version and body checks pops the next scripted behaviour (`Reply()` once
the script is empty); `fake.requests` shows exactly what was sent. Wire shapes follow
the provider's API reference and the real traffic in tests/data/recordings/anthropic/: typed SSE
(`event:` + `data:`), a `ping` after the first `content_block_start`, a variable run of spaces before the
final `}` of every `data:` object, `message_start.usage.output_tokens == 1`, `message_delta.usage` repeating
`input_tokens` with cumulative `output_tokens`, and `{"type": "error", "error": {...}, "request_id"}` bodies.

Auth: SDK 2.14 sends the key as `Authorization: Bearer`, older clients and curl send `x-api-key`; both are
accepted. Any `anthropic-version` value is accepted (the SDK sends `2026-10-21`), but one must be present.

Prefill: a request whose last message is an assistant turn is continued, as the real API does: the answer
holds only the text that follows the prefill (see `Reply`). `reject_prefill` makes the fake refuse such
requests the way newer Claude models do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import string
import threading
from collections import deque
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from tests.fakes.common import sleep_unless_disconnected
from tests.support.server import ServerThread, free_port

DEFAULT_API_KEY = "sk-ant-fake"
DEFAULT_TEXT = "Hello from the fake Anthropic."
#: What a prefilled answer continues with when the full answer does not start with the prefill.
DEFAULT_CONTINUATION = " and that is the rest of the answer."
PREFILL_UNSUPPORTED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)
STREAM_CONTENT_TYPE = "text/event-stream; charset=utf-8"

#: The HTTP status Anthropic uses for each error type (docs.anthropic.com "Errors").
STATUS_BY_ERROR_TYPE: Mapping[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# --- behaviours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A valid answer built from the request (streamed when the request says `"stream": true`).

    `text=None` gives "You said: <last user text>" (`DEFAULT_TEXT` if there is none), or no text block when
    tools are called. `tool_uses` entries are `{"name", "input": {...}, "id"?}`; they are used only when the
    request declares `tools` (and `tool_choice` is not `none`), as a real model cannot call undeclared tools;
    `disable_parallel_tool_use` keeps only the first. One word is one output token, so `max_tokens` smaller
    than the answer truncates it (stop_reason `max_tokens`, tool calls dropped); `stop_sequences` cut the
    text before the first match (stop_reason `stop_sequence`). `stop_reason` overrides all that and disables
    truncation. `usage` keys override the computed usage. Cache counts go into `cache_read_input_tokens` and
    `cache_creation_input_tokens` (+ `cache_creation.ephemeral_5m_input_tokens`). `delay_s` delays the body
    (streams: after the headers, before `message_start`); `chunk_delay_s` separates delta events.

    With a prefill (the request's last message is an assistant turn with text), the text above is the full
    answer and the reply holds only what follows the prefill: if the full answer starts with the prefill, the
    rest of it (so prefill + reply == the answer the request without the prefill gets); otherwise a scripted
    `text` as is, or `DEFAULT_CONTINUATION`. Truncation and usage apply to that continuation only.
    """

    text: str | None = None
    tool_uses: list[dict[str, Any]] | None = None
    stop_reason: str | None = None
    usage: dict[str, Any] | None = None
    delay_s: float = 0.0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Error:
    """An HTTP error before any body: `{"type": "error", "error": {"type", "message"}, "request_id"}`.

    `{model}` in `message` is filled in from the request. Streaming requests get it as a plain JSON error
    too, before any event, as the real API does. `headers` are added to the response (e.g. `retry-after`).
    """

    status: int
    error_type: str
    message: str
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class StreamError:
    """Stream `message_start`, a text block with `after_chunks` deltas ("word0 ", ...), then `event: error`.

    The stream then ends cleanly, which is how Anthropic reports e.g. overload after the 200 headers.
    A non-streaming request gets the same error as an HTTP status (see `STATUS_BY_ERROR_TYPE`).
    """

    after_chunks: int
    error_type: str = "overloaded_error"
    message: str = "Overloaded"
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class CutStream:
    """Stream `message_start` and `after_chunks` text deltas, then drop the connection (no terminating chunk).

    A non-streaming request gets 200 headers and half a JSON body before the drop.
    """

    after_chunks: int
    chunk_delay_s: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds` (slow first byte), then reply normally; ends early if the client leaves."""

    seconds: float


Behaviour = Reply | Error | StreamError | CutStream | Hang

#: Ready-made errors with Anthropic's statuses, types and messages.
OVERLOADED = Error(529, "overloaded_error", "Overloaded")
RATE_LIMITED = Error(
    429,
    "rate_limit_error",
    "Number of request tokens has exceeded your per-minute rate limit. Please try again later.",
    {"retry-after": "3"},
)
PROMPT_TOO_LONG = Error(400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum")
AUTHENTICATION = Error(401, "authentication_error", "invalid x-api-key")
PERMISSION = Error(403, "permission_error", "Your API key does not have permission to use the specified resource.")
NOT_FOUND = Error(404, "not_found_error", "model: {model}")
REQUEST_TOO_LARGE = Error(413, "request_too_large", "Request exceeds the maximum allowed number of bytes.")
API_ERROR = Error(500, "api_error", "Internal server error")


@dataclass
class RecordedRequest:
    """One request as the fake received it (before auth is judged), so tests can assert what was sent."""

    method: str
    path: str
    query: dict[str, str]  # e.g. {"beta": "true"} from the SDK's beta client
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, or None when absent or not JSON


class _AnthropicError(Exception):
    """Raised inside a handler to answer with Anthropic's error envelope."""

    def __init__(self, status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})


# --- the fake -----------------------------------------------------------------------------------


class FakeAnthropic:
    """Anthropic upstream serving `POST /v1/messages` (with or without `?beta=true`).

    `api_key`: the only key accepted (via `x-api-key` or `Authorization: Bearer`). `validate`: reject the
    common request mistakes with Anthropic's 400s, so adapter bugs surface here rather than in production.
    `reject_prefill`: True, or a collection of model ids, for models that refuse a conversation ending with an
    assistant turn (400 invalid_request_error `PREFILL_UNSUPPORTED`, before any scripted behaviour is used);
    an attribute tests may change, restored by `reset()`.
    """

    def __init__(
        self, api_key: str = DEFAULT_API_KEY, *, validate: bool = True, reject_prefill: bool | Collection[str] = False
    ) -> None:
        self.api_key = api_key
        self.validate = validate
        self.reject_prefill = reject_prefill
        self._reject_prefill_default = reject_prefill
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: list[RecordedRequest] = []
        self.stream_cancelled = threading.Event()
        self.stream_finished = threading.Event()
        self.client_gone = threading.Event()  # the caller hung up while a reply was being delayed
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self._server: ServerThread | None = None
        self.app = Starlette(routes=[Route("/v1/messages", self._messages, methods=["POST"])])

    def __enter__(self) -> FakeAnthropic:
        self._server = ServerThread(self.app, port=self.port).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc)
            self._server = None

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each accepted request pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget the script, the recorded requests and the stream events, so one server can serve many tests."""
        with self._lock:
            self._queue.clear()
        self.requests.clear()
        self.reject_prefill = self._reject_prefill_default
        self.stream_cancelled.clear()
        self.stream_finished.clear()
        self.client_gone.clear()

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    # -- request handling --

    async def _messages(self, request: Request) -> Response:
        raw = await request.body()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        self.requests.append(
            RecordedRequest(request.method, request.url.path, dict(request.query_params), headers, parsed)
        )
        req: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
        try:
            self._check_auth(headers)
            if not headers.get("anthropic-version"):
                raise _AnthropicError(400, "invalid_request_error", "anthropic-version: header is required")
            if not isinstance(parsed, dict):
                raise _AnthropicError(
                    400, "invalid_request_error", "There was an error parsing the body of your request as JSON."
                )
            if self.validate:
                _validate(req)
            if _prefill(req) is not None and self._refuses_prefill(req.get("model")):
                raise _invalid(PREFILL_UNSUPPORTED)
            behaviour = self._next()
            if isinstance(behaviour, Error):
                message = behaviour.message.replace("{model}", str(req.get("model")))
                raise _AnthropicError(behaviour.status, behaviour.error_type, message, behaviour.headers)
            if isinstance(behaviour, Hang):
                if await sleep_unless_disconnected(request, behaviour.seconds):
                    self.client_gone.set()
                    return Response(b"", 499)  # nobody is listening; uvicorn drops it
                behaviour = Reply()
            if req.get("stream") is True:
                return _SSEResponse(self._guarded(_stream_events(req, behaviour)), headers=_headers())
            return await self._non_stream(request, req, behaviour)
        except _AnthropicError as error:
            return _error_response(error)

    def _refuses_prefill(self, model: Any) -> bool:
        if isinstance(self.reject_prefill, bool):
            return self.reject_prefill
        return model in self.reject_prefill

    def _check_auth(self, headers: dict[str, str]) -> None:
        key = headers.get("x-api-key")
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if key is None and scheme.lower() == "bearer":
            key = token.strip()
        if not key:
            raise _AnthropicError(401, "authentication_error", "x-api-key header is required")
        if key != self.api_key:
            raise _AnthropicError(401, "authentication_error", "invalid x-api-key")

    async def _non_stream(self, request: Request, req: dict[str, Any], behaviour: Behaviour) -> Response:
        if isinstance(behaviour, StreamError):
            status = STATUS_BY_ERROR_TYPE.get(behaviour.error_type, 500)
            raise _AnthropicError(status, behaviour.error_type, behaviour.message)
        if isinstance(behaviour, CutStream):
            body = _dumps(_message(req, _answer(req, Reply())))
            return _SSEResponse(_cut_body(body), headers=_headers(), media_type="application/json")
        reply = behaviour if isinstance(behaviour, Reply) else Reply()
        if await sleep_unless_disconnected(request, reply.delay_s):
            self.client_gone.set()
            return Response(b"", 499)
        return _json(200, _message(req, _answer(req, reply)))

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
    """Sends each chunk with its own `send` (so each event is flushed); `None` abandons the connection.

    Starlette cancels the body task when uvicorn reports `http.disconnect`, which is how the guarded
    generator learns that the client went away.
    """

    media_type = STREAM_CONTENT_TYPE

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        iterator: AsyncIterator[Any] = self.body_iterator  # type: ignore[assignment]
        async for chunk in iterator:
            if chunk is None:
                return  # uvicorn closes the transport: the client sees an incomplete chunked body
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _cut_body(body: bytes) -> AsyncIterator[bytes | None]:
    yield body[: len(body) // 2]
    yield None


# --- the answer ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """What the "model" says, shared by the JSON and SSE paths so both agree for one script."""

    model: str
    text: str | None
    tools: list[dict[str, Any]]  # {"id", "name", "input"}
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]
    message_id: str = field(default_factory=lambda: _id("msg_01"))


def _answer(req: dict[str, Any], reply: Reply) -> _Answer:
    tools = _tool_uses(req, reply.tool_uses)
    text = reply.text
    if text is None and not tools:
        last = _last_user_text(req)
        text = f"You said: {last}" if last else DEFAULT_TEXT
    prefill = _prefill(req)
    if prefill and text is not None:
        if text.startswith(prefill):
            text = text[len(prefill) :]
        elif reply.text is None:
            text = DEFAULT_CONTINUATION
    stop_reason = reply.stop_reason or ("tool_use" if tools else "end_turn")
    stop_sequence = None
    if reply.stop_reason is None and text:
        hits = [(text.find(s), s) for s in req.get("stop_sequences") or [] if isinstance(s, str) and s and s in text]
        if hits:
            at, stop_sequence = min(hits)
            text, tools, stop_reason = text[:at], [], "stop_sequence"
        max_tokens = req.get("max_tokens")
        words = re.findall(r"\s*\S+", text)
        if isinstance(max_tokens, int) and len(words) > max_tokens:  # one word = one token: predictable cuts
            text, tools, stop_reason, stop_sequence = "".join(words[:max_tokens]), [], "max_tokens", None
    output = len((text or "").split()) + sum(len(json.dumps(t["input"])) // 4 + 1 for t in tools)
    usage = {
        "input_tokens": _input_tokens(req),
        "cache_creation_input_tokens": reply.cache_creation_tokens,
        "cache_read_input_tokens": reply.cache_read_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": reply.cache_creation_tokens, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output,
        "service_tier": "standard",
        "inference_geo": "not_available",
    }
    usage.update(reply.usage or {})
    return _Answer(str(req.get("model")), text, tools, stop_reason, stop_sequence, usage)


def _tool_uses(req: dict[str, Any], raw: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    choice = req.get("tool_choice") if isinstance(req.get("tool_choice"), dict) else {}
    if not raw or not req.get("tools") or choice.get("type") == "none":
        return []
    calls = [{"id": t.get("id") or _id("toolu_01"), "name": t["name"], "input": t.get("input", {})} for t in raw]
    return calls[:1] if choice.get("disable_parallel_tool_use") else calls


def _message(req: dict[str, Any], answer: _Answer) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.text is not None:
        content.append({"type": "text", "text": answer.text})
    content += [{"type": "tool_use", **tool} for tool in answer.tools]
    return {
        "id": answer.message_id,
        "type": "message",
        "role": "assistant",
        "model": answer.model,
        "content": content,
        "stop_reason": answer.stop_reason,
        "stop_sequence": answer.stop_sequence,
        "stop_details": None,
        "usage": answer.usage,
    }


# --- streaming ----------------------------------------------------------------------------------


class _Events:
    """Builds `event:`/`data:` frames with the padding real Anthropic puts before each object's final `}`."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.count = 0

    def frame(self, event: str, data: dict[str, Any]) -> bytes:
        text = _dumps(data).decode("utf-8")
        digest = hashlib.sha256(f"{self.seed}:{self.count}".encode()).digest()
        self.count += 1
        padded = text[:-1] + " " * (digest[0] % 13) + "}"
        return f"event: {event}\ndata: {padded}\n\n".encode()

    def ping(self) -> bytes:
        return b'event: ping\ndata: {"type": "ping"}\n\n'  # recorded verbatim: spaced, unpadded

    def delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return self.frame("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _start_frame(events: _Events, answer: _Answer) -> bytes:
    usage = {k: v for k, v in answer.usage.items() if k != "output_tokens"}
    usage = {**usage, "output_tokens": 1}  # recorded: the count so far, after the first token
    order = (
        "input_tokens",
        "cache_creation_input_tokens",
        "cache_read_input_tokens",
        "cache_creation",
        "output_tokens",
        "service_tier",
        "inference_geo",
    )
    usage = {k: usage[k] for k in order if k in usage} | {k: v for k, v in usage.items() if k not in order}
    message = {
        "model": answer.model,
        "id": answer.message_id,
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return events.frame("message_start", {"type": "message_start", "message": message})


async def _stream_events(req: dict[str, Any], behaviour: Behaviour) -> AsyncIterator[bytes | None]:
    """Events in the order real Anthropic sends them; each is yielded (and so flushed) on its own."""
    if isinstance(behaviour, StreamError | CutStream):
        answer = _answer(req, Reply())
        events = _Events(answer.message_id)
        yield _start_frame(events, answer)
        yield events.frame("content_block_start", _block_start(0, {"type": "text", "text": ""}))
        yield events.ping()
        for i in range(behaviour.after_chunks):
            await asyncio.sleep(behaviour.chunk_delay_s)
            yield events.delta(0, {"type": "text_delta", "text": f"word{i} "})
        if isinstance(behaviour, CutStream):
            yield None
            return
        error = {"type": "error", "error": {"type": behaviour.error_type, "message": behaviour.message}}
        yield events.frame("error", error)
        return

    reply = behaviour if isinstance(behaviour, Reply) else Reply()
    answer = _answer(req, reply)
    events = _Events(answer.message_id)
    if reply.delay_s > 0:
        await asyncio.sleep(reply.delay_s)  # headers are already out: this is time-to-first-token
    yield _start_frame(events, answer)
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if answer.text is not None:
        pieces = re.findall(r"\s*\S+|\s+$", answer.text)
        blocks.append(({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in pieces]))
    for tool in answer.tools:
        arguments = json.dumps(tool["input"], ensure_ascii=False)  # real partial_json keeps `": "` spacing
        pieces = [""] + [arguments[i : i + 8] for i in range(0, len(arguments), 8)]
        start = {"type": "tool_use", "id": tool["id"], "name": tool["name"], "input": {}}
        blocks.append((start, [{"type": "input_json_delta", "partial_json": p} for p in pieces]))
    sent = 0
    for index, (start, deltas) in enumerate(blocks):
        yield events.frame("content_block_start", _block_start(index, start))
        if index == 0:
            yield events.ping()
        for delta in deltas:
            yield events.delta(index, delta)
            sent += 1
            if sent % 20 == 0:
                yield events.ping()  # long answers get more pings, so parsers must skip them anywhere
            await asyncio.sleep(reply.chunk_delay_s)  # also lets uvicorn flush and notice a disconnect
        yield events.frame("content_block_stop", {"type": "content_block_stop", "index": index})
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
    usage = {k: answer.usage[k] for k in keys if k in answer.usage}
    delta = {"stop_reason": answer.stop_reason, "stop_sequence": answer.stop_sequence}
    yield events.frame("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
    yield events.frame("message_stop", {"type": "message_stop"})


def _block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


# --- validation ---------------------------------------------------------------------------------


def _invalid(message: str) -> _AnthropicError:
    return _AnthropicError(400, "invalid_request_error", message)


def _validate(req: dict[str, Any]) -> None:
    """The checks Anthropic applies before any model runs, with its messages, so adapter bugs surface here."""
    for name in ("model", "max_tokens", "messages"):
        if name not in req:
            raise _invalid(f"{name}: Field required")
    max_tokens = req["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise _invalid("max_tokens: Input should be a valid integer")
    if max_tokens < 1:
        raise _invalid("max_tokens: Input should be greater than or equal to 1")
    temperature = req.get("temperature")
    if isinstance(temperature, int | float) and not 0 <= temperature <= 1:
        bound = "greater than or equal to 0" if temperature < 0 else "less than or equal to 1"
        raise _invalid(f"temperature: Input should be {bound}")
    system = req.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _invalid("system: Input should be a valid list")
    tools = req.get("tools")
    for k, tool in enumerate(tools or []):
        if isinstance(tool, dict) and "type" not in tool and "input_schema" not in tool:
            raise _invalid(f"tools.{k}.custom.input_schema: Field required")
    if req.get("tool_choice") is not None and not tools:
        raise _invalid("tool_choice may only be specified while providing tools.")
    messages = req["messages"]
    if not isinstance(messages, list):
        raise _invalid("messages: Input should be a valid list")
    if not messages:
        raise _invalid("messages: at least one message is required")
    _validate_messages(messages, has_tools=bool(tools))


def _validate_messages(messages: list[Any], *, has_tools: bool) -> None:
    previous_tool_ids: set[str] = set()
    previous_role = None
    uses_tools = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _invalid(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role == "system":
            raise _invalid(
                'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
                'not "system" as an input message role.'
            )
        if role not in ("user", "assistant"):
            raise _invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise _invalid('messages: first message must use the "user" role')
        if role == previous_role:
            raise _invalid(
                f'messages: roles must alternate between "user" and "assistant", but found multiple "{role}" '
                "roles in a row"
            )
        content = message.get("content")
        last_assistant = role == "assistant" and i == len(messages) - 1
        if content in ("", []) and not last_assistant:
            raise _invalid(
                f"messages.{i}: all messages must have non-empty content except for the optional final "
                "assistant message"
            )
        blocks = content if isinstance(content, list) else []
        tool_ids = set()
        answered = set()
        for j, block in enumerate(blocks):
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind == "text" and not block.get("text"):
                raise _invalid("messages: text content blocks must be non-empty")
            if kind == "tool_use":
                uses_tools = True
                tool_ids.add(str(block.get("id")))
            if kind == "tool_result":
                uses_tools = True
                tool_use_id = str(block.get("tool_use_id"))
                if tool_use_id not in previous_tool_ids:
                    raise _invalid(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block in "
                        "the previous message."
                    )
                answered.add(tool_use_id)
        if previous_tool_ids - answered:
            missing = ", ".join(sorted(previous_tool_ids - answered))
            raise _invalid(
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{missing}. Each `tool_use` block must have a corresponding `tool_result` block in the next "
                "message."
            )
        previous_tool_ids = tool_ids
        previous_role = role
    final_texts = _texts(messages[-1].get("content"))
    if previous_role == "assistant" and final_texts and final_texts[-1] != final_texts[-1].rstrip():
        raise _invalid("messages: final assistant content cannot end with trailing whitespace")
    if uses_tools and not has_tools:
        raise _invalid("Requests which include `tool_use` or `tool_result` blocks must define tools.")


# --- helpers ------------------------------------------------------------------------------------


def _last_user_text(req: dict[str, Any]) -> str:
    for message in reversed(req.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return " ".join(_texts(message.get("content"))).strip()
    return ""


def _prefill(req: dict[str, Any]) -> str | None:
    """The text of a final assistant turn (which the model continues), or None when the last turn is not one."""
    messages = req.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if not isinstance(last, dict) or last.get("role") != "assistant":
        return None
    content = last.get("content")
    if isinstance(content, str):
        return content
    blocks = content if isinstance(content, list) else []
    return "".join(
        b["text"] for b in blocks if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str)
    )


def _texts(content: Any) -> list[str]:
    """Every text in a content value: a string, text blocks, and text inside tool results."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_result":
            texts.extend(_texts(block.get("content")))
        elif block.get("type") == "tool_use":
            texts.append(json.dumps(block.get("input")))
    return texts


def _input_tokens(req: dict[str, Any]) -> int:
    """Deterministic counts: words, plus a little per message and per tool."""
    words = sum(len(t.split()) for t in _texts(req.get("system")))
    for message in req.get("messages") or []:
        if isinstance(message, dict):
            words += 3 + sum(len(t.split()) for t in _texts(message.get("content")))
    return words + 10 * len(req.get("tools") or [])


def _id(prefix: str) -> str:
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(22))


def _headers(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    headers = {"request-id": _id("req_011C"), "cache-control": "no-cache"}
    headers.update(extra or {})
    return headers


def _dumps(body: Any) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(_dumps(body), status, headers if headers is not None else _headers(), "application/json")


def _error_response(error: _AnthropicError) -> Response:
    headers = _headers(error.headers)
    body = {
        "type": "error",
        "error": {"type": error.error_type, "message": error.message},
        "request_id": headers["request-id"],
    }
    return _json(error.status, body, headers)
