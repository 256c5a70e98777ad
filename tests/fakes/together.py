"""A scriptable fake Together AI: OpenAI-compatible `/v1` API with Together's own quirks.

Together speaks OpenAI's wire format closely enough that this subclasses `FakeOpenAI` (same behaviours,
reply builders, recording and stream events) and only rewrites what differs
the provider's API reference, because those differences are what the gateway's
adapter must normalise:

- `finish_reason: "eos"` where OpenAI says `stop`;
- every stream chunk has `delta.role` and `delta.token_id`, and a float `logprobs` on the choice
  (OpenAI's is an object); there is no empty role-only opening chunk;
- `usage` rides on the final chunk (the one with `finish_reason`) whether or not
  `stream_options.include_usage` was sent, and there is never a separate `choices: []` usage chunk;
- ids are not `chatcmpl-...`; no `service_tier`, `system_fingerprint`, `refusal` or `obfuscation`;
- non-streamed answers carry `prompt: []`, a `seed` per choice and plain three-field usage;
- `GET /v1/models` returns a bare JSON array of model records with pricing;
- Bearer auth, 404 for models it does not serve, and ready-made errors: `ContextTooLong` (the TGI text),
  `Overloaded` (503) and `CloudflareTimeout` (524, a plain-text body).

Use it as a context manager, which serves it on a free loopback port. The together SDK puts `/v1` in
each route, so its `base_url` is the bare origin; OpenAI-style clients use `fake.url + "/v1"`:

    with FakeTogether() as fake:
        client = together.Together(api_key=fake.api_key, base_url=fake.url, max_retries=0)
"""

from __future__ import annotations

import secrets
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.openai_upstream import (
    Behaviour,
    Error,
    FakeOpenAI,
    Hang,
    Malformed,
    Reply,
    StreamChunks,
    _json,
    _sse,
    _sse_json,
)
from tests.support.server import ServerThread, free_port

__all__ = [
    "DEFAULT_MODELS",
    "EOS_TOKEN_ID",
    "CloudflareTimeout",
    "ContextTooLong",
    "Error",
    "FakeTogether",
    "Hang",
    "Malformed",
    "Overloaded",
    "Reply",
    "StreamChunks",
    "TogetherBehaviour",
]

#: model id -> Together's model `type`; the fake serves these and answers 404 for any other
DEFAULT_MODELS: Mapping[str, str] = {
    "meta-llama/Llama-3.3-70B-Instruct-Turbo": "chat",
    "Qwen/Qwen2.5-7B-Instruct-Turbo": "chat",
    "BAAI/bge-large-en-v1.5": "embedding",
}
EOS_TOKEN_ID = 128009  # Llama 3's <|eot_id|>, the token Together reports on the `eos` chunk

BAD_KEY = "Invalid API key provided. You can find your API key at https://api.together.ai/settings/api-keys."


# --- behaviours (FakeOpenAI's Reply/StreamChunks/Error/Malformed/Hang work too) ------------------


@dataclass(frozen=True)
class ContextTooLong:
    """400 with the TGI-style text Together relays for an over-long prompt (`code: null`, so match the message)."""

    limit: int = 8193
    inputs: int = 9000
    max_new_tokens: int = 512

    def as_error(self) -> Error:
        message = (
            f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= {self.limit}. "
            f"Given: {self.inputs} `inputs` tokens and {self.max_new_tokens} `max_new_tokens`"
        )
        return Error(400, _envelope(message, "invalid_request_error"))


@dataclass(frozen=True)
class Overloaded:
    """503: the model's serving pool is saturated (retry or fall back)."""

    def as_error(self) -> Error:
        body = _envelope("The server is overloaded or not ready yet.", "server_error")
        return Error(503, {"id": _request_id(), **body})


@dataclass(frozen=True)
class CloudflareTimeout:
    """524 from Together's Cloudflare front: the origin took too long; the body is plain text, not JSON."""

    def as_error(self) -> Error:
        return Error(524, "error code: 524", {"content-type": "text/plain; charset=UTF-8", "server": "cloudflare"})


_Ready = ContextTooLong | Overloaded | CloudflareTimeout
TogetherBehaviour = Behaviour | ContextTooLong | Overloaded | CloudflareTimeout


# --- the fake -----------------------------------------------------------------------------------


