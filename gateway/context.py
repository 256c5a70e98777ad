"""Who a request is from, as the router needs to know it.

Until tenants and keys arrive (the tenancy work fills the policy from the caller's key), every caller
is unrestricted. Team and feature tags come from `x-gateway-team` / `x-gateway-feature` headers, or
from the OpenAI `metadata` fields `team` / `feature`, so apps can tag calls without a new client.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from routing.context import RequestContext


def request_context(request: Request, body: dict[str, Any]) -> RequestContext:
    metadata = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    headers = request.headers
    return RequestContext(
        team=headers.get("x-gateway-team") or metadata.get("team"),
        feature=headers.get("x-gateway-feature") or metadata.get("feature"),
        route_override=headers.get("x-gateway-route"),
    )
