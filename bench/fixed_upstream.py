"""A fake OpenAI-compatible upstream that is never the bottleneck: a raw ASGI app returning one fixed
chat completion, so a benchmark measures the gateway, not the thing behind it.

A request with "stream": true gets the answer as OpenAI server-sent events instead: a role chunk, then
BENCH_STREAM_CHUNKS content chunks (default 10), each BENCH_STREAM_DELAY_MS after the previous one
(default 2; the first content chunk waits too, so time to first token is about one delay), the finish
chunk, a usage chunk when stream_options.include_usage asks for one, and [DONE]."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "A fixed answer for benchmarking.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
    }
)
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]

STREAM_CHUNKS = int(os.environ.get("BENCH_STREAM_CHUNKS", "10"))
STREAM_DELAY_S = float(os.environ.get("BENCH_STREAM_DELAY_MS", "2")) / 1000
STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _event(delta: dict[str, Any] | None, finish: str | None = None, usage: dict[str, int] | None = None) -> bytes:
    chunk = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "bench-model",
        "system_fingerprint": None,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


ROLE_EVENT = _event({"role": "assistant", "content": "", "refusal": None})
WORD_EVENTS = [_event({"content": f"word{i} "}) for i in range(STREAM_CHUNKS)]
FINISH_EVENT = _event({}, "stop")
USAGE = {"prompt_tokens": 9, "completion_tokens": STREAM_CHUNKS, "total_tokens": 9 + STREAM_CHUNKS}
USAGE_EVENT = _event(None, usage=USAGE)
DONE_EVENT = b"data: [DONE]\n\n"


async def _stream(send: Any, include_usage: bool) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": STREAM_HEADERS})
    await send({"type": "http.response.body", "body": ROLE_EVENT, "more_body": True})
    for event in WORD_EVENTS:
        if STREAM_DELAY_S:
            await asyncio.sleep(STREAM_DELAY_S)
        await send({"type": "http.response.body", "body": event, "more_body": True})
    tail = FINISH_EVENT + (USAGE_EVENT if include_usage else b"") + DONE_EVENT
    await send({"type": "http.response.body", "body": tail})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if b'"stream"' in body:  # only then pay for parsing: the non-streamed path stays a constant answer
        request = orjson.loads(body)
        if request.get("stream"):
            await _stream(send, bool((request.get("stream_options") or {}).get("include_usage")))
            return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": COMPLETION})
