"""Reading request bodies and writing JSON and SSE responses, at the edge.

The body is read once, bounded while it streams in (a client lying in Content-Length cannot make us
buffer more than the limit), and parsed once with orjson. Streams are written by `SSEResponse`, which
also watches for the client going away and then cancels the upstream call at once, instead of waiting
for the next chunk to fail to send.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.errors import APIError
from gateway.ids import new_id

T = TypeVar("T")
log = logging.getLogger("llm_gateway")

JSON_HEADERS = {"content-type": "application/json"}
SSE_HEADERS = {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # ask nginx-style proxies not to buffer the stream
}


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it is a sane token, else a new one; the same for the whole request."""
    cached = request.scope.get("llm_gateway.request_id")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isascii() and given.isprintable():
        rid = given
    else:
        rid = new_id("req")
    request.scope["llm_gateway.request_id"] = rid
    return rid


def log_unexpected(request: Request, exc: BaseException) -> None:
    """Log a gateway bug with where it happened, never what it said.

    Exception messages can quote request content (a prompt, a header); the type and the frames are
    enough to find the bug, and the request id ties the log line to the client's report.
    """
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error(
        "unhandled %s on %s %s (request %s)\n%s",
        type(exc).__name__,
        request.method,
        request.url.path,
        request_id(request),
        frames,
    )


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def unless_client_leaves(
    request: Request, work: Awaitable[T], discard: Callable[[T], Awaitable[None]] | None = None
) -> T:
    """Await `work`, but cancel it the moment the client disconnects (and raise ClientGone).

    An abandoned upstream call would otherwise run to its time limit, holding a connection and
    capacity (and, at pay-per-token providers, money) for an answer nobody will read.

    `work` runs in this task (a watcher task cancels it), not in a task of its own: a second task and
    `asyncio.wait` per request cost about 5% of the gateway's CPU under load. If a cancellation (the
    client leaving, or a shutdown's grace running out) lands just as `work` produced its result,
    `discard` releases that result, which nobody will take.
    """
    this = asyncio.current_task()
    assert this is not None
    gone = False

    async def cancel_on_disconnect() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        this.cancel()

    watcher = asyncio.create_task(cancel_on_disconnect())
    try:
        result = await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): that cancellation goes on up
        this.uncancel()
        raise ClientGone() from None
    finally:
        watcher.cancel()
    if this.cancelling():  # work swallowed a cancellation and returned anyway: the result has no taker
        this.uncancel()
        if discard is not None:
            await discard(result)
        if gone:
            raise ClientGone()
        raise asyncio.CancelledError()
    return result


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), status_code=status, headers={**JSON_HEADERS, **(headers or {})})


def error_response(error: APIError, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        error.body(), status_code=error.status, headers={**JSON_HEADERS, **error.headers(), **(headers or {})}
    )


def sse_error_event(error: APIError) -> bytes:
    return b"data: " + error.body() + b"\n\n"


async def read_json_object(request: Request, max_bytes: int) -> dict[str, Any]:
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise APIError(
                415,
                f"Unsupported Content-Type '{media_type}': send the body as JSON with "
                "'Content-Type: application/json'.",
                code="unsupported_media_type",
            )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > max_bytes:
                raise _too_large(max_bytes)
            parts.append(part)
    except ClientDisconnect:
        raise ClientGone() from None  # nobody to answer: not an error of ours, nor of the request
    raw = b"".join(parts)
    if not raw:
        raise APIError(400, "The request body is empty: send a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise APIError(
            400,
            f"We could not parse the JSON body of your request ({exc.args[0]}). The body must be valid JSON.",
            code="invalid_json",
        ) from None
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_json")
    return body


def _too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"The request body is larger than this gateway accepts ({max_bytes} bytes).",
        code="request_too_large",
    )


class SSEResponse(Response):
    """A `text/event-stream` response fed by an async iterator of ready-framed event bytes.

    While it streams, a watcher waits for the client's `http.disconnect`; when it comes, the stream is
    cancelled wherever it is (usually waiting on the upstream) and the iterator is closed, which closes
    the upstream request. The iterator is closed on every exit path, so no upstream call outlives its
    client.
    """

    def __init__(
        self,
        events: AsyncIterator[bytes],
        headers: Mapping[str, str],
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        # No call to Response.__init__: it would set `content-length: 0` for the empty initial body.
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, **headers})
        self.events = events
        self.on_close = on_close  # runs however the response ends, even if `events` never started

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming_task = asyncio.current_task()
        assert streaming_task is not None
        client_gone = asyncio.Event()

        async def watch_for_disconnect() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    client_gone.set()
                    streaming_task.cancel()
                    return

        watcher = asyncio.create_task(watch_for_disconnect())
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not client_gone.is_set():
                raise
            streaming_task.uncancel()
        except OSError:
            pass  # the client went away while we were writing to it
        finally:
            watcher.cancel()
            await asyncio.wait([watcher])  # never swallows a cancellation aimed at this task itself
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.on_close is not None:
                await self.on_close()
