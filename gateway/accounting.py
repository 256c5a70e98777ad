"""One request's account: who sent it, what it was allowed, what it cost, and its one ledger record.

Every request that got past authentication ends in exactly one `close()`, whatever happened: served,
failed, refused by a limit, or abandoned by its client mid-stream. `close()` charges the actual cost
against the budgets reserved at admission and submits the usage record; calling it again does nothing,
so the several exits of a streamed request cannot count it twice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.costs import cost_usd
from gateway.ids import new_id
from gateway.ledger.record import UsageRecord
from gateway.tenancy import Caller
from providers.schema import Usage
from routing.router import Deployment


@dataclass
class Account:
    request_id: str  # as the client knows it: its own x-request-id, or the one the gateway gave
    endpoint: str  # chat | embeddings
    caller: Caller
    tags: dict[str, str]
    user: str | None = None
    stream: bool = False
    started: float = field(default_factory=time.time)
    started_monotonic: float = field(default_factory=time.monotonic)
    admission: Any = None  # gateway.limits Admission, when limits admitted the request
    alias: str | None = None
    closed: bool = False
    #: The ledger's key: always the gateway's own, so a client reusing an x-request-id cannot make two
    #: requests share one record (and have one of them dropped).
    record_id: str = field(default_factory=lambda: new_id("rec"))

    @property
    def team(self) -> str | None:
        return self.tags.get("team")

    @property
    def feature(self) -> str | None:
        return self.tags.get("feature")

    async def close(
        self,
        runtime: Any,
        *,
        status: int,
        deployment: Deployment | None = None,
        usage: dict[str, Any] | None = None,
        estimated: bool = False,
        compute_s: float | None = None,
        ttft_s: float | None = None,
        attempts: int = 0,
        error_code: str | None = None,
        cache_hit: bool = False,
    ) -> float:
        """Settle and record the request, once; returns its cost in USD."""
        if self.closed:
            return 0.0
        self.closed = True
        tokens = Usage.from_openai(usage) or Usage()
        price = deployment.config.price if deployment is not None else None
        cost = cost_usd(tokens, price, compute_s) if status < 400 or tokens.total_tokens else 0.0
        runtime.ledger.submit(
            UsageRecord(
                request_id=self.record_id,
                client_request_id=self.request_id,
                ts=self.started,
                tenant=self.caller.tenant,
                key_name=self.caller.key_name,
                team=self.team,
                feature=self.feature,
                user=self.user,
                tags=self.tags,
                endpoint=self.endpoint,
                alias=self.alias,
                provider=deployment.provider if deployment is not None else None,
                deployment=deployment.key if deployment is not None else None,
                model=deployment.model if deployment is not None else None,
                stream=self.stream,
                prompt_tokens=tokens.prompt_tokens,
                completion_tokens=tokens.completion_tokens,
                cached_tokens=tokens.cached_tokens,
                reasoning_tokens=tokens.reasoning_tokens,
                cost_usd=cost,
                estimated=estimated,
                latency_ms=(time.monotonic() - self.started_monotonic) * 1000.0,
                ttft_ms=None if ttft_s is None else ttft_s * 1000.0,
                cache_hit=cache_hit,
                attempts=attempts,
                status=status,
                error_code=error_code,
            )
        )
        # After the record is queued: a cancellation while settling (the client left) cannot lose it.
        if self.admission is not None:
            await runtime.limits.settle(self.admission, cost, tokens.total_tokens)
        return cost


def format_cost(cost: float) -> str:
    return f"{cost:.6f}"


def cost_header(cost: float) -> dict[str, str]:
    return {"x-gateway-cost-usd": format_cost(cost)}
