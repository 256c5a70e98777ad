"""Graceful shutdown for rolling deploys: SIGTERM stops accepting, drains, then the process exits 0.

uvicorn does the drain itself (`llm-gateway serve` passes `server.shutdown_grace_s` as its
`timeout_graceful_shutdown`): on SIGTERM or SIGINT it closes its listening socket, closes idle
keep-alive connections, lets in-flight requests (streams included) run for up to the grace period,
cancels what is still running, runs the app's lifespan shutdown and returns. This module adds three
things uvicorn leaves out:

- `draining_on_signals`: `app.state.draining` turns true at the signal, and `/readyz` answers 503
  "draining" from then on. uvicorn has no hook for this and the app cannot see its `Server`, so the
  lifespan puts a small handler in front of uvicorn's own: it sets the flag, then calls uvicorn's.
- `FinishCutRequests`: a request still running when the grace period ends gets a well-formed ending
  (an SSE error event, or a 503) instead of a connection cut mid-body and a traceback in the log.
- `exit_zero_after_drain`: the process ends with status 0 after a drain, not killed by its own signal.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import APIError
from gateway.http_io import JSON_HEADERS, sse_error_event

log = logging.getLogger("llm_gateway")

SignalHandler = Callable[[int, FrameType | None], Any]


@contextmanager
def draining_on_signals(app: Any) -> Iterator[None]:
    """Within this block, SIGTERM or SIGINT sets `app.state.draining` before the server's handler runs.

    Only a handler already installed in Python (uvicorn's) is wrapped: with none, the signal ends the
    process at once and there is nothing to report. Signals reach only the main thread, so a server
    run in another thread (as tests do) never drains this way. The previous handlers come back at exit.
    """
    app.state.draining = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wrapped: dict[int, SignalHandler] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if callable(previous):
            wrapped[sig] = previous
            signal.signal(sig, _mark_draining_then(app, previous))
    try:
        yield
    finally:
        for sig, previous in wrapped.items():
            signal.signal(sig, previous)


def _mark_draining_then(app: Any, server_handler: SignalHandler) -> SignalHandler:
    def handler(sig: int, frame: FrameType | None) -> None:
        app.state.draining = True
        server_handler(sig, frame)

    return handler


SHUTDOWN_ERROR = APIError(
    503,
    "The gateway is shutting down and its grace period for in-flight requests ran out; retry the request.",
    type="server_error",
    code="shutting_down",
)


class FinishCutRequests:
    """ASGI middleware: a request the server cancels at the end of the grace period still ends well-formed.

    By the time the cancellation reaches this layer the upstream call is already closed (the handlers
    and `SSEResponse` close it on every exit path). Left alone, uvicorn would log the cancellation as a
    crash, with a traceback per request, and cut a stream mid-body, which clients report as a protocol
    error. Instead a stream that has started gets a last SSE error event (`code: shutting_down`, no
    `[DONE]`, as for any failed stream) and a proper end, and a request with no answer yet gets a 503,
    which the SDKs retry, on another replica behind a load balancer. A response that is neither (a
    plain body half-sent) cannot be completed; uvicorn closes its connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        complete = False

        async def tracking_send(message: Message) -> None:
            nonlocal start, complete
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # handled: this request ends here, normally
            if complete:
                return
            rid = scope.get("llm_gateway.request_id", "-")
            log.warning("shutdown grace period over: cut %s %s (request %s)", scope["method"], scope["path"], rid)
            if start is None:
                headers = {**JSON_HEADERS, "x-request-id": rid} if rid != "-" else JSON_HEADERS
                await send(
                    {
                        "type": "http.response.start",
                        "status": SHUTDOWN_ERROR.status,
                        "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
                    }
                )
                await send({"type": "http.response.body", "body": SHUTDOWN_ERROR.body(), "more_body": False})
            elif _is_event_stream(start):
                body = sse_error_event(SHUTDOWN_ERROR)
                await send({"type": "http.response.body", "body": body, "more_body": False})


def _is_event_stream(start: Message) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream") for name, value in start["headers"]
    )


def exit_zero_after_drain() -> None:
    """Install a SIGTERM handler that ends the process with status 0; call it just before uvicorn runs.

    uvicorn replaces the handler while it serves and drains, then puts back the one it found and raises
    the signal again, so that the process ends the way the signal asked. With the default handler that
    is death by signal (status 143 in a shell, "Error" in `kubectl get pods`) after a drain that went
    fine. This handler is the one put back: the raised signal becomes `SystemExit(0)`. A SIGTERM that
    arrives before uvicorn took over (nothing is in flight yet) exits 0 at once, as it should.
    """
    signal.signal(signal.SIGTERM, _exit_zero)


def _exit_zero(sig: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
