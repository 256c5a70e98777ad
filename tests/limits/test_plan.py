"""Which checks a caller gets, and under which Redis keys (one hash tag per tenant, names escaped)."""

from __future__ import annotations

import re

from gateway.limits.plan import plan_for, to_micro, usd_text
from gateway.tenancy import ANONYMOUS
from tests.limits.conftest import START, make_caller


def test_every_key_of_a_tenant_shares_its_hash_tag() -> None:
    caller = make_caller(
        "acme:{prod}",
        key_name="ci:bot",
        budgets={"daily_usd": 1, "monthly_usd": 10},
        teams={"growth:eu": {"budgets": {"daily_usd": 1}}},
        rate_limits={"rpm": 1, "tpm": 1},
        keys=[{"name": "ci:bot", "rate_limits": {"rpm": 1}}],
    )
    plan = plan_for(caller, "growth:eu", START)
    assert plan is not None
    keys = [b.key for b in plan.budgets] + [b.reservations_key for b in plan.budgets] + [r.key for r in plan.rates]
    assert len(set(keys)) == len(keys) == 9  # 3 budgets (2 keys each), 3 rate limits
    tags = {re.search(r"\{([^}]*)\}", key).group(1) for key in keys}  # type: ignore[union-attr]
    assert tags == {"acme%3A%7Bprod%7D"}  # one Redis Cluster slot for the whole tenant
    assert plan.budgets[0].key == "llmgw:lim:{acme%3A%7Bprod%7D}:tenant:d:20250115"
    assert plan.budgets[1].key.endswith(":tenant:m:202501")
    assert plan.budgets[2].key.endswith(":team:growth%3Aeu:d:20250115")
    assert [r.who for r in plan.rates][-1] == "key 'ci:bot' of tenant 'acme:{prod}'"


def test_callers_with_nothing_to_check_get_no_plan() -> None:
    assert plan_for(ANONYMOUS, None, START) is None
    assert plan_for(make_caller("t", teams={"a": {}}), "a", START) is None
    # A key without limits of its own only sees the tenant's.
    caller = make_caller("t", key_name="web", rate_limits={"rpm": 5}, keys=[{"name": "web"}])
    plan = plan_for(caller, None, START)
    assert plan is not None and [r.who for r in plan.rates] == ["tenant 't'"]


def test_amounts_are_whole_micro_dollars() -> None:
    assert to_micro(0.1) + to_micro(0.2) == to_micro(0.3) == 300_000
    assert to_micro(-1.0) == 0
    assert (usd_text(1_000_000), usd_text(12_345), usd_text(1_500_000_000)) == ("$1.00", "$0.012345", "$1,500.00")
