"""Admin endpoints: route explain, config reload, deployment state (circuit breaker, retry budget,
live stats) and usage reports from the ledger, behind one admin key.

The key is configured by its SHA-256 (`admin.api_key_sha256`), so the config never holds it, and is
compared in constant time. With no key configured the endpoints do not exist (404).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import APIError
from gateway.http_io import ClientGone, error_response, json_response, read_json_object, request_id
from gateway.ledger.store import StoreUnavailable, parse_group_by
from gateway.ledger.window import iso, parse_instant
from gateway.runtime import Runtime
from routing.context import RequestContext, RequestFacts
from routing.router import UnknownModel, WrongModelMode

router = APIRouter(prefix="/admin", include_in_schema=False)


def _authorized(request: Request) -> APIError | None:
    runtime: Runtime = request.app.state.runtime
    expected = runtime.config.admin.api_key_sha256
    if expected is None:
        return APIError(404, "Admin endpoints are disabled: set admin.api_key_sha256.", code="not_found")
    given = request.headers.get("x-admin-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
    digest = hashlib.sha256(given.encode()).hexdigest()
    if not given or not hmac.compare_digest(digest, expected):
        return APIError(401, "A valid admin key is required.", type="authentication_error", code="invalid_admin_key")
    return None


@router.post("/route/explain")
async def route_explain(request: Request) -> Response:
    """Body: {"model", "tenant"?, "team"?, "feature"?, "prompt_tokens"?, "max_tokens"?, "tools"?, "images"?,
    "json_schema"?, "mode"?} — the facts of a request, without having to send one."""
    headers = {"x-request-id": request_id(request)}
    denied = _authorized(request)
    if denied is not None:
        return error_response(denied, headers)
    try:
        body = await read_json_object(request, 1024 * 1024)
        facts, context = facts_from_query(body)
        explanation = request.app.state.runtime.router.explain(facts, context)
    except APIError as error:
        return error_response(error, headers)
    except ClientGone:
        return Response(status_code=499)
    except UnknownModel as exc:
        return error_response(
            APIError(404, f"Unknown model '{exc.model}'.", param="model", code="model_not_found"), headers
        )
    except WrongModelMode as exc:
        return error_response(
            APIError(
                400,
                f"'{exc.model}' is an {exc.mode} model; set mode accordingly.",
                param="mode",
                code="model_not_supported",
            ),
            headers,
        )
    return json_response(explanation, headers=headers)


@router.post("/config/reload")
async def config_reload(request: Request) -> Response:
    headers = {"x-request-id": request_id(request)}
    denied = _authorized(request)
    if denied is not None:
        return error_response(denied, headers)
    reloader = getattr(request.app.state, "reloader", None)
    if reloader is None:
        return error_response(
            APIError(409, "This gateway was not started from a config file.", code="no_file"), headers
        )
    result = await reloader.reload()
    return json_response(result.to_dict(), 200 if result.ok else 400, headers=headers)


@router.get("/deployments")
async def deployments(request: Request) -> Response:
    headers = {"x-request-id": request_id(request)}
    denied = _authorized(request)
    if denied is not None:
        return error_response(denied, headers)
    runtime: Runtime = request.app.state.runtime
    executor = runtime.executor
    now = time.monotonic()
    data = [
        {
            "alias": d.alias,
            "deployment": d.key,
            "circuit": executor.circuits.snapshot(d.key, now),
            "retry_budget": executor.budgets.snapshot(d.key, now),
            "stats": runtime.router.stats.get(d.key).snapshot(now),
        }
        for d in runtime.router.all_deployments()
    ]
    return json_response({"object": "list", "data": data}, headers=headers)


@router.get("/usage")
async def usage(request: Request) -> Response:
    """Usage and cost from the ledger, summed per group: `?from=&to=&group_by=tenant,team&tenant=`.

    `from`/`to`: ISO dates or datetimes (UTC unless zoned), unix seconds, or durations ago (`24h`);
    default: the last 24 hours. Records still queued or spilled by the gateway are not counted yet."""
    headers = {"x-request-id": request_id(request)}
    denied = _authorized(request)
    if denied is not None:
        return error_response(denied, headers)
    params = request.query_params
    now = time.time()
    try:
        until = _instant(params.get("to"), "to", now, end=True) if params.get("to") else now
        since = _instant(params.get("from"), "from", now) if params.get("from") else until - 86400.0
        if since >= until:
            raise APIError(400, "'from' must be before 'to'.", param="from", code="invalid_value")
        try:
            group_by = parse_group_by(params.get("group_by"))
        except ValueError as exc:
            message = str(exc)
            raise APIError(
                400, message[:1].upper() + message[1:] + ".", param="group_by", code="invalid_value"
            ) from None
    except APIError as error:
        return error_response(error, headers)
    runtime: Runtime = request.app.state.runtime
    try:
        rows = await runtime.ledger.query(since, until, group_by, tenant=params.get("tenant") or None)
    except StoreUnavailable:
        unavailable = "The usage ledger's store is unavailable; retry later."
        return error_response(APIError(503, unavailable, type="server_error", code="ledger_unavailable"), headers)
    body = {
        "object": "list",
        "group_by": list(group_by),
        "from": iso(since),
        "to": iso(until),
        "data": rows,
        "ledger": runtime.ledger.stats(),
    }
    return json_response(body, headers=headers)


def _instant(text: str | None, param: str, now: float, *, end: bool = False) -> float:
    try:
        return parse_instant(text or "", end=end, now=now)
    except ValueError as exc:
        raise APIError(400, f"'{param}': {exc}.", param=param, code="invalid_value") from None


def facts_from_query(query: dict[str, Any]) -> tuple[RequestFacts, RequestContext]:
    model = query.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' is required.", param="model", code="missing_required_parameter")
    facts = RequestFacts(
        model=model,
        mode=str(query.get("mode") or "chat"),
        has_tools=bool(query.get("tools")),
        has_images=bool(query.get("images")),
        has_json_schema=bool(query.get("json_schema")),
        requested_output_tokens=_count(query, "max_tokens"),
    )
    facts.prompt_tokens = _count(query, "prompt_tokens") or 0
    context = RequestContext(tenant=query.get("tenant"), team=query.get("team"), feature=query.get("feature"))
    return facts, context


def _count(query: dict[str, Any], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise APIError(400, f"'{name}' must be a non-negative integer.", param=name, code="invalid_value")
    return value
