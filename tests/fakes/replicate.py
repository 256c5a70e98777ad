"""A scriptable, stateful fake of Replicate's predictions API for language models (a real Starlette app).

Serve it with `ServerThread(fake.app)` and point the adapter (or `replicate.Client(base_url=server.url)`)
at `server.url`. Each prediction *create* pops the next scripted behaviour (then `Reply()` forever);
polls, cancels and streams act on the prediction it made. Predictions advance in real time
(`starting` -> `processing` -> terminal), computed from their creation clock rather than background
tasks, so nothing is left running when the server stops and polls, streams and `Prefer: wait` agree.

Wire shapes follow the provider's API reference: 201 + prediction object with ABSOLUTE
`urls` pointing back at the fake (the SDK follows them verbatim), SSE `output`/`error`/`done` events
with `id: <ms>:<seq>`, RFC 7807-style `{"title", "detail", "status"}` error bodies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.common import sleep_unless_disconnected

DEFAULT_API_TOKEN = "r8_fake"
DEFAULT_FAIL_ERROR = "Prediction interrupted; please retry (code: PA)"
MAX_WAIT_S = 60  # the real service's cap for `Prefer: wait=N`, and what bare `Prefer: wait` means
COMMUNITY_MODEL = "fake-owner/community-model"  # what `POST /v1/predictions` reports for a bare version id
TERMINAL = ("succeeded", "failed", "canceled")


# --- behaviours ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A prediction that succeeds, emitting `tokens` (default: `default_tokens(input)`).

    `cold_start_s` is time spent in `starting` (queue / cold boot); tokens then appear one every
    `token_delay_s` while `processing`. An integer `max_tokens` / `max_new_tokens` input truncates the
    tokens, as a real model would. `input_tokens` / `output_tokens` override the metrics' counts;
    `metrics=False` reports only times, like non-language models.
    """

    tokens: list[str] | None = None
    cold_start_s: float = 0.0
    token_delay_s: float = 0.0
    input_tokens: int | None = None
    output_tokens: int | None = None
    metrics: bool = True


@dataclass(frozen=True)
class Fail:
    """A prediction that ends `failed` with `error` after emitting `after_tokens` tokens (streams get `event: error`).

    `cold_start_s` / `token_delay_s` work as in `Reply`, so a test can fail mid-stream.
    """

    error: str = DEFAULT_FAIL_ERROR
    after_tokens: int = 0
    cold_start_s: float = 0.0
    token_delay_s: float = 0.0


@dataclass(frozen=True)
class HttpError:
    """The create request is refused with `status` and an RFC 7807-style body (plus `body_extra`)."""

    status: int
    title: str
    detail: str
    headers: dict[str, str] | None = None
    body_extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Hang:
    """Send nothing for `seconds` on create (slow first byte), then act as `Reply()`; stops if the client leaves."""

    seconds: float


Behaviour = Reply | Fail | HttpError | Hang
_Resolver = Callable[[dict[str, Any]], tuple[str, str] | None]  # create body -> (model, version), None if invalid

THROTTLED = HttpError(
    429,
    "Request was throttled",
    "Request was throttled. Expected available in 1 second.",
    headers={"Retry-After": "1"},
)
INSUFFICIENT_CREDIT = HttpError(
    402,
    "Insufficient credit",
    "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing "
    "to purchase credit. Once you purchase credit, please wait a few minutes before trying again.",
)
INVALID_INPUT = HttpError(
    422,
    "Input validation failed",
    "- input: prompt is required",
    body_extra={"invalid_fields": [{"type": "required", "field": "prompt", "description": "prompt is required"}]},
)
UNAUTHENTICATED = HttpError(401, "Unauthenticated", "Invalid token.")
NOT_FOUND = HttpError(404, "Not found", "The requested resource could not be found.")
UNAVAILABLE = HttpError(503, "Service Unavailable", "Replicate is temporarily unavailable. Please try again later.")


@dataclass
class RecordedRequest:
    """One request as the fake received it, so tests can assert what the adapter sent."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    json: Any  # parsed body, or None when absent or not JSON


def default_tokens(model_input: Mapping[str, Any]) -> list[str]:
    """The answer `Reply()` gives: it echoes the prompt's first words, so tests can predict it from the input."""
    words = str(model_input.get("prompt") or "").split()[:8]
    text = "You said: " + " ".join(words) if words else "Hello from the fake Replicate."
    return re.findall(r"\s*\S+", text)


# --- prediction state ---------------------------------------------------------------------------


