"""Keep-warm pings for scale-to-zero deployments (off unless `keep_warm_interval_s` is set).

A scale-to-zero endpoint idle past its timeout boots again on the next call, which can take seconds.
When a deployment sits on a latency-sensitive path, a tiny periodic request (one output token) keeps
it warm; the ping feeds live stats like any call, so the router knows the deployment is warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from providers.base import CallOptions
from providers.errors import ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest

log = logging.getLogger("llm_gateway.keep_warm")
_PING_BODY: dict[str, Any] = {"model": "keep-warm", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}


async def keep_warm(app: Any) -> None:
    """Ping every deployment that asks for it, at its interval, on whatever runtime is current. A
    deployment that real traffic keeps busy is not pinged: it is warm already."""
    last_ping: dict[str, float] = {}
    while True:
        runtime = app.state.runtime
        now = time.monotonic()
        due = {}
        for deployment in runtime.router.all_deployments():
            interval = deployment.config.keep_warm_interval_s
            if not (deployment.config.scales_to_zero and interval):
                continue
            idle = runtime.router.stats.get(deployment.key).idle_for(now)
            if idle >= interval and now - last_ping.get(deployment.key, -math.inf) >= interval:
                due[deployment.key] = deployment
                last_ping[deployment.key] = now
        if due:
            await asyncio.gather(*(_ping(runtime, deployment) for deployment in due.values()))
        await asyncio.sleep(0.25)


async def _ping(runtime: Any, deployment: Any) -> None:
    record = runtime.router.begin_call(deployment)  # timed from now, not from when the loop woke
    request = ChatRequest(dict(_PING_BODY), ChatCompletionRequest.model_validate(_PING_BODY))
    try:
        await deployment.adapter.chat(deployment.model, request, CallOptions.within(60))
    except asyncio.CancelledError:
        record.abandon(time.monotonic())
        raise
    except ProviderError as exc:
        record.end(time.monotonic(), ok=False)
        log.warning("keep-warm ping to %s failed: %s", deployment.key, exc.kind.value)
    except Exception as exc:  # a bug must not end keep-warm for every deployment
        record.end(time.monotonic(), ok=False)
        log.warning("keep-warm ping to %s failed: %s", deployment.key, type(exc).__name__)
    else:
        record.end(time.monotonic(), ok=True, cold_start=request.facts.cold_start)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
