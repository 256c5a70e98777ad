"""The OpenAI-compatible endpoints: chat completions, embeddings and models.

Handlers take the raw `Request` instead of FastAPI-parsed models: the body is parsed once with orjson
and validated once with strict pydantic models, and every failure is answered in OpenAI's error shape
(FastAPI's own 422 shape would break the SDKs' error handling).
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from gateway.accounting import Account, cost_header, format_cost
from gateway.costs import DEFAULT_OUTPUT_ESTIMATE, estimated_cost_usd
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
from gateway.limits import LimitExceeded
from gateway.locations import data_path, format_path
from gateway.runtime import Runtime
from gateway.tenancy import ANONYMOUS, Caller, parse_tags, presented_key
from providers.base import CallOptions
from providers.errors import ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest, EmbeddingRequest, EmbedRequest
from routing.context import RequestContext, RequestFacts
from routing.executor import Exhausted, Journey, Served
from routing.resume import OpenStream, ResumingStream, discard_stream, open_stream
from routing.router import Deployment, NoDeploymentAvailable, UnknownModel, WrongModelMode

router = APIRouter()

Params = TypeVar("Params", bound=BaseModel)
T = TypeVar("T")

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
        except ClientGone:
            return CLIENT_GONE  # it left while its body was still arriving
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
        caller = authenticate(request, runtime)
    except APIError as error:
        return error_response(error, headers)
    account = _account(request, runtime, caller, "chat")
    journey: Journey | None = None
    try:
        body = await _read_body(request, runtime, account)
        params = _validate(ChatCompletionRequest, body)
        account.stream = bool(params.stream)
        _check_model_allowed(caller, params.model)
        limits = RequestLimits.of(request, streaming=bool(params.stream))
        facts = RequestFacts.of_chat(params, body)
        journey = _start(runtime, facts, _context(request, caller, account), limits)
        await _admit(runtime, account, journey, headers, choices=params.n or 1)
    except APIError as error:
        return await _refused(runtime, account, error, headers, journey)
    if params.stream:
        return await _start_stream(request, runtime, journey, account, body, params, limits, headers)

    async def complete(deployment: Deployment, options: CallOptions) -> tuple[ChatRequest, dict[str, Any]]:
        call = ChatRequest(body=body, params=params)  # one per attempt: facts (cold start...) are per call
        return call, await deployment.adapter.chat(deployment.model, call, options)

    served = await _served(request, runtime, runtime.executor.run(journey, complete), journey, account, headers)
    if isinstance(served, Response):
        return served
    call, completion = served.value
    usage = completion.get("usage") or {}
    served.record.end(
        time.monotonic(), ok=True, output_tokens=usage.get("completion_tokens"), cold_start=call.facts.cold_start
    )
    cost = await account.close(
        runtime,
        status=200,
        deployment=served.deployment,
        usage=usage,
        estimated=call.facts.usage_estimated,
        compute_s=call.facts.predict_time_s,
        attempts=len(journey.attempts),
    )
    headers.update(_served_by(served.deployment), **journey.headers(), **call.facts.headers(), **cost_header(cost))
    return json_response(completion, headers=headers)


@router.post("/v1/embeddings")
@router.post("/embeddings", include_in_schema=False)
@guarded
async def embeddings(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    headers = {"x-request-id": request_id(request)}
    try:
        caller = authenticate(request, runtime)
    except APIError as error:
        return error_response(error, headers)
    account = _account(request, runtime, caller, "embeddings")
    journey: Journey | None = None
    try:
        body = await _read_body(request, runtime, account)
        params = _validate(EmbeddingRequest, body)
        if params.input == [] or params.input == "":
            raise APIError(400, "'input' must not be empty.", param="input", code="invalid_value")
        _check_model_allowed(caller, params.model)
        facts = RequestFacts(model=params.model, mode="embeddings")
        facts.prompt_tokens = 0  # embeddings have no chat prompt; context windows are not checked here
        journey = _start(runtime, facts, _context(request, caller, account), RequestLimits.of(request, streaming=False))
        await _admit(runtime, account, journey, headers)
    except APIError as error:
        return await _refused(runtime, account, error, headers, journey)
    call = EmbedRequest(body=body, params=params)

    async def embed(deployment: Deployment, options: CallOptions) -> dict[str, Any]:
        return await deployment.adapter.embed(deployment.model, call, options)

    served = await _served(request, runtime, runtime.executor.run(journey, embed), journey, account, headers)
    if isinstance(served, Response):
        return served
    served.record.end(time.monotonic(), ok=True)
    cost = await account.close(
        runtime,
        status=200,
        deployment=served.deployment,
        usage=served.value.get("usage"),
        attempts=len(journey.attempts),
    )
    headers.update(_served_by(served.deployment), **journey.headers(), **cost_header(cost))
    return json_response(served.value, headers=headers)


#: The endpoints that carry the traffic, served by `GatewayApp` without FastAPI's router in between (the
#: decorators above still register them, for FastAPI's 405s and for any other method or path shape).
DIRECT_ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": chat_completions,
    "/chat/completions": chat_completions,
    "/v1/embeddings": embeddings,
    "/embeddings": embeddings,
}


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


async def _served(
    request: Request,
    runtime: Runtime,
    work: Awaitable[Served[T]],
    journey: Journey,
    account: Account,
    headers: dict[str, str],
    discard: Callable[[T], Awaitable[None]] | None = None,
) -> Served[T] | Response:
    """Await the executor; on failure, the error response (with the path taken), or 499 if the client
    left, with the request's account closed. The executor has settled every failed or abandoned
    attempt; the caller settles the winner and closes the account."""

    async def unclaimed(served: Served[T]) -> None:
        await runtime.executor.abandon(served, discard)

    try:
        return await unless_client_leaves(request, work, discard=unclaimed)
    except Exhausted as exhausted:
        return await _refused(runtime, account, from_provider_error(exhausted.error), headers, journey)
    except ClientGone:
        await account.close(runtime, status=499, attempts=len(journey.attempts), error_code="client_gone")
        return CLIENT_GONE
    except BaseException:
        await account.close(runtime, status=500, attempts=len(journey.attempts), error_code="internal_error")
        raise


async def _refused(
    runtime: Runtime, account: Account | None, error: APIError, headers: dict[str, str], journey: Journey | None
) -> Response:
    """An error answer, recorded in the ledger once (for an authenticated caller)."""
    if journey is not None:
        headers = {**headers, **journey.headers()}
    if account is not None:
        attempts = len(journey.attempts) if journey is not None else 0
        await account.close(runtime, status=error.status, attempts=attempts, error_code=error.code)
    return error_response(error, headers)


# --- streaming ---------------------------------------------------------------------------------------


async def _start_stream(
    request: Request,
    runtime: Runtime,
    journey: Journey,
    account: Account,
    body: dict[str, Any],
    params: ChatCompletionRequest,
    limits: RequestLimits,
    headers: dict[str, str],
) -> Response:
    """Wait for a first chunk (from whichever deployment gives one) before answering 200.

    Until then a failure is still an ordinary fallback, or an HTTP error the client can act on; after
    it, the stream is continued elsewhere if its deployment fails, or the failure is told in-stream.
    """

    async def begin(deployment: Deployment, options: CallOptions) -> OpenStream:
        return await open_stream(deployment, ChatRequest(body=body, params=params), options)

    work = runtime.executor.run(journey, begin, discard=discard_stream)
    served = await _served(request, runtime, work, journey, account, headers, discard=discard_stream)
    if isinstance(served, Response):
        return served
    limits.answering = True  # from now on, each wait is bounded per chunk, not by the first-chunk budget
    stream = ResumingStream(runtime.executor, journey, served, body)
    # What is known once the answer has started (a cold start, for one) goes out with the headers.
    headers.update(_served_by(served.deployment), **journey.headers(), **served.value.call.facts.headers())
    events = _sse_events(request, runtime, account, stream, params.wants_usage_chunk)

    async def finish() -> None:
        """However the response ends: close the upstream; a client that left is accounted for here."""
        await stream.aclose()
        await _close_stream_account(runtime, account, stream, status=499, error_code="client_gone")

    return SSEResponse(events, headers, on_close=finish)


async def _sse_events(
    request: Request, runtime: Runtime, account: Account, chunks: ResumingStream, wants_usage: bool
) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            data = chunk.data
            # The stream always ends with a usage-only chunk; clients that did not ask for it don't get it.
            if wants_usage or data.get("choices") or not data.get("usage"):
                yield b"data: " + (chunk.raw if chunk.raw is not None else orjson.dumps(data)) + b"\n\n"
        cost = await _close_stream_account(runtime, account, chunks, status=200)
        # Headers left before the cost was known: it goes out as an SSE comment, which clients ignore.
        yield b": x-gateway-cost-usd=" + format_cost(cost).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"
    except ProviderError as error:
        # Headers are gone: tell the SDK in-band, which raises it as an APIError (no silent cut).
        api_error = from_provider_error(error)
        await _close_stream_account(runtime, account, chunks, status=api_error.status, error_code=api_error.code)
        yield sse_error_event(api_error)
    except Exception as exc:
        log_unexpected(request, exc)
        await _close_stream_account(runtime, account, chunks, status=500, error_code="internal_error")
        yield sse_error_event(internal_error())


async def _close_stream_account(
    runtime: Runtime, account: Account, stream: ResumingStream, *, status: int, error_code: str | None = None
) -> float:
    """Account a stream with what its client received (counted here when no usage came), once."""
    usage, estimated = await stream.usage_so_far()
    served = stream.segment
    return await account.close(
        runtime,
        status=status,
        deployment=served.deployment,
        usage=usage,
        estimated=estimated,
        compute_s=served.value.call.facts.predict_time_s,
        ttft_s=stream.first_at - account.started_monotonic,
        attempts=len(stream.journey.attempts),
        error_code=error_code,
    )


# --- callers, accounts and limits --------------------------------------------------------------------


def authenticate(request: Request, runtime: Runtime) -> Caller:
    """The tenant whose key the request carries; 401 without a valid one (when tenants are configured)."""
    if not runtime.keys.enabled:
        return ANONYMOUS
    key = presented_key(request.headers.get("authorization"), request.headers.get("api-key"))
    if not key:
        raise APIError(
            401,
            "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            type="invalid_request_error",
            code="missing_api_key",
            should_retry=False,
        )
    caller = runtime.keys.find(key)
    if caller is None:
        raise APIError(
            401, "Incorrect API key provided.", type="invalid_request_error", code="invalid_api_key", should_retry=False
        )
    return caller


def _account(request: Request, runtime: Runtime, caller: Caller, endpoint: str) -> Account:
    """Opened as soon as the caller is known, so even a request whose body cannot be read is recorded."""
    return Account(request_id=request_id(request), endpoint=endpoint, caller=caller, tags=_tags(request, None, runtime))


async def _read_body(request: Request, runtime: Runtime, account: Account) -> dict[str, Any]:
    """The JSON body; its `metadata` tags and `user` join the account. A client that leaves while the
    body is arriving is recorded as a 499 here (ClientGone then ends the request)."""
    try:
        body = await read_json_object(request, runtime.config.server.max_body_bytes)
    except ClientGone:
        await account.close(runtime, status=499, error_code="client_gone")
        raise
    if isinstance(body.get("metadata"), dict):  # else the header tags already taken stand as they are
        account.tags = _tags(request, body["metadata"], runtime)
    user = body.get("user")
    account.user = user if isinstance(user, str) else None
    return body


def _tags(request: Request, metadata: object, runtime: Runtime) -> dict[str, str]:
    headers = request.headers
    single = {"team": headers.get("x-gateway-team"), "feature": headers.get("x-gateway-feature")}
    return parse_tags(headers.get("x-gateway-tags"), metadata, runtime.config.tags.max_tags, single)


def _context(request: Request, caller: Caller, account: Account) -> RequestContext:
    override = request.headers.get("x-gateway-route")
    return RequestContext(
        tenant=caller.tenant,
        team=account.team,
        feature=account.feature,
        policy=caller.policy,
        # A tenant may steer only to models it may use: the header never widens `allowed_models`.
        route_override=override if override and caller.may_use(override) else None,
    )


def _check_model_allowed(caller: Caller, model: str) -> None:
    if not caller.may_use(model):
        raise APIError(
            403,
            f"Your API key is not allowed to use the model '{model}'.",
            type="permission_error",
            param="model",
            code="model_not_allowed",
            should_retry=False,
        )


async def _admit(
    runtime: Runtime, account: Account, journey: Journey, headers: dict[str, str], choices: int = 1
) -> None:
    """Reserve the request's estimated cost and tokens against its tenant's budgets and rate limits.
    `n` choices each produce up to the output limit, so the output estimate counts each of them."""
    account.alias = journey.plan.alias
    caller = account.caller
    if not caller.limited:
        return  # nothing to reserve against: skip the estimate (and counting the prompt's tokens)
    deployments = journey.plan.deployments
    price = deployments[0].config.price if deployments else None
    facts = journey.facts
    output = (facts.requested_output_tokens or DEFAULT_OUTPUT_ESTIMATE) * max(choices, 1)
    estimate = estimated_cost_usd(price, facts.prompt_tokens, output)
    tokens = facts.prompt_tokens + output
    try:
        account.admission = await runtime.limits.admit(account.caller, account.team, estimate, tokens)
    except LimitExceeded as exceeded:
        headers.update(exceeded.headers())
        raise APIError(
            exceeded.status,
            exceeded.message,
            type="rate_limit_error" if exceeded.status == 429 else "server_error",
            code=exceeded.code,
            retry_after_s=exceeded.retry_after_s,
        ) from None
    headers.update(account.admission.headers())


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


def _start(runtime: Runtime, facts: RequestFacts, context: RequestContext, limits: RequestLimits) -> Journey:
    try:
        return runtime.executor.start(facts, context, limits.options_for, streaming=limits.streaming)
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


@dataclass(slots=True)
class RequestLimits:
    """Time limits of one request, shared by all its attempts.

    The OpenAI SDKs send `x-stainless-read-timeout`: the longest they wait for any read. Past it the
    client has given up, so working on longer only burns upstream capacity. A non-streamed answer is
    one read, so it bounds the whole request, retries and fallbacks included; a stream is many reads,
    so it bounds the wait for the first chunk (over all attempts) and then each wait for a chunk.
    `x-gateway-timeout-ms` sets a deadline for the whole request, streams included.
    """

    started: float
    streaming: bool
    client_read_s: float | None
    deadline: float | None
    answering: bool = False  # a stream's first chunk went out

    @classmethod
    def of(cls, request: Request, *, streaming: bool) -> RequestLimits:
        now = asyncio.get_running_loop().time()
        timeout_ms = _positive(request.headers.get("x-gateway-timeout-ms"))
        return cls(
            started=now,
            streaming=streaming,
            client_read_s=_positive(request.headers.get("x-stainless-read-timeout")),
            deadline=now + timeout_ms / 1000.0 if timeout_ms else None,
        )

    def options_for(self, deployment: Deployment) -> CallOptions:
        limits = deployment.timeouts
        total, first_token, idle = limits.total_s or 600.0, limits.first_token_s or 60.0, limits.idle_s or 60.0
        now = asyncio.get_running_loop().time()
        if self.client_read_s is not None:
            read_left = self.started + self.client_read_s - now
            if not self.streaming:
                total = min(total, read_left)
            elif not self.answering:
                first_token = min(first_token, read_left)
                if read_left <= 0:
                    total = 0.0  # the client's wait for a first chunk is over: start nothing more
            else:
                first_token = min(first_token, self.client_read_s)
            idle = min(idle, self.client_read_s)
        if self.deadline is not None:
            total = min(total, self.deadline - now)
        return CallOptions.within(
            max(total, 0.0), connect_s=limits.connect_s or 5.0, first_token_s=max(first_token, 0.0), idle_s=idle
        )


def _positive(value: str | None) -> float | None:
    try:
        number = float(value) if value else 0.0
    except ValueError:
        return None
    return number if number > 0 and math.isfinite(number) else None
