"""Three OS processes, each a replica with its own connection pool, hammer one tenant through the same
Redis at the same time: the budget and the per-minute limits hold for all of them together."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis

from gateway.limits.plan import plan_for
from gateway.tenancy import Caller, TenantConfig

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 3


def run_replicas(redis_url: str, config: dict[str, Any], **load: Any) -> tuple[str, list[dict[str, Any]]]:
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    spec = {
        "redis_url": redis_url,
        "tenant": tenant,
        "config": config,
        "workers": 30,
        "max_attempts": 200,
        "estimate_usd": 0.0,
        "actual_usd": 0.0,
        "estimate_tokens": 1,
        "actual_tokens": 1,
        "hold_s": 0.002,
        **load,
    }
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.limits.hammer", json.dumps(spec)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    try:
        for child in children:  # every replica imported and connected...
            assert child.stdout is not None and child.stdout.readline().strip() == "ready", (
                child.stderr.read() if child.stderr else ""
            )
        started = time.monotonic()
        for child in children:  # ...then all go at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = []
        for child in children:
            out, err = child.communicate(timeout=60)
            assert child.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert time.monotonic() - started < 30, "the run must fit well inside one rate-limit window"
    return tenant, results


def spent_micro(redis_url: str, tenant: str, config: dict[str, Any]) -> int:
    plan = plan_for(Caller(tenant, "default", TenantConfig.model_validate(config)), None, time.time())
    assert plan is not None
    with redis.Redis.from_url(redis_url) as client:
        return int(client.hget(plan.budgets[0].key, "spent") or 0)


def tenant_config(**extra: Any) -> dict[str, Any]:
    return {"keys": [{"sha256": "a" * 64, "name": "default"}], **extra}


def test_budget_is_exact_across_processes_when_estimates_hold(redis_url: str) -> None:
    config = tenant_config(budgets={"daily_usd": 3.0})
    tenant, results = run_replicas(redis_url, config, workers=10, hold_s=0.02, estimate_usd=0.01, actual_usd=0.01)
    assert sum(r["admitted"] for r in results) == 300
    assert all(r["admitted"] > 0 for r in results), results  # they really ran together
    assert spent_micro(redis_url, tenant, config) == 3_000_000


def test_budget_overspend_across_processes_is_bounded_by_in_flight(redis_url: str) -> None:
    config = tenant_config(budgets={"daily_usd": 3.0})
    tenant, results = run_replicas(redis_url, config, workers=10, hold_s=0.02, estimate_usd=0.01, actual_usd=0.013)
    admitted = sum(r["admitted"] for r in results)
    spent = spent_micro(redis_url, tenant, config)
    assert spent == admitted * 13_000
    assert admitted <= 300  # each admission fitted its estimate when it was made
    assert spent > 2_990_000  # the budget was used up (each worker stopped at a refusal)...
    peak_in_flight = sum(r["peak_in_flight"] for r in results)
    assert spent - 3_000_000 <= peak_in_flight * 3_000  # ...and bounded by what was in flight


def test_requests_per_minute_hold_across_processes(redis_url: str) -> None:
    config = tenant_config(rate_limits={"rpm": 300})
    _, results = run_replicas(redis_url, config)
    admitted = sum(r["admitted"] for r in results)
    assert 297 <= admitted <= 300, results
    assert all(r["refusals"].get("rate_limit_exceeded") == 30 for r in results)  # every worker ended refused


def test_tokens_per_minute_hold_across_processes(redis_url: str) -> None:
    config = tenant_config(rate_limits={"tpm": 30_000})
    _, results = run_replicas(redis_url, config, estimate_tokens=100, actual_tokens=100)
    tokens = sum(r["tokens"] for r in results)
    assert 29_700 <= tokens <= 30_000, results
