"""Replay recorded real provider exchanges (VCR-style YAML cassettes) from a local Starlette app.

Fakes are written from docs; recordings show what the services really send. Body rebuilding follows
tests/data/recordings/README.md and the upstream recordings README: `json.dumps(parsed_body)`, or
`body.string` as-is (text encoded as UTF-8, `!!binary` bytes unchanged), with a fresh content-length
and no recorded header except content-type.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

# Bodies of these types are streams: write them in pieces so incremental parsers see split lines/frames.
STREAM_CONTENT_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")


@dataclass
class Interaction:
    """One recorded request/response pair, with the response body rebuilt as wire bytes."""

    method: str
    path: str
    request_json: Any
    status: int
    content_type: str
    body: bytes


def load_cassette(path: Path) -> list[Interaction]:
    """Parse a cassette with a real YAML parser (bodies are folded and quoted in several ways)."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    interactions = []
    for entry in document["interactions"]:
        request, response = entry["request"], entry["response"]
        interactions.append(
            Interaction(
                method=str(request["method"]).upper(),
                path=urlsplit(request["uri"]).path,
                request_json=_request_json(request),
                status=int(response["status"]["code"]),
                content_type=_header(response.get("headers") or {}, "content-type") or "application/octet-stream",
                body=_response_body(response),
            )
        )
    return interactions


def _request_json(request: dict[str, Any]) -> Any:
    if "parsed_body" in request:
        return request["parsed_body"]
    body = request.get("body")
    if isinstance(body, dict):  # vcrpy's {"string": ...} form
        body = body.get("string")
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    if isinstance(body, str):
        try:
            return json.loads(body)
        except ValueError:
            return body
    return body


def _response_body(response: dict[str, Any]) -> bytes:
    if "parsed_body" in response:
        return json.dumps(response["parsed_body"]).encode("utf-8")
    body = response.get("body")
    value = body.get("string", b"") if isinstance(body, dict) else body
    if value is None:
        return b""
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _header(headers: dict[str, Any], name: str) -> str | None:
    for key, values in headers.items():
        if key.lower() == name:
            value = values[0] if isinstance(values, list) and values else values
            return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return None


def _tail(path: str) -> list[str]:
    return [segment for segment in unquote(path).split("/") if segment][-2:]


def _matches(recorded: Interaction, method: str, path: str) -> bool:
    """Same method, and the received path ends with the recorded path's last two segments.

    Ignoring the prefix lets the SDK's base URL differ (`/v1/chat/completions` vs `/chat/completions`);
    both sides are unquoted because Bedrock model ids are URL-encoded in recordings (`v1%3A0`).
    """
    tail = _tail(recorded.path)
    received = [segment for segment in unquote(path).split("/") if segment]
    return method.upper() == recorded.method and received[-len(tail) :] == tail


class ReplayServer:
    """Serves the interactions in order, one per request; anything unexpected answers 599 and is kept."""

    def __init__(self, interactions: list[Interaction], chunk_size: int | None = 7) -> None:
        self.received: list[Any] = []
        self._pending = list(interactions)
        self._chunk_size = chunk_size
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "DELETE"])])

    def assert_all_used(self) -> None:
        """Fail if any request went unanswered by the recording or any interaction was never asked for."""
        with self._lock:
            problems = list(self._failures)
            problems += [f"unused interaction: {i.method} {i.path}" for i in self._pending]
        if problems:
            raise AssertionError("replay problems:\n" + "\n".join(problems))

    async def _handle(self, request: Request) -> Response:
        raw = await request.body()
        try:
            self.received.append(json.loads(raw) if raw else None)
        except ValueError:
            self.received.append(raw.decode("utf-8", errors="replace"))
        method, path = request.method, request.url.path
        with self._lock:
            if not self._pending:
                failure = f"extra request: {method} {path} (all recorded interactions were used)"
            elif not _matches(self._pending[0], method, path):
                expected = self._pending[0]
                failure = f"mismatch: got {method} {path}, recording expects {expected.method} {expected.path}"
            else:
                return _Replay(self._pending.pop(0), self._chunk_size)
            self._failures.append(failure)
        return PlainTextResponse(failure, status_code=599)


class _Replay(Response):
    """Sends the recorded bytes; streamed bodies go out in `chunk_size` pieces with a tiny pause."""

    def __init__(self, interaction: Interaction, chunk_size: int | None) -> None:
        super().__init__(interaction.body, interaction.status, media_type=None)
        self.raw_headers.append((b"content-type", interaction.content_type.encode("latin-1")))
        self._streamed = chunk_size is not None and interaction.content_type.startswith(STREAM_CONTENT_TYPES)
        self._chunk_size = chunk_size or len(self.body) or 1

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._streamed:
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        body = bytes(self.body)
        for start in range(0, len(body), self._chunk_size):
            await send(
                {
                    "type": "http.response.body",
                    "body": body[start : start + self._chunk_size],
                    "more_body": True,
                }
            )
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
