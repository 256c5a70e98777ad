"""The ASGI application: endpoints, health probes and error handling, around one `Runtime`."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway import admin, api, keep_warm, shutdown
from gateway.config import CONFIG_ENV_VAR, LoadedConfig, load_config, resolve_config_path
from gateway.errors import APIError, internal_error
from gateway.http_io import error_response, json_response, log_unexpected, request_id
from gateway.reload import ConfigReloader
from gateway.runtime import Runtime

log = logging.getLogger("llm_gateway")

#: Said at start-up when no tenants are configured, so nobody ships an open gateway by accident.
AUTH_OFF_WARNING = (
    "AUTHENTICATION IS OFF: no tenants are configured, so every caller is served without a key, budget or "
    "rate limit. Configure `tenants:` with hashed keys before exposing this gateway."
)


#: Net new tracked objects that trigger a young collection (CPython's default is 700).
YOUNG_COLLECTION_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the latency tail and out of the CPU profile.

    Two measured causes (one core, openai adapter):
    - Full collections walked every object the process holds, nearly all made at start-up (modules,
      config, pydantic models) and never freed: p99 56 ms at 900 req/s, 5.7 ms with the collector off.
      `gc.freeze()` moves those out of the collector's sight.
    - The gateway's per-request objects die by reference counting: over 7,500 requests at 32
      connections, young collections freed 32 objects in all, yet ran 1,000 times and took 6.5% of the
      CPU, triggered by in-flight requests' objects (their count rises and falls with concurrency). With
      the young threshold at 10,000 they ran zero times in the same run; cyclic garbage, which never
      dies by reference counting, still triggers collections once 10,000 such objects pile up. RSS was
      the same (90 MB). A soak run (bench/soak) shows memory stays level with it.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, older, oldest)


class GatewayApp(FastAPI):
    """FastAPI, with the OpenAI endpoints that carry the traffic dispatched straight to their handlers.

    Everything else (admin, health, models, errors for unknown routes) goes through FastAPI's router.
    The inference endpoints read the raw request and answer every failure themselves (`api.guarded`),
    so FastAPI's routing, dependency and exception layers do nothing for them but cost CPU: measured with
    py-spy under load, about 12% of the gateway's time per request went to those layers.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.direct_routes: dict[str, Any] = {}
        self._direct = shutdown.FinishCutRequests(self._serve_direct)

    def route_directly(self, path: str, handler: Any) -> None:
        """Serve POST `path` with `handler(request) -> Response`, bypassing the router."""
        self.direct_routes[path] = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.direct_routes:
            scope["app"] = self  # what `request.app` reads, as Starlette would set it
            await self._direct(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def _serve_direct(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.direct_routes[scope["path"]]
        response = await handler(StarletteRequest(scope, receive, send))
        await response(scope, receive, send)


def create_app(loaded: LoadedConfig, *, watch_config: bool = True) -> GatewayApp:
    config_file = Path(loaded.source)
    reloadable = config_file.is_file()  # a config parsed from text (tests) has no file to reload

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(loaded, started_at=int(time.time()))
        app.state.runtime = runtime
        await runtime.ledger.start()
        if not runtime.keys.enabled:
            log.warning(AUTH_OFF_WARNING)
        tune_garbage_collector()
        reloader = ConfigReloader(app, config_file) if reloadable else None
        app.state.reloader = reloader
        if reloader is not None:
            reloader.start(watch=watch_config and loaded.config.server.watch_config)
        pinger = asyncio.ensure_future(keep_warm.keep_warm(app))
        try:
            with shutdown.draining_on_signals(app):  # /readyz says "draining" from SIGTERM on
                yield
        finally:
            await keep_warm.stop(pinger)
            if reloader is not None:
                await reloader.stop()
            await app.state.runtime.aclose()
            # After uvicorn drained the in-flight requests: their usage records are all queued by now.
            await app.state.runtime.ledger.aclose()
            await app.state.runtime.limits.aclose()

    app = GatewayApp(
        title="llm-gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.include_router(api.router)
    app.include_router(admin.router)
    app.add_middleware(shutdown.FinishCutRequests)
    for path, handler in api.DIRECT_ROUTES.items():
        app.route_directly(path, handler)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> Response:
        """The process is alive and serving; says nothing about upstreams (that is /readyz)."""
        return json_response({"status": "ok"}, headers={"x-request-id": request_id(request)})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        """200 while this replica should get traffic; 503 when a backend it needs is down, or once it drains.

        Draining starts at SIGTERM: load balancers that probe here stop sending new requests while the
        in-flight ones finish (uvicorn stops listening moments later; see gateway/shutdown.py).
        """
        checks = await request.app.state.runtime.readiness()
        if request.app.state.draining:
            status = "draining"
        else:
            status = "ready" if all(check["ok"] for check in checks.values()) else "not_ready"
        body = {"status": status, "checks": checks}
        return json_response(body, 200 if status == "ready" else 503, headers={"x-request-id": request_id(request)})

    @app.exception_handler(StarletteHTTPException)
    async def http_exception(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            error = APIError(404, f"Unknown route: {request.method} {request.url.path}", code="unknown_route")
        elif exc.status_code == 405:
            error = APIError(
                405, f"Method {request.method} is not allowed on {request.url.path}.", code="method_not_allowed"
            )
        else:
            error = APIError(exc.status_code, str(exc.detail))
        return error_response(error, {**(exc.headers or {}), "x-request-id": request_id(request)})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log_unexpected(request, exc)
        return error_response(internal_error(), {"x-request-id": request_id(request)})

    return app


def app_from_environment() -> GatewayApp:
    """uvicorn factory for multi-worker serving: each worker loads the config the CLI already checked."""
    return create_app(load_config(resolve_config_path(os.environ.get(CONFIG_ENV_VAR))))
