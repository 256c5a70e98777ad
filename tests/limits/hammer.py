"""One replica's worth of load for the cross-process tests: `python -m tests.limits.hammer '<json>'`.

Connects, prints `ready`, waits for a line on stdin (so all processes start together), then runs
`workers` concurrent loops of admit → short pause → settle against one tenant through `RedisLimits`,
each loop ending at its first refusal, and prints what it saw as one JSON line: admissions, tokens
admitted, the peak of requests in flight.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from typing import Any

from gateway.limits import LimitExceeded, RedisLimits
from gateway.tenancy import Caller, TenantConfig


async def hammer(spec: dict[str, Any]) -> dict[str, Any]:
    caller = Caller(tenant=spec["tenant"], key_name="default", config=TenantConfig.model_validate(spec["config"]))
    # Generous timeouts: this load is about atomicity, and a busy test machine must not turn it into an outage.
    limits = RedisLimits(
        spec["redis_url"], max_connections=spec["workers"], socket_timeout_s=5.0, connect_timeout_s=5.0
    )
    seen: dict[str, Any] = {"admitted": 0, "tokens": 0, "peak_in_flight": 0, "refusals": {}}
    in_flight = 0

    async def worker() -> None:
        nonlocal in_flight
        for _ in range(spec["max_attempts"]):
            try:
                admission = await limits.admit(caller, None, spec["estimate_usd"], spec["estimate_tokens"])
            except LimitExceeded as exc:
                seen["refusals"][exc.code] = seen["refusals"].get(exc.code, 0) + 1
                return
            assert not admission.degraded, "Redis must stay up during this test"
            seen["admitted"] += 1
            seen["tokens"] += spec["actual_tokens"]
            in_flight += 1
            seen["peak_in_flight"] = max(seen["peak_in_flight"], in_flight)
            await asyncio.sleep(random.uniform(0, spec["hold_s"]))
            in_flight -= 1
            await limits.settle(admission, spec["actual_usd"], spec["actual_tokens"])

    await asyncio.gather(*(limits._redis.ping() for _ in range(spec["workers"])))  # open the pool's connections
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every replica is connected, so they all start together
    await asyncio.gather(*(worker() for _ in range(spec["workers"])))
    await limits.aclose()
    return seen


if __name__ == "__main__":
    print(json.dumps(asyncio.run(hammer(json.loads(sys.argv[1])))))