@dataclass
class _Prediction:
    """One prediction; its status at any instant follows from its creation time and script (or a cancel)."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    base_url: str
    stream: bool
    tokens: list[str]  # everything it emits before it finishes
    cold_start_s: float
    token_delay_s: float
    error: str | None
    input_tokens: int
    output_tokens: int
    token_metrics: bool
    created: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    canceled_at: float | None = None

    @property
    def started(self) -> float:
        return self.created + self.cold_start_s

    @property
    def finished(self) -> float:
        """When it ends unless canceled first (the last token and the terminal status land together)."""
        return self.started + len(self.tokens) * self.token_delay_s

    def status(self, now: float) -> str:
        if self.canceled_at is not None:
            return "canceled"
        if now < self.started:
            return "starting"
        if now < self.finished:
            return "processing"
        return "failed" if self.error is not None else "succeeded"

    def emitted(self, now: float) -> int:
        cut = now if self.canceled_at is None else min(now, self.canceled_at)
        if cut < self.started:
            return 0
        if self.token_delay_s <= 0:
            return len(self.tokens)
        return min(len(self.tokens), int((cut - self.started) / self.token_delay_s + 1e-9))

    def until_change(self, now: float) -> float:
        """Seconds until the next token or status change (cancels are not foreseeable: callers cap this)."""
        if now < self.started:
            return self.started - now
        n = self.emitted(now)
        at = self.started + (n + 1) * self.token_delay_s if n < len(self.tokens) else self.finished
        return max(at - now, 0.0)

    def cancel(self, now: float) -> None:
        if self.status(now) not in TERMINAL:
            self.canceled_at = now

    def wall_ms(self, at: float) -> int:
        return int((self.created_wall + at - self.created) * 1000)

    def snapshot(self, now: float) -> dict[str, Any]:
        """The prediction object exactly as GET /v1/predictions/{id} would return it at `now`."""
        status = self.status(now)
        begun = self.started <= (now if self.canceled_at is None else min(now, self.canceled_at))
        completed = (self.canceled_at if status == "canceled" else self.finished) if status in TERMINAL else None
        urls = {
            "get": f"{self.base_url}/v1/predictions/{self.id}",
            "cancel": f"{self.base_url}/v1/predictions/{self.id}/cancel",
            "web": f"{self.base_url}/p/{self.id}",
        }
        if self.stream:
            urls["stream"] = f"{self.base_url}/v1/stream/{self.id}"
        body: dict[str, Any] = {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "input": self.input,
            "logs": "",
            "output": self.tokens[: self.emitted(now)] if begun else None,
            "error": self.error if status == "failed" else None,
            "status": status,
            "source": "api",
            "data_removed": False,
            "created_at": _iso(self.created_wall),
            "started_at": _iso(self.created_wall + self.cold_start_s) if begun else None,
            "completed_at": _iso(self.created_wall + completed - self.created) if completed is not None else None,
            "urls": urls,
        }
        if completed is not None:
            body["metrics"] = self._metrics(status, completed, begun)
        return body

    def _metrics(self, status: str, completed: float, begun: bool) -> dict[str, Any]:
        predict = max(completed - self.started, 0.0) if begun else 0.0
        metrics: dict[str, Any] = {"predict_time": round(predict, 6), "total_time": round(completed - self.created, 6)}
        if status == "succeeded" and self.token_metrics:
            metrics |= {
                "input_token_count": self.input_tokens,
                "output_token_count": self.output_tokens,
                "time_to_first_token": round(self.token_delay_s if self.tokens else predict, 6),
                "tokens_per_second": round(self.output_tokens / predict, 6) if predict > 0 else 0.0,
            }
        return metrics


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- the fake -----------------------------------------------------------------------------------


class FakeReplicate:
    """Replicate predictions API (official models, versions, deployments; poll, cancel, SSE stream)."""

    def __init__(self, api_tokens: Iterable[str] = (DEFAULT_API_TOKEN,)) -> None:
        self.api_tokens = frozenset(api_tokens)
        self.requests: list[RecordedRequest] = []
        self.canceled_ids: list[str] = []
        self.prediction_canceled = threading.Event()
        self.stream_cancelled = threading.Event()  # a client dropped a stream before its last event
        self.client_gone = threading.Event()  # a client hung up during a Hang or a `Prefer: wait` hold
        self._predictions: dict[str, _Prediction] = {}
        self._queue: deque[Behaviour] = deque()
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/v1/models/{owner}/{name}/predictions", self._create_named, methods=["POST"]),
                Route("/v1/deployments/{owner}/{name}/predictions", self._create_named, methods=["POST"]),
                Route("/v1/predictions", self._create_version, methods=["POST"]),
                Route("/v1/predictions/{id}", self._get, methods=["GET"]),
                Route("/v1/predictions/{id}/cancel", self._cancel, methods=["POST"]),
                Route("/v1/stream/{id}", self._stream, methods=["GET"]),
            ]
        )

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each prediction create pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget script, records and predictions, so one served fake can be shared by a test module."""
        with self._lock:
            self._queue.clear()
            self._predictions.clear()
        self.requests.clear()
        self.canceled_ids.clear()
        for event in (self.prediction_canceled, self.stream_cancelled, self.client_gone):
            event.clear()

    @property
    def predictions(self) -> dict[str, dict[str, Any]]:
        """id -> the prediction object as a poll would see it right now."""
        now = time.monotonic()
        with self._lock:
            return {pid: p.snapshot(now) for pid, p in self._predictions.items()}

    # -- plumbing --

    def _next(self) -> Behaviour:
        with self._lock:
            return self._queue.popleft() if self._queue else Reply()

    def _find(self, pid: str) -> _Prediction | None:
        with self._lock:
            return self._predictions.get(pid)

    async def _record(self, request: Request) -> Any:
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]}
        self.requests.append(RecordedRequest(request.method, request.url.path, headers, body))
        return body

    def _authorized(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and token.strip() in self.api_tokens

    # -- endpoints --

    async def _create_named(self, request: Request) -> Response:
        """Official models and deployments: the model is in the path, the version is implied."""
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        return await self._create(request, lambda body: (model, _version_of(model)))

    async def _create_version(self, request: Request) -> Response:
        def resolve(body: dict[str, Any]) -> tuple[str, str] | None:
            version = body.get("version")
            if not isinstance(version, str) or not version:
                return None
            model, _, version_id = version.rpartition(":")
            if "/" in version and not model:  # "owner/name" runs the model's latest version
                return version, _version_of(version)
            return model or COMMUNITY_MODEL, version_id

        return await self._create(request, resolve)

    async def _create(self, request: Request, resolve: _Resolver) -> Response:
        body = await self._record(request)
        if not self._authorized(request):
            return _unauthenticated()
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return _problem(422, "Input validation failed", "- input: Invalid type. Expected: object", field="input")
        ids = resolve(body)
        if ids is None:
            return _problem(422, "Invalid version or not permitted", "- version: version is required", field="version")

        behaviour = self._next()
        if isinstance(behaviour, HttpError):
            payload = {"title": behaviour.title, "detail": behaviour.detail, "status": behaviour.status}
            return JSONResponse(payload | (behaviour.body_extra or {}), behaviour.status, behaviour.headers)
        if isinstance(behaviour, Hang):
            if await sleep_unless_disconnected(request, behaviour.seconds):
                self.client_gone.set()
                return Response(b"", 499)  # nobody is listening
            behaviour = Reply()

        prediction = self._start(request, body, ids, behaviour)
        wait_s = _prefer_wait(request.headers.get("prefer", ""))
        if wait_s is not None and await self._hold(request, prediction, wait_s):
            self.client_gone.set()
            return Response(b"", 499)
        return JSONResponse(prediction.snapshot(time.monotonic()), 201)

    def _start(
        self, request: Request, body: dict[str, Any], ids: tuple[str, str], behaviour: Reply | Fail
    ) -> _Prediction:
        model_input: dict[str, Any] = body["input"]
        if isinstance(behaviour, Fail):
            tokens = default_tokens(model_input)
            tokens += [f" more{i}" for i in range(len(tokens), behaviour.after_tokens)]
            tokens = tokens[: behaviour.after_tokens]
            error: str | None = behaviour.error
            reply = Reply(cold_start_s=behaviour.cold_start_s, token_delay_s=behaviour.token_delay_s)
        else:
            tokens = _truncate(
                default_tokens(model_input) if behaviour.tokens is None else behaviour.tokens, model_input
            )
            error, reply = None, behaviour
        prompt_words = len(str(model_input.get("prompt") or "").split())
        system_words = len(str(model_input.get("system_prompt") or "").split())
        prediction = _Prediction(
            id=_prediction_id(),
            model=ids[0],
            version=ids[1],
            input=model_input,
            base_url=str(request.base_url).rstrip("/"),
            stream=body.get("stream") is True,
            tokens=list(tokens),
            cold_start_s=reply.cold_start_s,
            token_delay_s=reply.token_delay_s,
            error=error,
            input_tokens=reply.input_tokens if reply.input_tokens is not None else prompt_words + system_words,
            output_tokens=reply.output_tokens if reply.output_tokens is not None else len(tokens),
            token_metrics=reply.metrics,
        )
        with self._lock:
            self._predictions[prediction.id] = prediction
        return prediction

    async def _hold(self, request: Request, prediction: _Prediction, seconds: float) -> bool:
        """`Prefer: wait`: answer once terminal or after `seconds`. Returns True when the client left first."""
        deadline = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if prediction.status(now) in TERMINAL or now >= deadline:
                return False
            step = min(deadline - now, prediction.until_change(now) + 0.001, 0.05)  # 50 ms: notice cancels
            if await sleep_unless_disconnected(request, step):
                return True

    async def _get(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request):
            return _unauthenticated()
        prediction = self._find(request.path_params["id"])
        if prediction is None:
            return _not_found()
        return JSONResponse(prediction.snapshot(time.monotonic()))

    async def _cancel(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request):
            return _unauthenticated()
        prediction = self._find(request.path_params["id"])
        if prediction is None:
            return _not_found()
        now = time.monotonic()
        prediction.cancel(now)  # a finished prediction stays as it was, as on the real service
        self.canceled_ids.append(prediction.id)
        self.prediction_canceled.set()
        return JSONResponse(prediction.snapshot(now))

    async def _stream(self, request: Request) -> Response:
        await self._record(request)
        if not self._authorized(request):
            return _unauthenticated()
        prediction = self._find(request.path_params["id"])
        if prediction is None:
            return _not_found()
        headers = {"Cache-Control": "no-cache"}
        return StreamingResponse(self._guarded(_events(prediction)), media_type="text/event-stream", headers=headers)

    async def _guarded(self, frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Report a client leaving mid-stream: Starlette cancels the body task on `http.disconnect`."""
        try:
            async for frame in frames:
                yield frame
        except (asyncio.CancelledError, GeneratorExit, OSError):
            self.stream_cancelled.set()
            raise


# --- streaming ----------------------------------------------------------------------------------


async def _events(prediction: _Prediction) -> AsyncIterator[bytes]:
    """SSE for the prediction: tokens already out are replayed at once, later ones as they are produced."""
    sent = seq = 0
    while True:
        now = time.monotonic()
        for index in range(sent, prediction.emitted(now)):
            at = prediction.started + (index + 1) * prediction.token_delay_s
            yield _sse("output", prediction.tokens[index], f"{prediction.wall_ms(at)}:{seq}")
            sent, seq = index + 1, seq + 1
            await asyncio.sleep(0)  # one write per event, and a chance to notice a disconnect
        status = prediction.status(now)
        if status in TERMINAL:
            event_id = f"{prediction.wall_ms(now)}:{seq}"
            if status == "failed":
                yield _sse("error", json.dumps({"detail": prediction.error}), event_id)
                yield _sse("done", json.dumps({"reason": "error"}), f"{prediction.wall_ms(now)}:{seq + 1}")
            elif status == "canceled":
                yield _sse("done", json.dumps({"reason": "canceled"}), event_id)
            else:
                yield _sse("done", "{}", event_id)
            return
        await asyncio.sleep(min(prediction.until_change(now) + 0.001, 0.05))  # 50 ms: notice cancels


def _sse(event: str, data: str, event_id: str) -> bytes:
    """One SSE event; multi-line data becomes several `data:` lines, which clients join with newlines."""
    lines = [f"event: {event}", f"id: {event_id}", *(f"data: {line}" for line in data.split("\n"))]
    return ("\n".join(lines) + "\n\n").encode()


# --- helpers ------------------------------------------------------------------------------------


def _prefer_wait(header: str) -> float | None:
    """Seconds a `Prefer: wait[=N]` header asks the server to hold the create response, clamped to 1..60."""
    for preference in re.split(r"[,;]", header):
        name, _, value = preference.strip().partition("=")
        if name.strip().lower() == "wait":
            return float(min(max(int(value), 1), MAX_WAIT_S)) if value.strip().isdigit() else float(MAX_WAIT_S)
    return None


def _truncate(tokens: list[str], model_input: Mapping[str, Any]) -> list[str]:
    for key in ("max_tokens", "max_new_tokens"):
        limit = model_input.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
            return tokens[:limit]
    return tokens


def _version_of(model: str) -> str:
    """A stable 64-hex version id per model name, like the real service's."""
    return hashlib.sha256(model.encode()).hexdigest()


def _prediction_id() -> str:
    """26 lower-case base32 characters, the shape of real prediction ids."""
    return base64.b32encode(uuid.uuid4().bytes).decode().rstrip("=").lower()[:26]


def _problem(status: int, title: str, detail: str, *, field: str) -> JSONResponse:
    invalid = [{"type": "invalid", "field": field, "description": detail.removeprefix(f"- {field}: ")}]
    return JSONResponse({"title": title, "detail": detail, "status": status, "invalid_fields": invalid}, status)


def _unauthenticated() -> JSONResponse:
    detail = "You did not pass a valid authentication token"
    return JSONResponse({"title": "Unauthenticated", "detail": detail, "status": 401}, 401)


def _not_found() -> JSONResponse:
    return JSONResponse(
        {"title": "Not found", "detail": "The requested resource could not be found.", "status": 404}, 404
    )