class FakeTogether(FakeOpenAI):
    """Together's OpenAI-compatible API, served on 127.0.0.1 while used as a context manager."""

    def __init__(
        self, *, api_key: str = "k", models: Mapping[str, str] = DEFAULT_MODELS, port: int | None = None
    ) -> None:
        super().__init__()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.models = dict(models)
        self.auth_failures = 0
        self._server: ServerThread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._together_chat, methods=["POST"]),
                Route("/v1/embeddings", self._together_embeddings, methods=["POST"]),
                Route("/v1/models", self._together_models, methods=["GET"]),
            ]
        )

    def __enter__(self) -> FakeTogether:
        self._server = ServerThread(self.app, port=self.port).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc)
            self._server = None

    def script(self, *behaviours: TogetherBehaviour) -> None:  # type: ignore[override]  # wider than the base's
        """Queue behaviours; each authorised request pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def reset(self) -> None:
        """Forget requests, script and counters, keeping the server (for one fake shared by a module)."""
        super().reset()
        with self._lock:
            self.auth_failures = 0

    # -- hooks into FakeOpenAI --

    async def _apply(self, request: Request, behaviour: object, body: Any) -> tuple[Behaviour, Response | None]:
        if isinstance(behaviour, _Ready):
            behaviour = behaviour.as_error()
        return await super()._apply(request, behaviour, body)

    def _shape_completion(self, completion: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
        for name in ("service_tier", "system_fingerprint"):
            completion.pop(name, None)
        completion["id"] = _together_id()
        completion["prompt"] = []
        choices = []
        for choice in completion["choices"]:
            message = {k: v for k, v in choice["message"].items() if k not in ("refusal", "annotations")}
            message.setdefault("tool_calls", [])
            choices.append(
                {**choice, "message": message, "finish_reason": _eos(choice["finish_reason"]), "seed": _seed()}
            )
        completion["choices"] = choices
        completion["usage"] = _plain_usage(completion.get("usage"))
        return completion

    async def _shape_stream(  # type: ignore[override]  # an async generator is the AsyncIterator the base returns
        self, frames: AsyncIterator[bytes | None], req: dict[str, Any]
    ) -> AsyncIterator[bytes | None]:
        together_id = _together_id()
        held: dict[str, Any] | None = None  # a finish chunk, waiting for the usage that rides on it
        async for frame in frames:
            chunk = _sse_json(frame)
            if chunk is not None and "error" not in chunk and not chunk["choices"]:
                if held is not None:  # the usage-only chunk FakeOpenAI made: fold it into the last finish chunk
                    held["usage"] = _plain_usage(chunk.get("usage"))
                    yield _sse(held)
                    held = None
                continue
            if held is not None:
                yield _sse(held)
                held = None
            if chunk is None or "error" in chunk:
                yield frame
                continue
            for name in ("service_tier", "system_fingerprint", "obfuscation"):
                chunk.pop(name, None)
            chunk["id"] = together_id
            chunk["choices"] = [_together_choice(choice) for choice in chunk["choices"]]
            if any(choice["finish_reason"] for choice in chunk["choices"]):
                held = chunk
            elif not _opening_only(chunk):
                yield _sse(chunk)
        if held is not None:
            yield _sse(held)

    # -- endpoints --

    async def _together_chat(self, request: Request) -> Response:
        body = await self._record(request)
        refused = self._gate(request, body)
        if refused is not None:
            return refused
        if isinstance(body, dict) and body.get("stream"):
            # ask FakeOpenAI for its usage chunk, which _shape_stream moves onto the finish chunk
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            body = {**body, "stream_options": {**options, "include_usage": True}}
        return await self._chat_reply(request, body)

    async def _together_embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        refused = self._gate(request, body)
        return refused if refused is not None else await self._embeddings_reply(request, body)

    async def _together_models(self, request: Request) -> Response:
        await self._record(request)
        refused = self._gate(request, None)
        if refused is not None:
            return refused
        _behaviour, early = await self._common(request, None)
        if early is not None:
            return early
        return _json(200, [_model_record(model, kind) for model, kind in self.models.items()])  # a bare array

    def _gate(self, request: Request, body: Any) -> Response | None:
        """Bearer key, then the model: what Together checks before it looks at anything else."""
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(key, self.api_key):
            with self._lock:
                self.auth_failures += 1
            return _json(401, _envelope(BAD_KEY, "invalid_request_error", "invalid_api_key"))
        model = body.get("model") if isinstance(body, dict) else None
        if body is not None and model not in self.models:
            message = (
                f"Unable to access model {model}. Please visit https://api.together.ai/models to view the list "
                "of supported models."
            )
            return _json(404, _envelope(message, "invalid_request_error", "model_not_available"))
        return None


# --- Together bodies ----------------------------------------------------------------------------


def _together_choice(choice: dict[str, Any]) -> dict[str, Any]:
    """Role and token id on every delta, a float logprob, `eos` for `stop`, a seed on the last chunk."""
    finish = _eos(choice.get("finish_reason"))
    delta = {k: v for k, v in choice.get("delta", {}).items() if k not in ("role", "refusal")}
    if finish:
        delta.setdefault("content", "")
        token_id, logprob = EOS_TOKEN_ID, 0.0
    else:
        crc = zlib.crc32(repr(delta).encode("utf-8"))
        token_id, logprob = crc % 128000, -round((crc % 997 + 1) / 1000, 3)
    return {
        "index": choice["index"],
        "delta": {"role": "assistant", **delta, "token_id": token_id},
        "logprobs": logprob,
        "finish_reason": finish,
        "seed": _seed() if finish else None,
    }


def _opening_only(chunk: dict[str, Any]) -> bool:
    """FakeOpenAI's empty role chunk: Together has none (each chunk is a token)."""
    return all(c["delta"].get("content") == "" and not c["delta"].get("tool_calls") for c in chunk["choices"])


def _eos(finish_reason: str | None) -> str | None:
    return "eos" if finish_reason == "stop" else finish_reason


def _plain_usage(usage: Any) -> Any:
    """Together's usage has the three counts only (no `*_tokens_details`)."""
    if not isinstance(usage, dict):
        return usage
    return {k: v for k, v in usage.items() if k not in ("prompt_tokens_details", "completion_tokens_details")}


def _model_record(model: str, kind: str) -> dict[str, Any]:
    organization, _, name = model.partition("/")
    return {
        "id": model,
        "object": "model",
        "created": 1733961600,
        "type": kind,
        "running": False,
        "display_name": name or model,
        "organization": organization,
        "link": f"https://huggingface.co/{model}",
        "context_length": 131072 if kind == "chat" else 512,
        "config": {"chat_template": None, "stop": ["<|eot_id|>"] if kind == "chat" else [], "bos_token": None},
        "pricing": {"hourly": 0, "input": 0.88, "output": 0.88 if kind == "chat" else 0, "base": 0, "finetune": 0},
    }


def _envelope(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _together_id() -> str:
    """Together ids are hex plus a point-of-presence suffix, not `chatcmpl-...`."""
    return f"{uuid.uuid4().hex[:16]}-SJC"


def _request_id() -> str:
    return uuid.uuid4().hex


def _seed() -> int:
    return int(time.time_ns() % (2**63))
