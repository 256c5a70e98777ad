"""The OpenAI-compatible endpoints: chat completions, embeddings and models.

Handlers take the raw `Request` instead of FastAPI-parsed models: the body is parsed once with orjson
and validated once with strict pydantic models, and every failure is answered in OpenAI's error shape
(FastAPI's own 422 shape would break the SDKs' error handling).
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gateway.context import request_context
from gateway.errors import APIError, from_provider_error, internal_error
from gateway.http_io import (
    ClientGone,
    SSEResponse,
    error_response,
    json_response,
    log_unexpected,
    read_json_object,
    request_id,
    sse_error_event,
    unless_client_leaves,
)
from gateway.locations import data_path, format_path
from gateway.runtime import Runtime
from providers.base import CallOptions
from providers.errors import ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest, EmbeddingRequest, EmbedRequest, StreamChunk
from routing.context import RequestContext, RequestFacts
from routing.router import Deployment, NoDeploymentAvailable, Plan, UnknownModel, WrongModelMode
from routing.stats import CallRecord

router = APIRouter()

Params = TypeVar("Params", bound=BaseModel)

Handler = Callable[..., Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Answer a gateway bug with OpenAI's 500 envelope, logged without request content.

    Catching it here, rather than in an app-wide handler, keeps the server from logging the exception
    again with its message (which may quote a prompt).
    """

    @functools.wraps(handler)
    async def run(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return await handler(request, *args, **kwargs)
        except Exception as exc:
            log_unexpected(request, exc)
            return error_response(internal_error(), {"x-request-id": request_id(request)})

    return run


#: Nobody is left to read an answer; 499 (nginx's "client closed request") marks it in access logs.
CLIENT_GONE = Response(status_code=499)


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
@guarded
async def chat_completions(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    rid = request_id(request)
    headers = {"x-request-id": rid}
    try:
        body = await read_json_object(request, runtime.config.server.max_body_bytes)
        params = _validate(ChatCompletionRequest, body)
        plan = _plan(runtime, RequestFacts.of_chat(params, body), request_context(request, body))
    except APIError as error:
        return error_response(error, headers)
    deployment = plan.deployments[0]
    headers.update(_served_by(deployment))
    call = ChatRequest(body=body, params=params)
    options = _call_options(request, deployment, streaming=bool(params.stream))
    record = runtime.router.begin_call(deployment)
    if params.stream:
        return await _start_stream(request, deployment, call, options, headers, record)
    completion = await _settled(request, deployment.adapter.chat(deployment.model, call, options), record, headers)
    if isinstance(completion, Response):
        return completion
    usage = completion.get("usage") or {}
    record.end(
        time.monotonic(), ok=True, output_tokens=usage.get("completion_tokens"), cold_start=call.facts.cold_start
    )
    return json_response(completion, headers={**headers, **call.facts.headers()})


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
@guarded
async def embeddings(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    headers = {"x-request-id": request_id(request)}
    try:
        body = await read_json_object(request, runtime.config.server.max_body_bytes)
        params = _validate(EmbeddingRequest, body)
        if params.input == [] or params.input == "":
            raise APIError(400, "'input' must not be empty.", param="input", code="invalid_value")
        facts = RequestFacts(model=params.model, mode="embeddings")
        facts.prompt_tokens = 0  # embeddings have no chat prompt; context windows are not checked here
        deployment = _plan(runtime, facts, request_context(request, body)).deployments[0]
    except APIError as error:
        return error_response(error, headers)
    headers.update(_served_by(deployment))
    options = _call_options(request, deployment, streaming=False)
    record = runtime.router.begin_call(deployment)
    work = deployment.adapter.embed(deployment.model, EmbedRequest(body=body, params=params), options)
    result = await _settled(request, work, record, headers)
    if isinstance(result, Response):
        return result
    record.end(time.monotonic(), ok=True)
    return json_response(result, headers=headers)


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
@guarded
async def list_models(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    data = [_model_object(runtime, name) for name in runtime.config.models]
    return json_response({"object": "list", "data": data}, headers={"x-request-id": request_id(request)})


@router.get("/v1/models/{model_id:path}")
@router.get("/models/{model_id:path}", include_in_schema=False)
@guarded
async def retrieve_model(request: Request, model_id: str) -> Response:
    runtime: Runtime = request.app.state.runtime
    headers = {"x-request-id": request_id(request)}
    if model_id not in runtime.config.models:
        return error_response(_model_not_found(model_id), headers)
    return json_response(_model_object(runtime, model_id), headers=headers)


async def _settled(
    request: Request, work: Awaitable[dict[str, Any]], record: CallRecord, headers: dict[str, str]
) -> dict[str, Any] | Response:
    """Await a non-streamed upstream call; on failure or a departed client, settle its stats and return
    the response to send. On success the caller settles the stats, since only it knows the usage."""
    try:
        return await unless_client_leaves(request, work)
    except ProviderError as error:
        record.end(time.monotonic(), ok=False)
        return error_response(from_provider_error(error), headers)
    except ClientGone:
        record.abandon(time.monotonic())
        return CLIENT_GONE
    except BaseException:
        record.end(time.monotonic(), ok=False)
        raise


# --- streaming ---------------------------------------------------------------------------------------


async def _start_stream(
    request: Request,
    deployment: Deployment,
    call: ChatRequest,
    options: CallOptions,
    headers: dict[str, str],
    record: CallRecord,
) -> Response:
    """Wait for the first chunk before answering 200.

    Until then a failure is still an ordinary HTTP error the client (and, later, the fallback logic)
    can act on; after it, a failure can only be reported inside the stream.
    """
    chunks = deployment.adapter.stream(deployment.model, call, options)
    try:
        first = await unless_client_leaves(request, anext(chunks))
    except ProviderError as error:
        record.end(time.monotonic(), ok=False)
        await chunks.aclose()  # type: ignore[attr-defined]
        return error_response(from_provider_error(error), headers)
    except ClientGone:
        record.abandon(time.monotonic())
        await chunks.aclose()  # type: ignore[attr-defined]
        return CLIENT_GONE
    except StopAsyncIteration:
        record.end(time.monotonic(), ok=False)
        return error_response(
            APIError(
                502, "Upstream ended the stream without sending anything.", type="server_error", code="upstream_error"
            ),
            headers,
        )
    except BaseException:
        record.end(time.monotonic(), ok=False)
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    record.first_token(time.monotonic())
    outcome = _StreamOutcome()

    async def finish() -> None:
        """Runs however the response ends: close the upstream stream and settle the call's stats."""
        await chunks.aclose()  # type: ignore[attr-defined]
        now = time.monotonic()
        if outcome.ok is None:
            record.abandon(now)
        else:
            record.end(now, ok=outcome.ok, output_tokens=outcome.output_tokens, cold_start=call.facts.cold_start)

    # What is known once the answer has started (a cold start, for one) goes out with the headers.
    events = _sse_events(request, first, chunks, call.params.wants_usage_chunk, outcome)
    return SSEResponse(events, {**headers, **call.facts.headers()}, on_close=finish)


@dataclass(slots=True)
class _StreamOutcome:
    ok: bool | None = None  # None: the client left, which says nothing about the deployment
    output_tokens: int | None = None


async def _sse_events(
    request: Request,
    first: StreamChunk,
    chunks: AsyncIterator[StreamChunk],
    wants_usage: bool,
    outcome: _StreamOutcome,
) -> AsyncIterator[bytes]:
    chunk = first
    try:
        while True:
            data = chunk.data
            usage = data.get("usage")
            if usage:
                outcome.output_tokens = usage.get("completion_tokens")
            # Adapters always end with a usage-only chunk; clients that did not ask for it don't get it.
            if wants_usage or data.get("choices") or not usage:
                yield b"data: " + (chunk.raw if chunk.raw is not None else orjson.dumps(data)) + b"\n\n"
            chunk = await anext(chunks)
    except StopAsyncIteration:
        outcome.ok = True
        yield b"data: [DONE]\n\n"
    except ProviderError as error:
        outcome.ok = False
        # Headers are gone: tell the SDK in-band, which raises it as an APIError (no silent cut).
        yield sse_error_event(from_provider_error(error))
    except Exception as exc:
        outcome.ok = False
        log_unexpected(request, exc)
        yield sse_error_event(internal_error())


# --- helpers -----------------------------------------------------------------------------------------


def _validate(model: type[Params], body: dict[str, Any]) -> Params:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise _invalid_request(exc, body) from None


def _invalid_request(exc: ValidationError, body: dict[str, Any]) -> APIError:
    errors = exc.errors(include_url=False, include_context=False)
    first = errors[0]
    missing = first["type"] == "missing"
    path = data_path(first["loc"], body, missing=missing)
    param = format_path(path) or None
    if missing:
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    # A value that fits no member of a union yields one error per member: say them together.
    reasons = [e["msg"] for e in errors if data_path(e["loc"], body) == path]
    reason = "; or ".join(dict.fromkeys(reasons))
    if first["type"] == "too_short" and isinstance(first.get("input"), list) and not first["input"]:
        reason = "expected a non-empty array, got an empty one"
    return APIError(400, f"Invalid value for '{param}': {reason}.", param=param, code="invalid_value")


def _plan(runtime: Runtime, facts: RequestFacts, context: RequestContext) -> Plan:
    try:
        return runtime.router.plan(facts, context)
    except UnknownModel as exc:
        raise _model_not_found(exc.model) from None
    except WrongModelMode as exc:
        raise APIError(
            400,
            f"The model '{exc.model}' is an {exc.mode} model and cannot serve this endpoint.",
            param="model",
            code="model_not_supported",
        ) from None
    except NoDeploymentAvailable as exc:
        if exc.policy:
            raise APIError(
                403, str(exc), type="permission_error", param="model", code="deployment_not_allowed", should_retry=False
            ) from None
        raise APIError(400, str(exc), param="model", code="no_suitable_deployment", should_retry=False) from None


def _served_by(deployment: Deployment) -> dict[str, str]:
    return {
        "x-gateway-provider": deployment.provider,
        "x-gateway-model": deployment.model,
        "x-gateway-alias": deployment.alias,
    }


def _model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def _model_object(runtime: Runtime, name: str) -> dict[str, Any]:
    alias = runtime.config.models[name]
    return {
        "id": name,
        "object": "model",
        "created": alias.created if alias.created is not None else runtime.started_at,
        "owned_by": alias.owned_by,
    }


def _call_options(request: Request, deployment: Deployment, *, streaming: bool) -> CallOptions:
    """The deployment's limits, tightened by the client's own read timeout when it sends one.

    The OpenAI SDKs send `x-stainless-read-timeout`: the longest they wait for any read. Past it the
    client has given up, so working on longer only burns upstream capacity. A non-streamed answer is
    one read, so it bounds the whole call; a stream is many reads, so it bounds each wait for a chunk.
    """
    limits = deployment.timeouts
    total, first_token, idle = limits.total_s or 600.0, limits.first_token_s or 60.0, limits.idle_s or 60.0
    try:
        client_read_s = float(request.headers.get("x-stainless-read-timeout") or 0)
    except ValueError:
        client_read_s = 0.0
    if client_read_s > 0:
        first_token, idle = min(first_token, client_read_s), min(idle, client_read_s)
        if not streaming:
            total = min(total, client_read_s)
    return CallOptions.within(total, connect_s=limits.connect_s or 5.0, first_token_s=first_token, idle_s=idle)
