"""Per-tenant budgets and rate limits: atomic in Redis (many replicas) or in memory (the embedded default).

limits = build_limits(redis_url)
admission = await limits.admit(caller, team, estimated_cost_usd, estimated_tokens)  # or LimitExceeded
...call the model...
await limits.settle(admission, actual_cost_usd, actual_tokens)
"""

from __future__ import annotations

from gateway.limits.api import Admission, LimitExceeded, Limits, RateState
from gateway.limits.memory import MemoryLimits
from gateway.limits.redis_limits import RedisLimits


def build_limits(redis_url: str | None) -> Limits:
    """Shared limits when a Redis URL is configured, else limits held in this process."""
    if redis_url:
        return RedisLimits(redis_url)
    return MemoryLimits()


__all__ = ["Admission", "LimitExceeded", "Limits", "MemoryLimits", "RateState", "RedisLimits", "build_limits"]
